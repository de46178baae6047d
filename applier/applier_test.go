package applier

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/change"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/hlc"
	"github.com/mlproxy/mlproxy/schema"
)

const peerOrigin = 2 // the origin of the peer's own writes in these tests

func TestInsertUpdateDelete(t *testing.T) {
	e := newEnv(t, "t_iud")
	s1, s2, s3 := stamp(0, 1), stamp(0, 2), stamp(0, 3)
	a := e.runAll(64,
		e.txn(1, e.ins(1, "apple", 3, s1, peerOrigin), e.ins(2, "pear", 5, s1, peerOrigin)),
		e.txn(2, e.upd(1, s1, peerOrigin, "apple", 4, s2, peerOrigin)),
		e.txn(3, e.del(2, s1, peerOrigin, s3, peerOrigin)),
	)

	r, ok := e.get(1)
	require.True(t, ok)
	require.Equal(t, row{"apple", 4, s2, peerOrigin}, r)
	_, ok = e.get(2)
	require.False(t, ok, "deleted row is gone")
	h, o, ok := e.tomb(2)
	require.True(t, ok, "delete leaves a tombstone")
	require.Equal(t, s3, h)
	require.Equal(t, uint16(peerOrigin), o)
	_, _, ok = e.tomb(1)
	require.False(t, ok)
	require.Empty(t, e.conflicts())

	ck, err := a.Checkpoint(context.Background())
	require.NoError(t, err)
	require.True(t, ck.Found)
	require.Equal(t, binlog.Position{GTID: fmt.Sprintf("7-%d-3", e.peer.ID), File: "binlog.000001", Pos: 300}, ck.Pos)
	require.Equal(t, hlc.Timestamp(s3), ck.HLC)
	require.Equal(t, uint64(3), ck.Txns)
	require.Equal(t, e.txn(3).Timestamp.UnixMicro(), ck.SourceTime.UnixMicro())
	require.False(t, ck.AppliedAt.IsZero())

	st := a.Status()
	require.Equal(t, uint64(3), st.Txns)
	require.Equal(t, uint64(4), st.Rows)
	require.Equal(t, ck.Pos, st.Pos)
	require.Equal(t, hlc.Timestamp(s3), st.HLC)
}

func TestLWWConflicts(t *testing.T) {
	e := newEnv(t, "t_lww")
	s0 := stamp(0, 1)
	e.runAll(1, e.txn(1, e.ins(1, "base", 1, s0, peerOrigin), e.ins(2, "base", 1, s0, peerOrigin)))

	// Concurrent updates of the same version s0: a local one and a remote
	// one. Row 1: the local write is newer; row 2: the remote one is.
	e.local(stamp(10, 0), "UPDATE "+schema.Quote(e.db)+".items SET qty = 100 WHERE id IN (1, 2)")
	e.runAll(1,
		e.txn(2, e.upd(1, s0, peerOrigin, "remote", 7, stamp(5, 0), peerOrigin)),
		e.txn(3, e.upd(2, s0, peerOrigin, "remote", 8, stamp(20, 0), peerOrigin)),
	)

	r, _ := e.get(1)
	require.Equal(t, row{"base", 100, stamp(10, 0), self}, r, "local newer wins")
	r, _ = e.get(2)
	require.Equal(t, row{"remote", 8, stamp(20, 0), peerOrigin}, r, "remote newer wins")

	cs := e.conflicts()
	require.Len(t, cs, 2)
	require.Equal(t, "[1]", cs[0].PK)
	require.Equal(t, "lww", cs[0].Rule)
	require.Equal(t, "local_won", cs[0].Outcome)
	require.Equal(t, int64(stamp(10, 0)), cs[0].LocalHLC.Int64)
	require.Equal(t, stamp(5, 0), cs[0].RemoteHLC)
	require.Equal(t, e.peer.ID, cs[0].PeerID)
	require.JSONEq(t, `{"id":1,"name":"base","qty":100}`, cs[0].LocalRow.String)
	require.JSONEq(t, `{"id":1,"name":"remote","qty":7}`, cs[0].RemoteRow.String)
	require.Equal(t, "[2]", cs[1].PK)
	require.Equal(t, "remote_won", cs[1].Outcome)
}

// TestDeleteVersusUpdate delivers a concurrent update and delete of the
// same version in both orders: the newer one wins either way, and the
// row's end state does not depend on the order.
func TestDeleteVersusUpdate(t *testing.T) {
	for _, tc := range []struct {
		name         string
		updMs, delMs int64
		wantRow      bool
		updFirst     bool
	}{
		{"delete newer, update first", 5, 9, false, true},
		{"delete newer, delete first", 5, 9, false, false},
		{"update newer, update first", 9, 5, true, true},
		{"update newer, delete first", 9, 5, true, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t, fmt.Sprintf("t_dvu_%v_%v", tc.wantRow, tc.updFirst))
			s0 := stamp(0, 1)
			// Both changes arrive through this peer (forwarded from regions 2
			// and 3), each replacing version s0.
			u := e.upd(1, s0, peerOrigin, "updated", 9, stamp(tc.updMs, 0), 2)
			d := e.del(1, s0, peerOrigin, stamp(tc.delMs, 0), 3)
			first, second := u, d
			if !tc.updFirst {
				first, second = d, u
			}
			e.runAll(64, e.txn(1, e.ins(1, "base", 1, s0, peerOrigin)), e.txn(2, first), e.txn(3, second))

			r, ok := e.get(1)
			th, to, tok := e.tomb(1)
			if !tc.wantRow || !tc.updFirst { // the delete was applied
				require.True(t, tok, "the delete's tombstone is kept")
				require.Equal(t, stamp(tc.delMs, 0), th)
				require.Equal(t, uint16(3), to)
			} else {
				require.False(t, tok, "a delete that lost to a newer row writes nothing")
			}
			if tc.wantRow {
				require.True(t, ok, "newer update beats the delete")
				require.Equal(t, row{"updated", 9, stamp(tc.updMs, 0), 2}, r)
			} else {
				require.False(t, ok, "newer delete beats the update")
			}
			cs := e.conflicts()
			require.Len(t, cs, 1, "the second change met a concurrent version")
		})
	}
}

func TestTombstoneOnlyMovesForward(t *testing.T) {
	e := newEnv(t, "t_tomb")
	e.runAll(64,
		e.txn(1, e.del(1, 0, 0, stamp(9, 0), peerOrigin)),
		e.txn(2, binlog.RowChange{Schema: e.db, Table: "items", Op: binlog.Delete, Before: binlog.Row{"id": int64(1)},
			PrevUnknown: true, Stamp: stamp(3, 0), Origin: 3}),
	)
	h, o, ok := e.tomb(1)
	require.True(t, ok)
	require.Equal(t, stamp(9, 0), h, "an older tombstone never replaces a newer one")
	require.Equal(t, uint16(peerOrigin), o)

	// Equal stamps: the higher origin wins, as everywhere.
	e.runAll(64, e.txn(3, binlog.RowChange{Schema: e.db, Table: "items", Op: binlog.Delete, Before: binlog.Row{"id": int64(1)},
		PrevUnknown: true, Stamp: stamp(9, 0), Origin: 5}))
	h, o, _ = e.tomb(1)
	require.Equal(t, stamp(9, 0), h)
	require.Equal(t, uint16(5), o)
}

// TestOwnOriginForwarded: a version this region wrote, forwarded back by a
// peer (star hub, ring), changes nothing when it is the version held here,
// and a peer's merge that names this region as origin but carries another
// region's write is applied (its vector is new here).
func TestOwnOriginForwarded(t *testing.T) {
	e := newEnv(t, "t_own")
	h := stamp(10, 0)
	e.local(h, "INSERT INTO "+schema.Quote(e.db)+".items (id, name, qty) VALUES (1, 'mine', 1), (2, 'mine', 1)")
	// Row 1 comes back as it is here.
	back := e.ins(1, "mine", 1, h, self)
	// Row 2 comes back merged with region 3's concurrent write (which lost
	// under lww): the value is ours, the vector is new.
	merged := e.ins(2, "mine", 1, h, self)
	merged.Meta = change.Meta{VV: change.Vector{self: h, 3: stamp(5, 0)}}.Encode()
	a := e.runAll(64, e.txn(1, back, merged))
	r, ok := e.get(1)
	require.True(t, ok)
	require.Equal(t, row{"mine", 1, h, self}, r)
	require.Empty(t, e.conflicts(), "a version already held is no conflict")
	var vv string
	require.NoError(t, db.QueryRow("SELECT _mlr_vv FROM "+schema.Quote(e.db)+".items WHERE id = 2").Scan(&vv))
	m, err := change.ParseMeta(vv)
	require.NoError(t, err)
	require.Equal(t, stamp(5, 0), m.VV[3], "region 3's entry learnt from the forwarded merge")
	require.Equal(t, uint64(2), a.Status().Rows)
}

// TestEmptyTxnsAdvanceCheckpoint: transactions without changes (filtered
// by the tailer) advance the checkpoint in one commit that stays out of
// this region's binlog, so two idle regions never ping-pong checkpoint
// updates; a batch with rows is logged (peers need its loop marker).
func TestEmptyTxnsAdvanceCheckpoint(t *testing.T) {
	e := newEnv(t, "t_empty")
	binlogPos := func() string {
		var p string
		require.NoError(t, db.QueryRow("SELECT @@gtid_binlog_pos").Scan(&p))
		return p
	}
	before := binlogPos()
	a := e.runAll(64, e.txn(1), e.txn(2), e.txn(3))
	ck, err := a.Checkpoint(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint32(300), ck.Pos.Pos)
	require.Equal(t, uint64(3), ck.Txns)
	require.Equal(t, uint64(3), a.Status().Txns)
	require.Equal(t, before, binlogPos(), "a checkpoint-only commit is not binlogged")

	e.runAll(64, e.txn(4), e.txn(5, e.ins(1, "a", 1, stamp(0, 1), peerOrigin)))
	require.NotEqual(t, before, binlogPos(), "a batch with rows is binlogged")
	ck, err = a.Checkpoint(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint64(5), ck.Txns)
}

func TestClockMovesPastAppliedStamps(t *testing.T) {
	e := newEnv(t, "t_clock")
	wall := time.UnixMilli(base)
	e.clock = hlc.NewClock(hlc.Options{Now: func() time.Time { return wall }, MaxOffset: time.Second})
	ahead := stamp(500, 7) // within the max offset
	e.runAll(64, e.txn(1, e.ins(1, "a", 1, ahead, peerOrigin)))
	require.Greater(t, uint64(e.clock.Now()), ahead, "a later local stamp is above the applied one")
}

// TestFutureStampHeld: a change stamped further ahead of local time than
// the max offset is not applied until the local clock catches up; the
// link waits, Status and the metric show it.
func TestFutureStampHeld(t *testing.T) {
	e := newEnv(t, "t_held")
	var mu sync.Mutex
	wall := time.UnixMilli(base)
	e.clock = hlc.NewClock(hlc.Options{Now: func() time.Time { mu.Lock(); defer mu.Unlock(); return wall }, MaxOffset: time.Second})
	tooFar := stamp(60_000, 0) // a minute ahead
	a := e.applier(64)
	a.holdPoll = 10 * time.Millisecond
	in := make(chan *binlog.Txn, 2)
	in <- e.txn(1, e.ins(1, "early", 1, stamp(0, 1), peerOrigin))
	in <- e.txn(2, e.ins(2, "future", 1, tooFar, peerOrigin))
	close(in)
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background(), in) }()
	require.Eventually(t, func() bool { return a.Status().Held != "" }, 10*time.Second, 10*time.Millisecond)
	st := a.Status()
	require.Equal(t, e.db+".items", st.Held)
	require.Greater(t, st.HeldAhead, 50*time.Second)
	time.Sleep(50 * time.Millisecond)
	_, ok := e.get(2)
	require.False(t, ok, "held: not applied while a minute ahead")
	select {
	case err := <-done:
		t.Fatalf("applier ended while holding: %v", err)
	default:
	}
	mu.Lock()
	wall = wall.Add(time.Minute) // the local clock catches up
	mu.Unlock()
	require.NoError(t, <-done)
	r, ok := e.get(2)
	require.True(t, ok, "applied once the clock caught up")
	require.Equal(t, tooFar, r.HLC)
	require.Empty(t, a.Status().Held)
}

func TestUnknownColumn(t *testing.T) {
	e := newEnv(t, "t_ddl")
	e.runAll(64, e.txn(1, e.ins(1, "a", 1, stamp(0, 1), peerOrigin)))

	// The column was added at the source and here, after the plan was built.
	a := e.applier(64)
	in := make(chan *binlog.Txn, 2)
	in <- e.txn(2, e.ins(2, "b", 1, stamp(0, 2), peerOrigin))
	ch := e.ins(3, "c", 1, stamp(0, 3), peerOrigin)
	ch.After["color"] = "red"
	_, err := db.Exec("ALTER TABLE " + schema.Quote(e.db) + ".items ADD COLUMN color VARCHAR(16) NULL")
	require.NoError(t, err)
	in <- e.txn(3, ch)
	close(in)
	require.NoError(t, a.Run(context.Background(), in))
	var color string
	require.NoError(t, db.QueryRow("SELECT color FROM "+schema.Quote(e.db)+".items WHERE id = 3").Scan(&color))
	require.Equal(t, "red", color)

	// A column dropped here after the plan was built (the source dropped it
	// first): the lookup fails, the table is re-read, the change applies.
	_, err = db.Exec("ALTER TABLE " + schema.Quote(e.db) + ".items DROP COLUMN color")
	require.NoError(t, err)
	in = make(chan *binlog.Txn, 1)
	in <- e.txn(4, e.ins(5, "e", 1, stamp(0, 5), peerOrigin))
	close(in)
	a2 := e.applier(64)
	a2.plans = a.plans // the plan built before the DROP
	for _, p := range a2.plans {
		p.stmts = map[string]*sql.Stmt{}
	}
	require.NoError(t, a2.Run(context.Background(), in))
	_, ok := e.get(5)
	require.True(t, ok)

	// A column the local table lacks even after re-reading it: the table
	// waits for the DDL, its later changes held, and resumes once the
	// column exists here.
	e.waitsForDDL(func() {
		_, err := db.Exec("ALTER TABLE " + schema.Quote(e.db) + ".items ADD COLUMN size INT NULL")
		require.NoError(t, err)
	}, []int64{}, []int64{4, 6}, []string{e.db + ".items", "size"},
		e.txn(5, func() binlog.RowChange {
			ch := e.ins(4, "d", 1, stamp(0, 4), peerOrigin)
			ch.After["size"] = int64(3)
			return ch
		}()),
		e.txn(6, e.ins(6, "f", 1, stamp(0, 6), peerOrigin)))
	var size int
	require.NoError(t, db.QueryRow("SELECT size FROM "+schema.Quote(e.db)+".items WHERE id = 4").Scan(&size))
	require.Equal(t, 3, size)
}

// waitsForDDL runs txns through an applier until the table they write
// waits for DDL (a stop of kind ddl whose error names every string of
// names); then rows in before are present and rows in held absent; ddl
// runs, and every row of held arrives.
func (e *env) waitsForDDL(ddl func(), before, held []int64, names []string, txns ...*binlog.Txn) {
	t := e.t
	defer func(r, p time.Duration) { ddlRetry, stopPoll = r, p }(ddlRetry, stopPoll)
	ddlRetry, stopPoll = 50*time.Millisecond, 20*time.Millisecond
	a := e.applier(1)
	in := make(chan *binlog.Txn, len(txns))
	for _, x := range txns {
		in <- x
	}
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background(), in) }()
	require.Eventually(t, func() bool { return len(a.Status().TableStops) == 1 }, 10*time.Second, 10*time.Millisecond)
	s := a.Status().TableStops[0]
	require.Equal(t, StopDDL, s.Kind)
	for _, n := range names {
		require.Contains(t, s.Error, n)
	}
	require.Nil(t, a.Status().Stopped, "the link as a whole goes on")
	last := txns[len(txns)-1].Pos
	require.Eventually(t, func() bool { ck, _ := a.Checkpoint(context.Background()); return ck.Pos.Pos == last.Pos }, 10*time.Second, 10*time.Millisecond,
		"the checkpoint passes the held changes")
	for _, id := range before {
		_, ok := e.get(id)
		require.True(t, ok, "row %d, before the table stopped", id)
	}
	for _, id := range held {
		_, ok := e.get(id)
		require.False(t, ok, "row %d, held", id)
	}
	ddl()
	require.Eventually(t, func() bool { return len(a.Status().TableStops) == 0 }, 10*time.Second, 10*time.Millisecond, "the table resumes once the DDL ran")
	close(in)
	require.NoError(t, <-done)
	for _, id := range held {
		_, ok := e.get(id)
		require.True(t, ok, "row %d, applied after the DDL", id)
	}
}

// TestRestartAppliesNothingTwice stops the applier part way, then resumes
// the way the tailer does: from Checkpoint.
func TestRestartAppliesNothingTwice(t *testing.T) {
	e := newEnv(t, "t_restart")
	var all []*binlog.Txn
	for i := 1; i <= 20; i++ {
		all = append(all, e.txn(uint64(i), e.ins(int64(i), "r", int64(i), stamp(int64(i), 0), peerOrigin)))
	}
	e.runAll(4, all[:7]...)

	a := e.applier(4)
	ck, err := a.Checkpoint(context.Background())
	require.NoError(t, err)
	var rest []*binlog.Txn
	for _, t := range all { // what a tailer resuming at ck delivers
		if t.Pos.File > ck.Pos.File || (t.Pos.File == ck.Pos.File && t.Pos.Pos > ck.Pos.Pos) {
			rest = append(rest, t)
		}
	}
	require.Len(t, rest, 13)
	e.runAll(4, rest...)

	require.Equal(t, 20, e.count())
	require.Empty(t, e.conflicts(), "nothing met itself: nothing was applied twice")
	ck, err = a.Checkpoint(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint64(20), ck.Txns)
	require.Equal(t, uint32(2000), ck.Pos.Pos)
}

// TestCancelMidBatchAllOrNothing cancels the applier after the first
// transaction of a batch was applied and before the second: the first
// transaction's rows and the checkpoint roll back together; a restart
// applies the batch once.
func TestCancelMidBatchAllOrNothing(t *testing.T) {
	e := newEnv(t, "t_cancel")
	e.runAll(64, e.txn(1, e.ins(1, "a", 1, stamp(0, 1), peerOrigin)))
	batch := []*binlog.Txn{
		e.txn(2, e.ins(2, "b", 1, stamp(1, 0), peerOrigin)),
		e.txn(3, e.upd(1, stamp(0, 1), peerOrigin, "a", 2, stamp(2, 0), peerOrigin)),
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	in := make(chan *binlog.Txn, len(batch))
	for _, tx := range batch {
		in <- tx
	}
	a := e.applier(64)
	a.changeHook = func(rc *binlog.RowChange) {
		if rc.Op == binlog.Update {
			cancel() // txn 2's insert is written, txn 3 not yet
		}
	}
	require.ErrorIs(t, a.Run(ctx, in), context.Canceled)

	_, ok := e.get(2)
	require.False(t, ok, "txn 2 rolled back with the batch")
	ck, err := a.Checkpoint(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint32(100), ck.Pos.Pos, "checkpoint still at txn 1")
	require.Equal(t, uint64(1), ck.Txns)

	e.runAll(64, batch...)
	r, _ := e.get(1)
	require.Equal(t, int64(2), r.Qty)
	_, ok = e.get(2)
	require.True(t, ok)
	require.Empty(t, e.conflicts())
	ck, err = a.Checkpoint(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint32(300), ck.Pos.Pos)
	require.Equal(t, uint64(3), ck.Txns)
}

// TestKilledMidBatchRetries kills the applier's connection in the middle
// of a batch: the server rolls the batch back, the applier retries it on a
// new session, and it applies once.
func TestKilledMidBatchRetries(t *testing.T) {
	e := newEnv(t, "t_killmid")
	e.runAll(64, e.txn(1, e.ins(1, "a", 1, stamp(0, 1), peerOrigin)))
	in := make(chan *binlog.Txn, 2)
	in <- e.txn(2, e.ins(2, "b", 1, stamp(1, 0), peerOrigin))
	in <- e.txn(3, e.upd(1, stamp(0, 1), peerOrigin, "a", 2, stamp(2, 0), peerOrigin))
	close(in)
	a := e.applier(64)
	var killed int64
	a.changeHook = func(rc *binlog.RowChange) {
		if rc.Op == binlog.Update && killed == 0 {
			killed = a.sessionID.Load()
			_, err := db.Exec(fmt.Sprintf("KILL CONNECTION %d", killed))
			require.NoError(t, err)
		}
	}
	require.NoError(t, a.Run(context.Background(), in))
	require.NotZero(t, killed)
	require.NotEqual(t, killed, a.sessionID.Load(), "retried on a new session")

	r, _ := e.get(1)
	require.Equal(t, int64(2), r.Qty)
	_, ok := e.get(2)
	require.True(t, ok)
	require.Empty(t, e.conflicts())
	ck, err := a.Checkpoint(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint64(3), ck.Txns)
	require.Equal(t, uint32(300), ck.Pos.Pos)
}

// TestKilledConnectionRetries kills the applier's idle session between
// batches: the next batch fails on the dead connection, rolls back and is
// retried on a new session, applying once.
func TestKilledConnectionRetries(t *testing.T) {
	e := newEnv(t, "t_kill")
	in := make(chan *binlog.Txn)
	a := e.applier(64)
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background(), in) }()
	in <- e.txn(1, e.ins(1, "a", 1, stamp(0, 1), peerOrigin))
	in <- e.txn(2)
	// Wait until both are committed (a send only says the applier took the
	// transaction, maybe into a batch still being applied): the session
	// is then idle.
	require.Eventually(t, func() bool {
		ck, err := a.Checkpoint(context.Background())
		return err == nil && ck.Pos.Pos == 200
	}, 30*time.Second, 10*time.Millisecond, "txns 1 and 2 committed")
	id := a.sessionID.Load()
	require.NotZero(t, id)
	_, err := db.Exec(fmt.Sprintf("KILL CONNECTION %d", id))
	require.NoError(t, err)
	in <- e.txn(3, e.ins(2, "b", 1, stamp(1, 0), peerOrigin), e.upd(1, stamp(0, 1), peerOrigin, "a", 2, stamp(2, 0), peerOrigin))
	close(in)
	require.NoError(t, <-done)

	require.NotEqual(t, id, a.sessionID.Load(), "a new session")
	r, _ := e.get(1)
	require.Equal(t, int64(2), r.Qty)
	_, ok := e.get(2)
	require.True(t, ok)
	require.Empty(t, e.conflicts())
	ck, err := a.Checkpoint(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint64(3), ck.Txns)
	require.Equal(t, uint32(300), ck.Pos.Pos)
}

// TestPiecesAreOneTransaction streams a transaction in three pieces: none
// of it is visible until the last piece commits, and cancelling between
// pieces leaves nothing.
func TestPiecesAreOneTransaction(t *testing.T) {
	e := newEnv(t, "t_pieces")
	pieces := func(seq uint64) []*binlog.Txn {
		var ps []*binlog.Txn
		for i := 0; i < 3; i++ {
			p := e.txn(seq, e.ins(int64(seq*10)+int64(i), "p", 1, stamp(int64(seq), uint16(i)), peerOrigin))
			p.Piece, p.Last = i, i == 2
			ps = append(ps, p)
		}
		return ps
	}

	// Cancelled after two pieces: nothing applied.
	ctx, cancel := context.WithCancel(context.Background())
	in := make(chan *binlog.Txn) // unbuffered: a send returns once received
	a := e.applier(64)
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, in) }()
	ps := pieces(1)
	in <- ps[0]
	in <- ps[1]
	require.Equal(t, 0, e.count(), "no piece visible before the last")
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
	require.Equal(t, 0, e.count())
	ck, err := a.Checkpoint(context.Background())
	require.NoError(t, err)
	require.False(t, ck.Found)

	// Delivered whole (after a small txn, before another): one commit.
	in2 := []*binlog.Txn{e.txn(0, e.ins(1, "small", 1, stamp(0, 9), peerOrigin))}
	in2[0].Pos.Pos = 50
	in2 = append(in2, pieces(1)...)
	in2 = append(in2, e.txn(2, e.ins(2, "small", 1, stamp(2, 9), peerOrigin)))
	a = e.runAll(64, in2...)
	require.Equal(t, 5, e.count())
	ck, err = a.Checkpoint(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint64(3), ck.Txns)
	require.Equal(t, uint32(200), ck.Pos.Pos)

	// A piece out of order is refused.
	bad := pieces(3)
	in = make(chan *binlog.Txn, 2)
	in <- bad[0]
	in <- bad[2]
	close(in)
	require.ErrorIs(t, e.applier(64).Run(context.Background(), in), ErrPieceOrder)
	require.Equal(t, 5, e.count())
}

func TestCheckpointGTIDMergesDomains(t *testing.T) {
	require.Equal(t, "0-1-5", mergeGTID("", "0-1-5"))
	require.Equal(t, "0-1-6", mergeGTID("0-1-5", "0-1-6"))
	require.Equal(t, "0-1-6,2-2-9", mergeGTID("2-2-9,0-1-5", "0-1-6"))
	require.Equal(t, "0-1-5,10-3-1", mergeGTID("0-1-5", "10-3-1"))
	require.Equal(t, "0-1-5", mergeGTID("0-1-5", ""))
	require.Equal(t, "0-1-7,2-2-9,5-5-1", mergeGTID("0-1-5,2-2-8,5-5-1", "0-1-7,2-2-9"), "a full position merges per domain")
	require.Equal(t, "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5", mergeGTID("0-1-5", "3E11FA47-71CA-11E1-9E33-C80AA9429562:1-5"))
}

func TestRetryable(t *testing.T) {
	require.True(t, retryable(fmt.Errorf("x: %w", &mysql.MySQLError{Number: 1213})))
	require.True(t, retryable(fmt.Errorf("x: %w", &mysql.MySQLError{Number: 1205})))
	require.True(t, retryable(fmt.Errorf("x: %w", mysql.ErrInvalidConn)))
	require.False(t, retryable(fmt.Errorf("x: %w", &mysql.MySQLError{Number: 1062})))
	require.False(t, retryable(errors.New("syntax")))
	require.False(t, retryable(fmt.Errorf("x: %w", ErrUnknownColumn)))
}

// TestLostCommitReplyNotReapplied loses the reply to a COMMIT that went
// through: the retry finds the checkpoint at the batch's end and applies
// nothing again.
func TestLostCommitReplyNotReapplied(t *testing.T) {
	e := newEnv(t, "t_lostcommit")
	a := e.applier(64)
	lost := false
	a.commitHook = func() error {
		if lost {
			return nil
		}
		lost = true
		return fmt.Errorf("read reply: %w", mysql.ErrInvalidConn)
	}
	in := make(chan *binlog.Txn, 2)
	in <- e.txn(1, e.ins(1, "a", 1, stamp(0, 1), peerOrigin))
	in <- e.txn(2, e.upd(1, stamp(0, 1), peerOrigin, "a", 2, stamp(1, 0), peerOrigin))
	close(in)
	require.NoError(t, a.Run(context.Background(), in))
	require.True(t, lost)

	r, _ := e.get(1)
	require.Equal(t, row{"a", 2, stamp(1, 0), peerOrigin}, r)
	require.Empty(t, e.conflicts())
	ck, err := a.Checkpoint(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint64(2), ck.Txns, "applied twice would count 4")
	st := a.Status()
	require.Equal(t, uint64(2), st.Txns)
	require.Equal(t, uint64(2), st.Rows)
	require.Equal(t, ck.Pos, st.Pos)
}

// TestTablePreparedAfterItWasRead: a table read by the table source before
// `schema apply` prepared it (created, read by a retrying link, then
// prepared) is read again, not refused forever as unprepared.
func TestTablePreparedAfterItWasRead(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "t_lateprep")
	q := schema.Quote(e.db)
	_, err := db.ExecContext(ctx, "CREATE TABLE "+q+".late (id INT NOT NULL PRIMARY KEY, name VARCHAR(64) NOT NULL, qty INT NOT NULL DEFAULT 0)")
	require.NoError(t, err)
	_, _, err = e.tables.Table(ctx, e.db, "late") // cached unprepared
	require.NoError(t, err)
	rules := []config.TableRule{{Schema: e.db, Table: "*", Rule: "lww"}}
	ts, err := schema.Inspect(ctx, db, rules)
	require.NoError(t, err)
	_, err = schema.Apply(ctx, db, schema.Stamping{Region: self}, ts, nil)
	require.NoError(t, err)

	rc := e.ins(1, "late", 1, stamp(0, 1), e.peer.ID)
	rc.Table = "late"
	e.runAll(8, e.txn(1, rc))
	var n int
	require.NoError(t, db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+q+".late").Scan(&n))
	require.Equal(t, 1, n, "the change to the table prepared after it was first read is applied")
}
