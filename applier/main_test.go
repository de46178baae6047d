package applier

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/change"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/dbtest"
	"github.com/mlproxy/mlproxy/hlc"
	"github.com/mlproxy/mlproxy/schema"
)

// The package's server, started once in TestMain. Every test works in its
// own database and applies from its own peer id, so tests do not share
// rows or checkpoints.
var (
	srv *dbtest.Server
	db  *sql.DB
)

// self is the local region's id in every test.
const self = 1

func TestMain(m *testing.M) {
	code := run(m)
	dbtest.Cleanup()
	os.Exit(code)
}

func run(m *testing.M) int {
	var err error
	srv, err = dbtest.Start(dbtest.Options{ServerID: 4301})
	if err != nil {
		fmt.Fprintln(os.Stderr, "applier tests: start server:", err)
		return 1
	}
	defer srv.Destroy()
	if db, err = srv.Open(""); err != nil {
		fmt.Fprintln(os.Stderr, "applier tests:", err)
		return 1
	}
	defer db.Close()
	return m.Run()
}

var peerSeq atomic.Uint32

// env is one test's database, table source and applier settings.
type env struct {
	t      testing.TB
	db     string // the test's database
	tables *Tables
	peer   config.Peer
	clock  *hlc.Clock
	// workers is Config.Workers of the appliers the env makes (0: serial).
	workers int
}

// newEnv creates database name with table items (id INT PK, name, qty),
// prepared by schema.Apply, replicated under lww.
func newEnv(t testing.TB, name string) *env {
	t.Helper()
	return newEnvRule(t, name, config.TableRule{Table: "*", Rule: "lww"})
}

// newEnvRule is newEnv with the table replicated under rule (its Schema is
// set to name).
func newEnvRule(t testing.TB, name string, rule config.TableRule) *env {
	t.Helper()
	ctx := context.Background()
	_, err := db.ExecContext(ctx, "DROP DATABASE IF EXISTS "+schema.Quote(name)+"; CREATE DATABASE "+schema.Quote(name)+
		"; CREATE TABLE "+schema.Quote(name)+".items (id INT NOT NULL PRIMARY KEY, name VARCHAR(64) NOT NULL, qty INT NOT NULL DEFAULT 0)")
	require.NoError(t, err)
	rule.Schema = name
	rules := []config.TableRule{rule}
	ts, err := schema.Inspect(ctx, db, rules)
	require.NoError(t, err)
	_, err = schema.Apply(ctx, db, schema.Stamping{Region: self}, ts, nil)
	require.NoError(t, err)
	id := uint16(100 + peerSeq.Add(1))
	return &env{
		t:      t,
		db:     name,
		tables: NewTables(db, rules, nil),
		peer:   config.Peer{Name: fmt.Sprintf("peer%d", id), ID: id},
		clock:  hlc.NewClock(hlc.Options{MaxOffset: time.Hour}),
	}
}

func (e *env) applier(batch int) *Applier {
	a := New(Config{Self: self, Peer: e.peer, BatchTxns: batch, Workers: e.workers}, db, e.tables, e.clock, nil, nil)
	a.newBO = func() backoff.BackOff { return backoff.NewConstantBackOff(20 * time.Millisecond) }
	return a
}

// runAll applies txns through a fresh applier and waits for it to drain.
func (e *env) runAll(batch int, txns ...*binlog.Txn) *Applier {
	e.t.Helper()
	a := e.applier(batch)
	in := make(chan *binlog.Txn, len(txns))
	for _, t := range txns {
		in <- t
	}
	close(in)
	require.NoError(e.t, a.Run(context.Background(), in))
	return a
}

// stamp is a stamp n logical ticks into a fixed recent millisecond, so
// tests order stamps by n.
var base = time.Now().UnixMilli()

func stamp(ms int64, n uint16) uint64 { return uint64(hlc.New(base+ms, n)) }

// txn is source transaction seq of the peer, ending at binlog.000001:seq*100.
func (e *env) txn(seq uint64, changes ...binlog.RowChange) *binlog.Txn {
	return &binlog.Txn{
		Source:    peerOrigin, // the region whose binlog this is: the Home of its versions
		Pos:       binlog.Position{GTID: fmt.Sprintf("7-%d-%d", e.peer.ID, seq), File: "binlog.000001", Pos: uint32(seq * 100)},
		Timestamp: time.UnixMicro(base*1000 + int64(seq)),
		Seq:       seq,
		Last:      true,
		Changes:   changes,
	}
}

func (e *env) ins(id int64, name string, qty int64, h uint64, origin uint16) binlog.RowChange {
	return binlog.RowChange{Schema: e.db, Table: "items", Op: binlog.Insert,
		After: binlog.Row{"id": id, "name": name, "qty": qty, "_mlr_hlc": h, "_mlr_origin": int64(origin)},
		Stamp: h, Origin: change.Origin(origin), Meta: vector(0, 0, h, origin)}
}

// vector is the metadata of a version (h, origin) made on top of version
// (ph, po) (none when ph is 0).
func vector(ph uint64, po uint16, h uint64, origin uint16) string {
	vv := change.Vector{}
	if ph > 0 {
		vv[po] = ph
	}
	vv[origin] = max(vv[origin], h)
	return change.Meta{VV: vv}.Encode()
}

// upd updates row id from version (ph, po) to (name, qty) at (h, origin).
func (e *env) upd(id int64, ph uint64, po uint16, name string, qty int64, h uint64, origin uint16) binlog.RowChange {
	return binlog.RowChange{Schema: e.db, Table: "items", Op: binlog.Update,
		Before: binlog.Row{"id": id, "name": "?", "qty": int64(0), "_mlr_hlc": ph, "_mlr_origin": int64(po)},
		After:  binlog.Row{"id": id, "name": name, "qty": qty, "_mlr_hlc": h, "_mlr_origin": int64(origin)},
		Stamp:  h, Origin: change.Origin(origin), Meta: vector(ph, po, h, origin)}
}

// del deletes row id, version (ph, po), at (h, origin).
func (e *env) del(id int64, ph uint64, po uint16, h uint64, origin uint16) binlog.RowChange {
	return binlog.RowChange{Schema: e.db, Table: "items", Op: binlog.Delete,
		Before: binlog.Row{"id": id, "name": "?", "qty": int64(0), "_mlr_hlc": ph, "_mlr_origin": int64(po)},
		Stamp:  h, Origin: change.Origin(origin), Meta: vector(ph, po, h, origin)}
}

// row is a local row with its stamp.
type row struct {
	Name   string
	Qty    int64
	HLC    uint64
	Origin uint16
}

// get reads row id; ok false when absent.
func (e *env) get(id int64) (row, bool) {
	e.t.Helper()
	var r row
	err := db.QueryRow("SELECT name, qty, _mlr_hlc, _mlr_origin FROM "+schema.Quote(e.db)+".items WHERE id = ?", id).
		Scan(&r.Name, &r.Qty, &r.HLC, &r.Origin)
	if err == sql.ErrNoRows {
		return row{}, false
	}
	require.NoError(e.t, err)
	return r, true
}

// tomb reads row id's tombstone stamp; ok false when none.
func (e *env) tomb(id int64) (h uint64, origin uint16, ok bool) {
	e.t.Helper()
	err := db.QueryRow("SELECT _mlr_hlc, _mlr_origin FROM mlr."+schema.Quote(schema.TombstoneTable(e.db, "items"))+" WHERE id = ?", id).
		Scan(&h, &origin)
	if err == sql.ErrNoRows {
		return 0, 0, false
	}
	require.NoError(e.t, err)
	return h, origin, true
}

func (e *env) count() int {
	e.t.Helper()
	var n int
	require.NoError(e.t, db.QueryRow("SELECT COUNT(*) FROM "+schema.Quote(e.db)+".items").Scan(&n))
	return n
}

// conflictRow is one mlr.conflicts entry of the test's database.
type conflictRow struct {
	PK, Rule, Outcome       string
	LocalHLC                sql.NullInt64
	RemoteHLC               uint64
	LocalRow, RemoteRow     sql.NullString
	PeerID                  uint16
	LocalOrigin, RemoteOrig sql.NullInt64
}

func (e *env) conflicts() []conflictRow {
	e.t.Helper()
	rows, err := db.Query("SELECT peer_id, pk, rule, outcome, local_hlc, remote_hlc, local_row, remote_row, local_origin, remote_origin "+
		"FROM mlr.conflicts WHERE db = ? ORDER BY id", e.db)
	require.NoError(e.t, err)
	defer rows.Close()
	var out []conflictRow
	for rows.Next() {
		var c conflictRow
		require.NoError(e.t, rows.Scan(&c.PeerID, &c.PK, &c.Rule, &c.Outcome, &c.LocalHLC, &c.RemoteHLC, &c.LocalRow, &c.RemoteRow, &c.LocalOrigin, &c.RemoteOrig))
		out = append(out, c)
	}
	require.NoError(e.t, rows.Err())
	return out
}

// local runs statements as a client through the proxy would: stamped by
// the triggers with @_mlr_hlc/@_mlr_origin.
func (e *env) local(h uint64, stmts string, args ...any) {
	e.t.Helper()
	conn, err := db.Conn(context.Background())
	require.NoError(e.t, err)
	defer conn.Close()
	_, err = conn.ExecContext(context.Background(), fmt.Sprintf("SET @_mlr_hlc = %d, @_mlr_origin = %d", h, self))
	require.NoError(e.t, err)
	_, err = conn.ExecContext(context.Background(), stmts, args...)
	require.NoError(e.t, err)
	_, err = conn.ExecContext(context.Background(), "SET @_mlr_hlc = NULL, @_mlr_origin = NULL")
	require.NoError(e.t, err)
}
