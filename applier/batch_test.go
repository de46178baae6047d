package applier

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/schema"
)

// tableState is everything apply leaves behind for a test table: rows,
// tombstones and conflict log entries (peer ids left out: each env has its
// own peer).
type tableState struct {
	Rows      map[int64]row
	Tombs     map[int64][2]uint64
	Conflicts []conflictRow
}

func (e *env) state() tableState {
	e.t.Helper()
	s := tableState{Rows: map[int64]row{}, Tombs: map[int64][2]uint64{}}
	rs, err := db.Query("SELECT id, name, qty, _mlr_hlc, _mlr_origin FROM " + schema.Quote(e.db) + ".items")
	require.NoError(e.t, err)
	for rs.Next() {
		var id int64
		var r row
		require.NoError(e.t, rs.Scan(&id, &r.Name, &r.Qty, &r.HLC, &r.Origin))
		s.Rows[id] = r
	}
	require.NoError(e.t, rs.Err())
	rs.Close()
	rs, err = db.Query("SELECT id, _mlr_hlc, _mlr_origin FROM mlr." + schema.Quote(schema.TombstoneTable(e.db, "items")))
	require.NoError(e.t, err)
	for rs.Next() {
		var id int64
		var h, o uint64
		require.NoError(e.t, rs.Scan(&id, &h, &o))
		s.Tombs[id] = [2]uint64{h, o}
	}
	require.NoError(e.t, rs.Err())
	rs.Close()
	for _, c := range e.conflicts() {
		c.PeerID = 0
		s.Conflicts = append(s.Conflicts, c)
	}
	return s
}

// oneByOne splits txns into one source transaction per change, applied
// one local commit each: every change is then its own segment, which is
// how the applier applied rows before set-based apply.
func (e *env) oneByOne(txns []*binlog.Txn) []*binlog.Txn {
	var out []*binlog.Txn
	for _, t := range txns {
		for _, c := range t.Changes {
			out = append(out, e.txn(uint64(len(out)+100), c))
		}
	}
	return out
}

// setBasedScenario builds a local state, then a batch that touches keys
// several times: updates chained within the batch, delete then re-insert
// (of a key that existed and of one that did not), concurrent versions on
// both sides of a local write and a local delete, tombstones arriving out
// of order, and a primary key move followed by an update of the new key.
func setBasedScenario(t *testing.T, e *env) (pre func(), batch []*binlog.Txn) {
	s0 := stamp(0, 1)
	s := func(n int64) uint64 { return stamp(n, 0) }
	pre = func() {
		e.runAll(64, e.txn(1, e.ins(2, "old", 1, s0, peerOrigin), e.ins(4, "base", 1, s0, peerOrigin), e.ins(5, "base", 1, s0, peerOrigin)))
		e.local(s(10), "UPDATE "+schema.Quote(e.db)+".items SET qty = 100 WHERE id = 4")
		e.local(s(10), "DELETE FROM "+schema.Quote(e.db)+".items WHERE id = 5")
	}
	move := e.upd(7, s(1), peerOrigin, "moved", 1, s(2), peerOrigin)
	move.After["id"] = int64(8)
	moved := e.del(7, s(1), peerOrigin, s(2), peerOrigin) // the old key's tombstone
	moved.PrevUnknown = true
	batch = []*binlog.Txn{
		e.txn(2, e.ins(1, "a", 1, s(1), peerOrigin), e.upd(1, s(1), peerOrigin, "b", 2, s(2), peerOrigin)),
		e.txn(3, e.upd(1, s(2), peerOrigin, "c", 3, s(3), peerOrigin), e.del(2, s0, peerOrigin, s(4), peerOrigin)),
		e.txn(4, e.ins(2, "again", 9, s(5), peerOrigin), e.ins(3, "x", 1, s(1), peerOrigin), e.del(3, s(1), peerOrigin, s(2), peerOrigin)),
		e.txn(5, e.ins(3, "y", 2, s(3), peerOrigin),
			e.upd(4, s0, peerOrigin, "r", 7, s(5), peerOrigin),      // concurrent, older than the local write
			e.upd(4, s(5), peerOrigin, "r2", 8, s(20), peerOrigin)), // concurrent, newer
		e.txn(6, e.upd(5, s0, peerOrigin, "u", 1, s(5), peerOrigin), // older than the local delete
			e.ins(5, "re", 2, s(30), peerOrigin)), // re-insert after it
		e.txn(7, e.del(6, s0, peerOrigin, s(8), peerOrigin), e.del(6, s0, 9, s(7), 9), e.del(6, s0, 9, s(8), 9)),
		e.txn(8, e.ins(7, "m", 1, s(1), peerOrigin), moved, move, e.upd(8, s(2), peerOrigin, "m2", 2, s(3), peerOrigin)),
		e.txn(9, e.del(1, s(3), peerOrigin, s(9), peerOrigin), e.ins(1, "back", 4, s(9), 9), e.upd(1, s(9), 9, "back2", 5, s(11), peerOrigin)),
	}
	return pre, batch
}

// TestSetBasedMatchesOneByOne applies the same batch set-based and one
// change at a time: the tables and the conflict log must end the same.
func TestSetBasedMatchesOneByOne(t *testing.T) {
	set := newEnv(t, "t_setbased")
	pre, batch := setBasedScenario(t, set)
	pre()
	a := set.runAll(64, batch...)

	one := newEnv(t, "t_onebyone")
	pre1, batch1 := setBasedScenario(t, one)
	pre1()
	one.runAll(1, one.oneByOne(batch1)...)

	got, want := set.state(), one.state()
	require.Equal(t, want, got)

	// Spot checks of what one-by-one apply leaves, so the comparison is
	// not between two equally wrong results.
	require.Equal(t, row{"back2", 5, stamp(11, 0), peerOrigin}, got.Rows[1])
	require.Equal(t, [2]uint64{stamp(9, 0), peerOrigin}, got.Tombs[1])
	require.Equal(t, row{"again", 9, stamp(5, 0), peerOrigin}, got.Rows[2])
	require.Equal(t, [2]uint64{stamp(4, 0), peerOrigin}, got.Tombs[2], "deleted then re-inserted: the tombstone stays")
	require.Equal(t, row{"y", 2, stamp(3, 0), peerOrigin}, got.Rows[3])
	require.Equal(t, row{"r2", 8, stamp(20, 0), peerOrigin}, got.Rows[4])
	require.Equal(t, row{"re", 2, stamp(30, 0), peerOrigin}, got.Rows[5])
	require.Equal(t, [2]uint64{stamp(8, 0), 9}, got.Tombs[6], "a tombstone only moves forward; ties break by origin")
	_, ok := got.Rows[7]
	require.False(t, ok)
	require.Equal(t, row{"m2", 2, stamp(3, 0), peerOrigin}, got.Rows[8])
	require.NotEmpty(t, got.Conflicts)
	require.Equal(t, "local_won", got.Conflicts[0].Outcome)
	require.Equal(t, "[4]", got.Conflicts[0].PK)

	st := a.Status()
	var n uint64
	for _, tx := range batch {
		n += uint64(len(tx.Changes))
	}
	require.Equal(t, n, st.Rows)
	require.Equal(t, uint64(len(got.Conflicts)), st.Conflicts)
}

// TestSetBasedCounterChain: under counter, several changes to one row in
// one batch each add their delta to the value the previous one left.
func TestSetBasedCounterChain(t *testing.T) {
	rule := config.TableRule{Table: "items", Rule: "counter", Columns: []string{"qty"}}
	run := func(e *env, split bool) tableState {
		s0 := stamp(0, 1)
		e.runAll(64, e.txn(1, e.ins(1, "c", 10, s0, peerOrigin)))
		e.local(stamp(10, 0), "UPDATE "+schema.Quote(e.db)+".items SET qty = qty + 5 WHERE id = 1")
		u1 := e.upd(1, s0, peerOrigin, "c", 13, stamp(5, 0), peerOrigin) // +3, concurrent
		u1.Before["qty"], u1.Before["name"] = int64(10), "c"
		u2 := e.upd(1, stamp(5, 0), peerOrigin, "c", 20, stamp(6, 0), peerOrigin) // +7
		u2.Before["qty"], u2.Before["name"] = int64(13), "c"
		batch := []*binlog.Txn{e.txn(2, u1), e.txn(3, u2)}
		if split {
			e.runAll(1, e.oneByOne(batch)...)
		} else {
			e.runAll(64, batch...)
		}
		return e.state()
	}
	got := run(newEnvRule(t, "t_setcounter", rule), false)
	want := run(newEnvRule(t, "t_onecounter", rule), true)
	require.Equal(t, want, got)
	require.Equal(t, int64(25), got.Rows[1].Qty)
}

// TestSetBasedUniqueSwap swaps a secondary unique value between two rows
// through a third value within one batch: the net multi-row write collides
// where one-by-one apply does not, so the batch is applied again one
// change at a time and ends as one-by-one apply would.
func TestSetBasedUniqueSwap(t *testing.T) {
	e := newEnv(t, "t_uniqswap")
	_, err := db.Exec("ALTER TABLE " + schema.Quote(e.db) + ".items ADD UNIQUE KEY (name)")
	require.NoError(t, err)
	s0 := stamp(0, 1)
	e.runAll(64, e.txn(1, e.ins(1, "a", 1, s0, peerOrigin), e.ins(2, "b", 1, s0, peerOrigin)))
	a := e.runAll(64,
		e.txn(2, e.upd(1, s0, peerOrigin, "tmp", 1, stamp(1, 0), peerOrigin)),
		e.txn(3, e.upd(2, s0, peerOrigin, "a", 1, stamp(2, 0), peerOrigin)),
		e.txn(4, e.upd(1, stamp(1, 0), peerOrigin, "b", 1, stamp(3, 0), peerOrigin)),
	)
	r, _ := e.get(1)
	require.Equal(t, row{"b", 1, stamp(3, 0), peerOrigin}, r)
	r, _ = e.get(2)
	require.Equal(t, row{"a", 1, stamp(2, 0), peerOrigin}, r)
	require.Equal(t, uint64(3), a.Status().Rows, "rows counted once")
	ck, err := a.Checkpoint(t.Context())
	require.NoError(t, err)
	require.Equal(t, uint64(4), ck.Txns)
}
