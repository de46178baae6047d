package binlog

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/dbtest"
)

// The peer region is 1 (server_id 1, gtid domain 1); the tailers under test
// run as region 2 unless a test says otherwise.
const (
	peerID = 1
	selfID = 2
)

var (
	peerSrv *dbtest.Server // binlog_format=ROW, the peer of most tests
	stmtSrv *dbtest.Server // binlog_format=STATEMENT
)

func TestMain(m *testing.M) {
	code := run(m)
	dbtest.Cleanup()
	os.Exit(code)
}

func run(m *testing.M) int {
	var err error
	peerSrv, err = dbtest.Start(dbtest.Options{ServerID: peerID})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start peer server:", err)
		return 1
	}
	defer peerSrv.Destroy()
	stmtSrv, err = dbtest.Start(dbtest.Options{ServerID: 7, Args: []string{"--binlog-format=STATEMENT"}})
	if err != nil {
		fmt.Fprintln(os.Stderr, "start statement-format server:", err)
		return 1
	}
	defer stmtSrv.Destroy()
	if err := installInternal(peerSrv); err != nil {
		fmt.Fprintln(os.Stderr, "install mlr schema:", err)
		return 1
	}
	return m.Run()
}

// installInternal creates the mlr schema (docs/internals.md).
func installInternal(s *dbtest.Server) error {
	db, err := s.Open("")
	if err != nil {
		return err
	}
	defer db.Close()
	_, err = db.Exec(`CREATE DATABASE mlr;
CREATE TABLE mlr.checkpoints (
  peer_id SMALLINT UNSIGNED NOT NULL PRIMARY KEY,
  peer_name VARCHAR(64) NOT NULL,
  gtid VARCHAR(1024) NOT NULL DEFAULT '',
  file VARCHAR(255) NOT NULL DEFAULT '',
  pos BIGINT UNSIGNED NOT NULL DEFAULT 0,
  hlc BIGINT UNSIGNED NOT NULL DEFAULT 0,
  txns BIGINT UNSIGNED NOT NULL DEFAULT 0,
  source_ts TIMESTAMP(6) NULL,
  applied_at TIMESTAMP(6) NULL);
CREATE TABLE mlr.hlc (id TINYINT UNSIGNED PRIMARY KEY, high_water BIGINT UNSIGNED NOT NULL);`)
	return err
}

// bypassExpr is the trigger's bypass stamp (docs/internals.md).
const bypassExpr = "((FLOOR(UNIX_TIMESTAMP(NOW(6))*1000) << 16) | 0x8000 | (MICROSECOND(NOW(6)) % 1000))"

// createReplicated creates db.tbl with the given user columns (the first
// is the primary key, pkType its type), the invisible stamp columns, its
// tombstone table and the three triggers, as schema apply would.
func createReplicated(t *testing.T, db *sql.DB, schemaName, tbl, pk, pkType, cols string) {
	t.Helper()
	tomb := "`mlr`.`" + schemaName + "." + tbl + "`"
	q := "`" + schemaName + "`.`" + tbl + "`"
	stmts := []string{
		"CREATE DATABASE IF NOT EXISTS `" + schemaName + "`",
		fmt.Sprintf("CREATE TABLE %s (%s %s NOT NULL PRIMARY KEY, %s, "+
			"_mlr_hlc BIGINT UNSIGNED NOT NULL DEFAULT 0 INVISIBLE, "+
			"_mlr_origin SMALLINT UNSIGNED NOT NULL DEFAULT 0 INVISIBLE) ENGINE=InnoDB", q, pk, pkType, cols),
		fmt.Sprintf("CREATE TABLE %s (%s %s NOT NULL PRIMARY KEY, _mlr_hlc BIGINT UNSIGNED NOT NULL, "+
			"_mlr_origin SMALLINT UNSIGNED NOT NULL, KEY (_mlr_hlc)) ENGINE=InnoDB", tomb, pk, pkType),
		fmt.Sprintf("CREATE TRIGGER `%s`.`_mlr_bi_%s` BEFORE INSERT ON %s FOR EACH ROW "+
			"IF @_mlr_apply IS NULL THEN SET NEW._mlr_hlc = COALESCE(@_mlr_hlc, %s), NEW._mlr_origin = COALESCE(@_mlr_origin, %d); END IF",
			schemaName, tbl, q, bypassExpr, peerID),
		fmt.Sprintf("CREATE TRIGGER `%s`.`_mlr_bu_%s` BEFORE UPDATE ON %s FOR EACH ROW "+
			"IF @_mlr_apply IS NULL THEN SET NEW._mlr_hlc = COALESCE(@_mlr_hlc, GREATEST(%s, OLD._mlr_hlc + 1)), NEW._mlr_origin = COALESCE(@_mlr_origin, %d); END IF",
			schemaName, tbl, q, bypassExpr, peerID),
		fmt.Sprintf("CREATE TRIGGER `%s`.`_mlr_ad_%s` AFTER DELETE ON %s FOR EACH ROW "+
			"IF @_mlr_apply IS NULL THEN INSERT INTO %s (%s, _mlr_hlc, _mlr_origin) VALUES (OLD.%s, COALESCE(@_mlr_hlc, %s), COALESCE(@_mlr_origin, %d)) "+
			"ON DUPLICATE KEY UPDATE _mlr_hlc = VALUES(_mlr_hlc), _mlr_origin = VALUES(_mlr_origin); END IF",
			schemaName, tbl, q, tomb, pk, pk, bypassExpr, peerID),
	}
	for _, s := range stmts {
		if _, err := db.Exec(s); err != nil {
			t.Fatalf("setup %s.%s: %v", schemaName, tbl, err)
		}
	}
}

func openPeer(t *testing.T) *sql.DB {
	t.Helper()
	db, err := peerSrv.Open("")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// session is one connection, so that user variables (the proxy's stamp)
// stay set between statements.
type session struct {
	t    *testing.T
	conn *sql.Conn
}

func newSession(t *testing.T, db *sql.DB) *session {
	t.Helper()
	c, err := db.Conn(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &session{t: t, conn: c}
}

func (s *session) exec(q string, args ...any) {
	s.t.Helper()
	if _, err := s.conn.ExecContext(context.Background(), q, args...); err != nil {
		s.t.Fatalf("%s: %v", q, err)
	}
}

// stamp sets the stamp the proxy would set before a write.
func (s *session) stamp(h uint64, origin uint16) {
	s.t.Helper()
	s.exec(fmt.Sprintf("SET @_mlr_hlc = %d, @_mlr_origin = %d", h, origin))
}

func peerCfg(name string, id uint16) config.Peer {
	return config.Peer{Name: name, ID: id}
}

// running is a tailer under test.
type running struct {
	tl     *Tailer
	out    chan *Txn
	cancel context.CancelFunc
	done   chan error
	// finished is set by a test that received Run's result from done.
	finished bool
}

type tailOpts struct {
	self, hub   uint16
	topology    string
	maxTxnBytes int64
	serverID    uint32
	addr        string
	srv         *dbtest.Server
	name        string
	outCap      int
}

func startTailer(t *testing.T, o tailOpts, from Checkpoint) *running {
	t.Helper()
	if o.self == 0 {
		o.self = selfID
	}
	if o.srv == nil {
		o.srv = peerSrv
	}
	if o.addr == "" {
		o.addr = o.srv.Addr()
	}
	if o.name == "" {
		o.name = "region-a"
	}
	p := peerCfg(o.name, peerID)
	p.Server = config.Server{Addr: o.addr, User: "root"}
	p.ServerID = o.serverID
	log := zaptest.NewLogger(t, zaptest.Level(zap.InfoLevel))
	tl := New(Config{Peer: p, Self: o.self, Topology: o.topology, Hub: o.hub, MaxTxnBytes: o.maxTxnBytes}, log, nil)
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{tl: tl, out: make(chan *Txn, o.outCap), cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- tl.Run(ctx, from, r.out) }()
	t.Cleanup(func() { r.stop(t) })
	return r
}

// stop cancels the tailer and waits for Run to return; it must return
// context.Canceled. Idempotent.
func (r *running) stop(t *testing.T) {
	t.Helper()
	if r.cancel == nil {
		return
	}
	r.cancel()
	r.cancel = nil
	if r.finished {
		return
	}
	select {
	case err := <-r.done:
		if !errors.Is(err, context.Canceled) {
			t.Errorf("Run returned %v after cancel, want context.Canceled", err)
		}
	case <-time.After(60 * time.Second):
		t.Errorf("Run did not return after cancel")
	}
}

// hangGuard bounds every wait so that a bug fails the test instead of
// hanging it; it is not a latency assertion.
const hangGuard = 90 * time.Second

// next returns the next Txn sent (pieces included).
func (r *running) next(t *testing.T) *Txn {
	t.Helper()
	select {
	case x := <-r.out:
		return x
	case err := <-r.done:
		t.Fatalf("Run returned early: %v", err)
	case <-time.After(hangGuard):
		t.Fatalf("no transaction from the tailer; status %+v", r.tl.Status())
	}
	return nil
}

// nextData returns the next single-piece Txn with row changes, skipping
// empty ones (DDL, filtered transactions).
func (r *running) nextData(t *testing.T) *Txn {
	t.Helper()
	for {
		x := r.next(t)
		if len(x.Changes) > 0 {
			return x
		}
	}
}

// waitReady waits until the tailer is connected, so that writes made
// afterwards are read (a tailer with no checkpoint starts at the peer's
// position when it connects).
func (r *running) waitReady(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(hangGuard)
	for !r.tl.Status().Connected {
		if time.Now().After(deadline) {
			t.Fatalf("tailer never connected: %+v", r.tl.Status())
		}
		select {
		case err := <-r.done:
			t.Fatalf("Run returned: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// cutProxy forwards TCP to a server and can cut every open connection at
// once with a reset (so no buffered bytes survive), or refuse new ones.
type cutProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	conns  []*net.TCPConn
	refuse bool
}

func newCutProxy(t *testing.T, target string) *cutProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &cutProxy{ln: ln, target: target}
	go p.serve()
	t.Cleanup(func() { ln.Close(); p.cut() })
	return p
}

func (p *cutProxy) addr() string { return p.ln.Addr().String() }

func (p *cutProxy) serve() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return
		}
		p.mu.Lock()
		refuse := p.refuse
		p.mu.Unlock()
		if refuse {
			c.Close()
			continue
		}
		s, err := net.Dial("tcp", p.target)
		if err != nil {
			c.Close()
			continue
		}
		p.mu.Lock()
		p.conns = append(p.conns, c.(*net.TCPConn), s.(*net.TCPConn))
		p.mu.Unlock()
		go func() { _, _ = io.Copy(s, c); s.Close() }()
		go func() { _, _ = io.Copy(c, s); c.Close() }()
	}
}

// cut resets every open connection.
func (p *cutProxy) cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, c := range p.conns {
		_ = c.SetLinger(0)
		_ = c.Close()
	}
	p.conns = nil
}

func (p *cutProxy) setRefuse(v bool) {
	p.mu.Lock()
	p.refuse = v
	p.mu.Unlock()
}
