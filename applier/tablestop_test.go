package applier

import (
	"context"
	"database/sql"
	"errors"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/schema"
)

// tableStopEnvs are two replicated databases applied by one applier (one
// peer): e, whose items has a unique name taken locally, and f.
func tableStopEnvs(t *testing.T, name string) (e, f *env) {
	e = newEnvRule(t, name, withOnConstraint("stop"))
	f = newEnvRule(t, name+"_other", withOnConstraint("stop"))
	rules := []config.TableRule{
		{Schema: e.db, Table: "*", Rule: "lww", OnConstraint: "stop"},
		{Schema: f.db, Table: "*", Rule: "lww", OnConstraint: "stop"},
	}
	e.tables = NewTables(db, rules, nil)
	_, err := db.Exec("ALTER TABLE " + schema.Quote(e.db) + ".items ADD UNIQUE KEY (name)")
	require.NoError(t, err)
	e.local(stamp(0, 1), "INSERT INTO "+schema.Quote(e.db)+".items (id, name, qty) VALUES (900, 'taken', 1)")
	return e, f
}

// feed runs a on txns until the relay is drained (or Run ends).
func feed(a *Applier, txns ...*binlog.Txn) error {
	in := make(chan *binlog.Txn, len(txns))
	for _, t := range txns {
		in <- t
	}
	close(in)
	return a.Run(context.Background(), in)
}

func (e *env) stopRow(t *testing.T) (scope, gtid string, resume uint64, ok bool) {
	t.Helper()
	err := db.QueryRow("SELECT scope, gtid, resume_pos FROM mlr.link_stops WHERE peer_id = ?", e.peer.ID).Scan(&scope, &gtid, &resume)
	if errors.Is(err, sql.ErrNoRows) {
		return "", "", 0, false
	}
	require.NoError(t, err)
	return scope, gtid, resume, true
}

// TestTableStopOthersGoOn: a change a unique key refuses stops only its
// table: the other table's later transactions apply, the stopped table's
// do not; the link resumes (Checkpoint) from before the refused change;
// once the local row is gone, a restart from there applies the table's
// changes in order and the other table's changes again change nothing.
func TestTableStopOthersGoOn(t *testing.T) {
	e, f := tableStopEnvs(t, "t_tstop")
	txns := []*binlog.Txn{
		e.txn(1, e.ins(1, "a", 1, stamp(1, 1), peerOrigin)),
		e.txn(2, e.ins(2, "taken", 2, stamp(1, 2), peerOrigin)), // refused
		e.txn(3, f.ins(3, "x", 3, stamp(1, 3), peerOrigin)),
		e.txn(4, e.ins(4, "b", 4, stamp(1, 4), peerOrigin)), // the stopped table: waits
		e.txn(5, f.ins(5, "y", 5, stamp(1, 5), peerOrigin), f.upd(3, stamp(1, 3), peerOrigin, "x2", 33, stamp(1, 6), peerOrigin)),
	}
	a := e.applier(64)
	require.NoError(t, feed(a, txns...))

	st := a.Status().Stopped
	require.NotNil(t, st, "the table is stopped")
	require.Equal(t, "table", st.Scope)
	require.Equal(t, e.db+".items", st.Table)
	for id, want := range map[int64]bool{1: true, 2: false, 4: false} {
		_, ok := e.get(id)
		require.Equal(t, want, ok, "%s row %d", e.db, id)
	}
	r3, ok := f.get(3)
	require.True(t, ok)
	require.Equal(t, int64(33), r3.Qty, "the other table's later transactions applied")
	_, ok = f.get(5)
	require.True(t, ok)
	scope, gtid, resume, ok := e.stopRow(t)
	require.True(t, ok)
	require.Equal(t, "table", scope)
	require.Equal(t, txns[1].Pos.GTID, gtid)
	require.Equal(t, uint64(100), resume, "resumes right after the last transaction before the refused one")
	ck, err := a.Checkpoint(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint32(100), ck.Pos.Pos, "the link resumes from before the refused change")

	// A restart while stopped: the refused change is tried again, still
	// refused, the table stays stopped, nothing is applied twice.
	a2 := e.applier(64)
	require.NoError(t, feed(a2, txns[1:]...))
	require.NotNil(t, a2.Status().Stopped)
	_, ok = e.get(4)
	require.False(t, ok)

	// The operator removes the local row; the link re-reads from before
	// the refused change.
	_, err = db.Exec("DELETE FROM " + schema.Quote(e.db) + ".items WHERE id = 900")
	require.NoError(t, err)
	a3 := e.applier(64)
	require.NoError(t, feed(a3, txns[1:]...))
	require.Nil(t, a3.Status().Stopped)
	for _, id := range []int64{1, 2, 4} {
		_, ok := e.get(id)
		require.True(t, ok, "%s row %d after the table resumed", e.db, id)
	}
	r3, _ = f.get(3)
	require.Equal(t, int64(33), r3.Qty, "the replayed insert of row 3 did not undo its later update")
	require.Equal(t, 2, f.count())
	require.Empty(t, f.conflicts(), "replayed changes are no conflicts")
	_, _, _, ok = e.stopRow(t)
	require.False(t, ok, "the stop is cleared")
	ck, err = a3.Checkpoint(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint32(500), ck.Pos.Pos)
}

// TestTableStopBecomesLinkStop: a later transaction that writes the
// stopped table and another one cannot be split: the link stops whole at
// the table's refused change (and resumes when it applies).
func TestTableStopBecomesLinkStop(t *testing.T) {
	defer func(r, p time.Duration) { stopRetry, stopPoll = r, p }(stopRetry, stopPoll)
	stopRetry, stopPoll = 300*time.Millisecond, 50*time.Millisecond
	e, f := tableStopEnvs(t, "t_tstop_link")
	txns := []*binlog.Txn{
		e.txn(1, e.ins(1, "a", 1, stamp(1, 1), peerOrigin)),
		e.txn(2, e.ins(2, "taken", 2, stamp(1, 2), peerOrigin)), // refused
		e.txn(3, f.ins(3, "x", 3, stamp(1, 3), peerOrigin)),
		e.txn(4, e.ins(4, "b", 4, stamp(1, 4), peerOrigin), f.ins(6, "z", 6, stamp(1, 7), peerOrigin)), // both tables
		e.txn(5, f.ins(5, "y", 5, stamp(1, 5), peerOrigin)),
	}
	a := e.applier(1) // one transaction per batch: the mixed one comes after the stop
	err := feed(a, txns...)
	require.ErrorIs(t, err, errTableRestart)
	scope, _, resume, ok := e.stopRow(t)
	require.True(t, ok)
	require.Equal(t, "link", scope)
	require.Equal(t, uint64(100), resume)
	_, ok = f.get(6)
	require.False(t, ok, "the mixed transaction is not applied in part")

	// Restarted from before the refused change, the link holds there.
	a2 := e.applier(1)
	done := make(chan error, 1)
	go func() { done <- feed(a2, txns[1:]...) }()
	require.Eventually(t, func() bool { s := a2.Status().Stopped; return s != nil && s.Scope == "link" }, 20*time.Second, 20*time.Millisecond)
	_, err = db.Exec("DELETE FROM " + schema.Quote(e.db) + ".items WHERE id = 900")
	require.NoError(t, err)
	select {
	case err := <-done:
		require.NoError(t, err)
	case <-time.After(30 * time.Second):
		t.Fatal("the link did not resume")
	}
	for _, id := range []int64{1, 2, 4} {
		_, ok := e.get(id)
		require.True(t, ok, "%s row %d", e.db, id)
	}
	require.Equal(t, 3, f.count())
	_, _, _, ok = e.stopRow(t)
	require.False(t, ok)
}
