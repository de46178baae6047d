// Package binlog tails one peer region's binlog, as a replica would, and
// emits its transactions as plain Go values: a Txn of RowChanges keyed by
// column name, with the stamp of the version each change creates and the
// position after the transaction's commit.
//
// A Tailer emits only whole transactions (or, above its memory bound,
// pieces of one that end with a Last piece at the commit), drops what the
// region's topology says it must not receive, and resumes after a broken
// link from the position after the last whole transaction it sent: nothing
// is sent twice and nothing is skipped. It knows nothing of SQL writing.
package binlog

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/go-mysql-org/go-mysql/client"
	"github.com/go-mysql-org/go-mysql/mysql"
	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/sony/gobreaker/v2"
	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/redact"
)

// DefaultMaxTxnBytes bounds the memory one transaction may hold before it is
// emitted in pieces.
const DefaultMaxTxnBytes = 16 << 20

const (
	// heartbeatPeriod is asked of the peer: it sends a heartbeat event when
	// it has had nothing else to send for this long.
	heartbeatPeriod = 2 * time.Second
	// readTimeout declares the link dead when nothing, not even a
	// heartbeat, arrived for this long.
	readTimeout = 5 * heartbeatPeriod
	// dialTimeout bounds connecting (TCP, TLS, authentication) and each
	// probe query: a dial that hangs (a peer stopped, or packets dropped)
	// must not delay the next probe by long.
	dialTimeout = 3 * time.Second
	// probeEvery is the longest wait between attempts to reach a peer
	// that is down (before jitter): a peer that comes back is tailed
	// again within about that. A probe is one TCP connection; cheap.
	probeEvery = 500 * time.Millisecond
	// eventReadAhead is how many decoded events go-mysql may buffer.
	eventReadAhead = 256
)

// ErrNoBinlog is returned when the peer has no binary log (log_bin=OFF).
var ErrNoBinlog = errors.New("peer has no binary log: start it with log_bin enabled")

// ErrPositionLost is returned when the peer no longer has the binlog
// position to resume from (purged binlogs, or a GTID it never logged):
// re-seed this region from the peer and reset the checkpoint.
var ErrPositionLost = errors.New("peer cannot resume from the checkpoint position (binlog purged or GTID unknown): re-seed this region and reset the peer's checkpoint")

// errConfig marks invalid tailer configuration.
var errConfig = errors.New("invalid tailer configuration")

// Config is one tailer's part of the region configuration.
type Config struct {
	// Peer is the region read from. Peer.ServerID is the replica server_id
	// used on the peer (0 = derived from Self and Peer.ID, see ServerID).
	Peer config.Peer
	// Self is this region's id.
	Self uint16
	// Topology is all-to-all (default, also ""), star or ring.
	Topology string
	// Hub is the hub region's id in a star.
	Hub uint16
	// MaxTxnBytes bounds the memory one piece of a transaction may hold
	// (0 = DefaultMaxTxnBytes).
	MaxTxnBytes int64
}

// ServerID is the replica server_id the tailer registers with on the peer:
// Peer.ServerID if set, else 1000000 + self*1000 + peer when both ids are
// below 1000, else 1<<31 | self<<15 | peer. Both derived forms are unique
// per (self, peer) pair and lie far above the small ids servers are given.
func (c Config) ServerID() uint32 {
	if c.Peer.ServerID != 0 {
		return c.Peer.ServerID
	}
	self, peer := uint32(c.Self), uint32(c.Peer.ID)
	if self < 1000 && peer < 1000 {
		return 1000000 + self*1000 + peer
	}
	return 1<<31 | (self&0x7fff)<<15 | (peer & 0x7fff)
}

// Checkpoint is where to resume: the position after the last transaction
// the applier committed (a Txn's Pos). Empty means first start: begin at
// the peer's current position.
type Checkpoint struct {
	// GTID is the peer's GTID position after that transaction: MariaDB
	// "domain-server-seq" (one per domain, comma separated), or a MySQL
	// GTID set. Preferred over File/Pos when the peer has GTIDs.
	GTID string
	File string
	Pos  uint32
}

// Status is a snapshot of a tailer's link.
type Status struct {
	Peer      string
	Connected bool
	// LastError is the error that ended the last connection attempt (nil
	// after a successful reconnect).
	LastError error
	// Position is where a reconnect resumes: after the last whole
	// transaction sent (or the start position until one is sent).
	Position Position
	// LastEvent is the header time of the last binlog event read.
	LastEvent time.Time
	// Retries counts reconnection attempts since Run started.
	Retries int
	// Txns counts whole transactions sent since Run started.
	Txns uint64
	// Sent counts every transaction or piece handed to the relay since
	// the tailer was created (re-sends after a link restart included): a
	// link whose applied position stays while Sent grows is offered
	// changes it does not get past.
	Sent uint64
	// Breaker is the circuit breaker's state: closed, half-open or open.
	Breaker string
}

// Tailer reads one peer's binlog. Run it once; Status may be called from
// any goroutine.
type Tailer struct {
	cfg     Config
	log     *zap.Logger
	m       *metrics
	breaker *gobreaker.CircuitBreaker[struct{}]
	running atomic.Bool

	mu     sync.Mutex
	status Status // guarded by mu
}

// New returns a Tailer for cfg.Peer. log and reg may be nil.
func New(cfg Config, log *zap.Logger, reg prometheus.Registerer) *Tailer {
	if log == nil {
		log = zap.NewNop()
	}
	if cfg.MaxTxnBytes <= 0 {
		cfg.MaxTxnBytes = DefaultMaxTxnBytes
	}
	log = log.With(zap.String("peer", cfg.Peer.Name)) // the caller's logger carries the region
	t := &Tailer{cfg: cfg, log: log, m: newMetrics(reg, cfg.Peer.Name)}
	t.breaker = gobreaker.NewCircuitBreaker[struct{}](gobreaker.Settings{
		Name: "binlog " + cfg.Peer.Name,
		// Open only as long as the probe cadence: the backoff below (with
		// jitter) decides when to probe, the breaker tells the state and
		// keeps a flapping peer from being hammered.
		Timeout: probeEvery * 4 / 5,
		ReadyToTrip: func(c gobreaker.Counts) bool {
			return c.ConsecutiveFailures >= 5
		},
		IsExcluded: func(err error) bool {
			return errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded)
		},
		OnStateChange: func(_ string, from, to gobreaker.State) {
			log.Warn("binlog link circuit breaker", zap.String("from", from.String()), zap.String("to", to.String()))
		},
	})
	t.status.Peer = cfg.Peer.Name
	t.status.Breaker = gobreaker.StateClosed.String()
	return t
}

// Status returns a snapshot of the link.
func (t *Tailer) Status() Status {
	t.mu.Lock()
	defer t.mu.Unlock()
	s := t.status
	s.Breaker = t.breaker.State().String()
	return s
}

// runState is what survives reconnects within one Run.
type runState struct {
	// resume is the position after the last whole transaction sent, or
	// the start position; empty until resolved on first start.
	resume Position
	asm    *assembler
	out    chan<- *Txn
}

// Run tails the peer from `from` and sends transactions on out until ctx is
// done, then returns ctx.Err(). A peer that is down or unreachable is
// retried with exponential backoff and jitter, behind a circuit breaker;
// each attempt is logged at warn. Run returns early only for conditions
// retrying cannot fix, as wrapped sentinels naming the peer:
// ErrNotRowFormat, ErrNoColumnNames, ErrRowImage, ErrNoBinlog,
// ErrPositionLost, ErrUnsupported, ErrReplayDiverged.
//
// Every send on out selects on ctx.Done(). Run must not be called again
// while it runs.
func (t *Tailer) Run(ctx context.Context, from Checkpoint, out chan<- *Txn) error {
	if !t.running.CompareAndSwap(false, true) {
		return fmt.Errorf("binlog: peer %s: Run is already running", t.cfg.Peer.Name)
	}
	defer t.running.Store(false)
	f, err := newFilter(t.cfg.Topology, t.cfg.Self, t.cfg.Hub, t.cfg.Peer.ID)
	if err != nil {
		return fmt.Errorf("binlog: peer %s: %w: %v", t.cfg.Peer.Name, errConfig, err)
	}
	st := &runState{resume: Position(from), out: out}
	st.asm = newAssembler(t.cfg.Peer.ID, f, t.cfg.MaxTxnBytes, t.send(out), t.m, t.log)
	t.mu.Lock()
	t.status.Position = st.resume
	t.mu.Unlock()

	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 200 * time.Millisecond
	bo.MaxInterval = probeEvery // a peer back up is tailed again within ~1 s
	bo.RandomizationFactor = 0.3
	attempt := 0
	var lastCause error // the last error of an attempt the breaker let through
	for {
		var streamErr error
		var connected bool
		_, err := t.breaker.Execute(func() (struct{}, error) {
			connected, streamErr = t.stream(ctx, st)
			if connected {
				return struct{}{}, nil // the link worked; it broke later
			}
			return struct{}{}, streamErr
		})
		switch {
		case streamErr == nil && lastCause != nil:
			// The breaker refused the attempt: say what opened it.
			streamErr = fmt.Errorf("%w; last error: %w", err, lastCause)
		case streamErr == nil:
			streamErr = err
		default:
			lastCause = streamErr
		}
		t.m.link.Set(0)
		if ctx.Err() != nil {
			t.setDisconnected(nil)
			return ctx.Err()
		}
		t.setDisconnected(streamErr)
		if isFatal(streamErr) {
			t.log.Error("binlog tailer stopped", zap.String("resume_gtid", st.resume.GTID),
				zap.String("resume_file", st.resume.File), zap.Uint32("resume_pos", st.resume.Pos), redact.Err(streamErr))
			return streamErr
		}
		if connected {
			bo.Reset()
			attempt = 0
		}
		attempt++
		wait := bo.NextBackOff()
		t.m.reconnects.Inc()
		t.mu.Lock()
		t.status.Retries++
		t.mu.Unlock()
		// Every attempt counts (metric, status); the log says so at warn
		// on attempts 1, 2, 4, 8, ... and at debug in between.
		logAt := t.log.Debug
		if attempt&(attempt-1) == 0 {
			logAt = t.log.Warn
		}
		logAt("peer binlog unavailable, retrying",
			zap.String("addr", t.cfg.Peer.Server.Addr), zap.Int("attempt", attempt),
			zap.Duration("backoff", wait), zap.String("resume_gtid", st.resume.GTID),
			zap.String("resume_file", st.resume.File), zap.Uint32("resume_pos", st.resume.Pos),
			zap.Error(streamErr))
		timer := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			timer.Stop()
			t.setDisconnected(nil)
			return ctx.Err()
		case <-timer.C:
		}
	}
}

// send returns the assembler's way out: a send on out that gives up when
// ctx is done.
func (t *Tailer) send(out chan<- *Txn) func(context.Context, *Txn) error {
	return func(ctx context.Context, txn *Txn) error {
		select {
		case out <- txn:
			t.mu.Lock()
			t.status.Sent++
			t.mu.Unlock()
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// closeSyncer closes a binlog syncer, waiting at most a second: go-mysql's
// Close opens a new connection to the server to KILL the dump thread, for
// up to 10 s, and against a peer that is unreachable that would hold up a
// link's restart and the process's shutdown. Whatever is left finishes in
// the background (go-mysql has already set the dump connection a short
// read deadline, so its reader stops; the server ends the old dump thread
// when the link reconnects with the same server id).
func closeSyncer(s *replication.BinlogSyncer, log *zap.Logger) {
	done := make(chan struct{})
	go func() { s.Close(); close(done) }()
	select {
	case <-done:
	case <-time.After(time.Second):
		log.Debug("closing the binlog connection takes long (server unreachable?); finishing in the background")
	}
}

func isFatal(err error) bool {
	for _, s := range []error{ErrNotRowFormat, ErrNoColumnNames, ErrRowImage, ErrNoBinlog,
		ErrPositionLost, ErrUnsupported, ErrReplayDiverged, errConfig} {
		if errors.Is(err, s) {
			return true
		}
	}
	return false
}

func (t *Tailer) setDisconnected(err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.status.Connected = false
	if err != nil {
		t.status.LastError = err
	}
}

// peerInfo is what a probe learns about the peer.
type peerInfo struct {
	flavor  string // mysql.MariaDBFlavor or mysql.MySQLFlavor
	version string
	gtids   bool // the peer logs GTIDs usable to resume
}

// stream runs one connection: probe the peer, start the binlog dump at
// st.resume, and handle events until an error. connected reports whether
// the dump started and delivered events (the link worked).
func (t *Tailer) stream(ctx context.Context, st *runState) (connected bool, err error) {
	peer := t.cfg.Peer.Name
	tlsCfg, err := tlsConfig(t.cfg.Peer.Server)
	if err != nil {
		return false, fmt.Errorf("binlog: peer %s: %w: tls: %v", peer, errConfig, err)
	}
	info, err := t.probe(ctx, st, tlsCfg)
	if err != nil {
		return false, err
	}
	sc, err := syncerConfig(t.cfg.Peer.Server, tlsCfg, info.flavor, t.cfg.ServerID(), t.log)
	if err != nil {
		return false, fmt.Errorf("binlog: peer %s: %w: %v", peer, errConfig, err)
	}
	// go-mysql's GTID set is the tailer's own business (it resumes from
	// its checkpoint).
	sc.DiscardGTIDSet = true
	syncer := replication.NewBinlogSyncer(sc)
	stop := context.AfterFunc(ctx, func() { closeSyncer(syncer, t.log) })
	defer func() {
		stop()
		closeSyncer(syncer, t.log)
	}()

	var gset mysql.GTIDSet
	var streamer *replication.BinlogStreamer
	resume := st.resume
	if resume.GTID != "" && info.gtids {
		if gset, err = parseGTIDSet(info.flavor, resume.GTID); err != nil {
			return false, fmt.Errorf("binlog: peer %s: %w: checkpoint GTID %q: %v", peer, errConfig, resume.GTID, err)
		}
		streamer, err = syncer.StartSyncGTID(gset.Clone())
	} else {
		gset, _ = parseGTIDSet(info.flavor, "")
		streamer, err = syncer.StartSync(mysql.Position{Name: resume.File, Pos: resume.Pos})
	}
	if err != nil {
		return false, fmt.Errorf("binlog: peer %s: start dump at %s %s:%d: %w", peer, resume.GTID, resume.File, resume.Pos, cleanErr(err))
	}
	t.log.Info("binlog dump started", zap.String("flavor", info.flavor), zap.String("version", info.version),
		zap.String("gtid", resume.GTID), zap.String("file", resume.File), zap.Uint32("pos", resume.Pos),
		zap.Uint32("server_id", t.cfg.ServerID()))

	h := &handler{t: t, st: st, info: info, gset: gset, file: resume.File}
	for {
		ev, err := streamer.GetEvent(ctx)
		if err != nil {
			st.asm.abort()
			if ctx.Err() != nil {
				return connected, ctx.Err()
			}
			return connected, t.streamErr(err, h)
		}
		if !connected {
			connected = true
			t.m.link.Set(1)
			t.mu.Lock()
			t.status.Connected = true
			t.status.LastError = nil
			t.mu.Unlock()
		}
		if err := h.handle(ctx, ev); err != nil {
			st.asm.abort()
			if ctx.Err() != nil {
				return connected, ctx.Err()
			}
			return connected, err
		}
	}
}

// streamErr wraps an error that ended the binlog stream.
func (t *Tailer) streamErr(err error, h *handler) error {
	var me *mysql.MyError
	if errors.As(err, &me) && me.Code == mysql.ER_MASTER_FATAL_ERROR_READING_BINLOG {
		return fmt.Errorf("binlog: peer %s: resume at %q %s:%d: %w: %s", t.cfg.Peer.Name,
			h.st.resume.GTID, h.st.resume.File, h.st.resume.Pos, ErrPositionLost, me.Message)
	}
	return fmt.Errorf("binlog: peer %s: stream at %s:%d: %w", t.cfg.Peer.Name, h.file, h.lastPos, cleanErr(err))
}

// probe connects with a plain session to learn the flavor, checks the
// settings replication needs, and on first start resolves the peer's current
// position into st.resume.
func (t *Tailer) probe(ctx context.Context, st *runState, tlsCfg *tls.Config) (peerInfo, error) {
	peer, srv := t.cfg.Peer.Name, t.cfg.Peer.Server
	var info peerInfo
	dctx, cancel := context.WithTimeout(ctx, dialTimeout)
	defer cancel()
	dialer := &net.Dialer{Timeout: dialTimeout}
	conn, err := client.ConnectWithDialer(dctx, "", srv.Addr, srv.User, srv.Password, "", dialer.DialContext,
		func(c *client.Conn) error {
			c.ReadTimeout, c.WriteTimeout = dialTimeout, dialTimeout
			if tlsCfg != nil {
				c.SetTLSConfig(tlsCfg)
			}
			return nil
		})
	if err != nil {
		return info, fmt.Errorf("binlog: peer %s: connect %s: %w", peer, srv.Addr, cleanErr(err))
	}
	stop := context.AfterFunc(ctx, func() { _ = conn.Close() })
	defer func() {
		stop()
		_ = conn.Close()
	}()
	info.version = conn.GetServerVersion()
	info.flavor = mysql.MySQLFlavor
	if strings.Contains(strings.ToLower(info.version), "mariadb") {
		info.flavor = mysql.MariaDBFlavor
	}
	r, err := conn.Execute("SHOW GLOBAL VARIABLES WHERE Variable_name IN " +
		"('log_bin','binlog_format','binlog_row_image','binlog_row_metadata','gtid_mode','gtid_binlog_pos','gtid_executed')")
	if err != nil {
		return info, fmt.Errorf("binlog: peer %s: read server settings: %w", peer, cleanErr(err))
	}
	vars := map[string]string{}
	for i := 0; i < r.RowNumber(); i++ {
		k, _ := r.GetString(i, 0)
		v, _ := r.GetString(i, 1)
		vars[strings.ToLower(k)] = v
	}
	switch {
	case !strings.EqualFold(vars["log_bin"], "ON"):
		return info, fmt.Errorf("binlog: peer %s (%s): log_bin=%q: %w", peer, srv.Addr, vars["log_bin"], ErrNoBinlog)
	case !strings.EqualFold(vars["binlog_format"], "ROW"):
		return info, fmt.Errorf("binlog: peer %s (%s): binlog_format=%s: %w", peer, srv.Addr, vars["binlog_format"], ErrNotRowFormat)
	case !strings.EqualFold(vars["binlog_row_image"], "FULL"):
		return info, fmt.Errorf("binlog: peer %s (%s): binlog_row_image=%s: %w", peer, srv.Addr, vars["binlog_row_image"], ErrRowImage)
	case !strings.EqualFold(vars["binlog_row_metadata"], "FULL"):
		return info, fmt.Errorf("binlog: peer %s (%s): binlog_row_metadata=%q: %w", peer, srv.Addr, vars["binlog_row_metadata"], ErrNoColumnNames)
	}
	info.gtids = info.flavor == mysql.MariaDBFlavor || strings.EqualFold(vars["gtid_mode"], "ON")

	if st.resume.GTID != "" || st.resume.File != "" {
		return info, nil
	}
	// First start: begin at the peer's current position.
	if info.flavor == mysql.MariaDBFlavor {
		st.resume.GTID = vars["gtid_binlog_pos"]
	} else if info.gtids {
		st.resume.GTID = strings.ReplaceAll(vars["gtid_executed"], "\n", "")
	}
	r, err = conn.Execute("SHOW MASTER STATUS")
	if err != nil {
		r, err = conn.Execute("SHOW BINARY LOG STATUS")
	}
	if err != nil {
		return info, fmt.Errorf("binlog: peer %s: read current binlog position: %w", peer, cleanErr(err))
	}
	if r.RowNumber() > 0 {
		st.resume.File, _ = r.GetString(0, 0)
		p, _ := r.GetUint(0, 1)
		st.resume.Pos = uint32(p)
	}
	if st.resume.GTID == "" && st.resume.File == "" {
		return info, fmt.Errorf("binlog: peer %s: no current binlog position (SHOW MASTER STATUS is empty): %w", peer, ErrNoBinlog)
	}
	t.log.Info("no checkpoint: starting at the peer's current position",
		zap.String("gtid", st.resume.GTID), zap.String("file", st.resume.File), zap.Uint32("pos", st.resume.Pos))
	t.mu.Lock()
	t.status.Position = st.resume
	t.mu.Unlock()
	return info, nil
}

// handler turns the events of one connection into assembler calls, tracking
// the binlog file (from rotate events) and the GTID position.
type handler struct {
	t       *Tailer
	st      *runState
	info    peerInfo
	gset    mysql.GTIDSet // GTID position including the open transaction
	file    string
	lastPos uint32
}

func (h *handler) handle(ctx context.Context, ev *replication.BinlogEvent) error {
	t, asm, hd := h.t, h.st.asm, ev.Header
	peer := t.cfg.Peer.Name
	if hd.LogPos != 0 {
		h.lastPos = hd.LogPos
	}
	when := time.Unix(int64(hd.Timestamp), 0)
	if hd.Timestamp != 0 && hd.EventType != replication.HEARTBEAT_EVENT && hd.EventType != replication.HEARTBEAT_LOG_EVENT_V2 {
		t.m.lastEvent.Set(float64(hd.Timestamp))
		t.mu.Lock()
		t.status.LastEvent = when
		t.mu.Unlock()
	}
	switch e := ev.Event.(type) {
	case *replication.RotateEvent:
		h.file = string(e.NextLogName)
		h.lastPos = uint32(e.Position)
	case *replication.MariadbGTIDEvent:
		if ms, ok := h.gset.(*mysql.MariadbGTIDSet); ok {
			g := e.GTID
			if err := ms.AddSet(&g); err != nil {
				return fmt.Errorf("binlog: peer %s: GTID %s: %w", peer, e.GTID.String(), err)
			}
		}
		return asm.begin(e.GTID.String(), when)
	case *replication.GTIDEvent:
		next, err := e.GTIDNext()
		if err != nil {
			return fmt.Errorf("binlog: peer %s: GTID event at %s:%d: %w", peer, h.file, hd.LogPos, err)
		}
		if ms, ok := h.gset.(*mysql.MysqlGTIDSet); ok {
			if err := ms.Update(next.String()); err != nil {
				return fmt.Errorf("binlog: peer %s: GTID %s: %w", peer, next, err)
			}
		}
		return asm.begin(next.String(), when)
	case *replication.QueryEvent:
		return h.query(ctx, hd, e, when)
	case *replication.XIDEvent:
		return h.commit(ctx, hd, when, false)
	case *replication.TableMapEvent:
		_, err := columnNames(peer, e)
		return err
	case *replication.RowsEvent:
		re, err := decodeRows(peer, hd, e)
		if err != nil {
			return err
		}
		return asm.rows(ctx, re, Position{File: h.file, Pos: hd.LogPos})
	case *replication.TransactionPayloadEvent:
		for _, inner := range e.Events {
			if err := h.handle(ctx, inner); err != nil {
				return err
			}
		}
	}
	return nil
}

// query handles a query event: transaction control, DDL (which ends its
// own event group and is emitted as an empty Txn for checkpoint progress),
// or a statement-logged data change, which is fatal.
func (h *handler) query(ctx context.Context, hd *replication.EventHeader, e *replication.QueryEvent, when time.Time) error {
	t, asm := h.t, h.st.asm
	kind, verb := classifyQuery(string(e.Query))
	start := h.file + ":" + strconv.FormatUint(uint64(hd.LogPos-min(hd.LogPos, hd.EventSize)), 10)
	switch kind {
	case queryBegin:
		return asm.begin(start, when)
	case queryCommit:
		return h.commit(ctx, hd, when, false)
	case queryRollback:
		return h.commit(ctx, hd, when, true)
	case queryIgnore:
		return nil
	case queryXA:
		return fmt.Errorf("binlog: peer %s: %s at %s:%d: %w: XA transactions are not replicated", t.cfg.Peer.Name, verb, h.file, hd.LogPos, ErrUnsupported)
	case queryDML:
		return fmt.Errorf("binlog: peer %s: %s on schema %q logged as a statement at %s:%d: %w",
			t.cfg.Peer.Name, verb, e.Schema, h.file, hd.LogPos, ErrNotRowFormat)
	}
	t.log.Debug("DDL passes", zap.String("schema", string(e.Schema)), zap.String("statement", verb),
		zap.String("file", h.file), zap.Uint32("pos", hd.LogPos))
	if !asm.open {
		if err := asm.begin(start, when); err != nil {
			return err
		}
	}
	return h.commit(ctx, hd, when, false)
}

// commit ends the open transaction at the event ending at hd.LogPos; once
// its Last piece is sent, that is where a reconnect resumes.
func (h *handler) commit(ctx context.Context, hd *replication.EventHeader, when time.Time, rollback bool) error {
	pos := Position{File: h.file, Pos: hd.LogPos}
	if h.gset != nil {
		pos.GTID = h.gset.String()
	}
	var err error
	if rollback {
		err = h.st.asm.rollback(ctx, pos, when)
	} else {
		err = h.st.asm.commit(ctx, pos, when)
	}
	if err != nil {
		return err
	}
	h.st.resume = pos
	t := h.t
	t.mu.Lock()
	t.status.Position = pos
	t.status.Txns++
	t.mu.Unlock()
	return nil
}

func parseGTIDSet(flavor, s string) (mysql.GTIDSet, error) {
	if flavor == mysql.MariaDBFlavor {
		return mysql.ParseMariadbGTIDSet(s)
	}
	return mysql.ParseMysqlGTIDSet(s)
}

// cleanErr keeps go-mysql's event decoding errors free of event bytes (row
// values must stay out of logs and errors).
func cleanErr(err error) error {
	var ee *replication.EventError
	if errors.As(err, &ee) {
		msg := ee.Err
		if i := strings.Index(msg, ", data "); i >= 0 {
			msg = msg[:i]
		}
		return fmt.Errorf("decode %s event ending at %d: %s", ee.Header.EventType, ee.Header.LogPos, msg)
	}
	return err
}

// tlsConfig builds the client TLS configuration for s, nil when s has none
// (a peer with insecure: true). It is config.Server.TLSConfig, the one
// place that builds it: the peer's certificate is verified against s.TLS.CA
// (system roots when empty) and its name against server_name or the host
// of addr, unless s.TLS.InsecureSkipVerify; the client certificate is
// presented when s.TLS.Cert is set.
func tlsConfig(s config.Server) (*tls.Config, error) { return s.TLSConfig() }

// Unregister removes the tailer's series from the registry New was given,
// when its link is removed (a config reload dropped the peer, or changed
// how it is reached): a new tailer for the peer registers its own.
func (t *Tailer) Unregister() {
	if t.m.unregister != nil {
		t.m.unregister()
	}
}

// syncerConfig is the binlog connection to s both readers of a binlog use
// (a peer's tailer, the own-binlog DDL watch): heartbeats and a read
// timeout so a dead link is noticed, no go-mysql retry (the callers resume
// from their own position), a small read-ahead (well below MaxTxnBytes: a
// rows event is up to about 8 KiB, or one row if larger), and the JSON log.
func syncerConfig(s config.Server, tlsCfg *tls.Config, flavor string, serverID uint32, log *zap.Logger) (replication.BinlogSyncerConfig, error) {
	host, portStr, err := net.SplitHostPort(s.Addr)
	if err != nil {
		return replication.BinlogSyncerConfig{}, fmt.Errorf("address %q: %v", s.Addr, err)
	}
	port, err := strconv.ParseUint(portStr, 10, 16)
	if err != nil {
		return replication.BinlogSyncerConfig{}, fmt.Errorf("port %q: %v", portStr, err)
	}
	return replication.BinlogSyncerConfig{
		ServerID:                serverID,
		Flavor:                  flavor,
		Host:                    host,
		Port:                    uint16(port),
		User:                    s.User,
		Password:                s.Password,
		TLSConfig:               tlsCfg,
		TimestampStringLocation: time.UTC,
		HeartbeatPeriod:         heartbeatPeriod,
		ReadTimeout:             readTimeout,
		DisableRetrySync:        true,
		EventCacheCount:         eventReadAhead,
		FillZeroLogPos:          flavor == mysql.MariaDBFlavor,
		Logger:                  newSlog(log),
	}, nil
}
