package applier

import (
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/schema"
)

// A primary-key update arrives as a version of the new key plus the old
// key's tombstone (the update trigger writes it): each key is resolved
// against its own local state.

// TestMoveOntoConcurrentKey: the peer renames key 1 to 2 while this region
// inserted key 2: the rule decides key 2 (no duplicate-key error), key 1
// is gone.
func TestMoveOntoConcurrentKey(t *testing.T) {
	e := newEnv(t, "t_move_onto")
	s0 := stamp(0, 1)
	e.runAll(64, e.txn(1, e.ins(1, "m", 1, s0, peerOrigin)))
	e.local(stamp(2, 0), "INSERT INTO "+schema.Quote(e.db)+".items (id, name, qty) VALUES (2, 'mine', 7)")
	h := stamp(3, 0)
	u := e.upd(1, s0, peerOrigin, "moved", 1, h, peerOrigin)
	u.After["id"] = int64(2)
	old := e.del(1, s0, peerOrigin, h, peerOrigin)
	old.PrevUnknown = true
	e.runAll(64, e.txn(2, old, u))
	_, ok := e.get(1)
	require.False(t, ok, "the old key is removed")
	r, ok := e.get(2)
	require.True(t, ok)
	require.Equal(t, row{"moved", 1, h, peerOrigin}, r, "the later of the two versions of key 2 (lww)")
	require.Len(t, e.conflicts(), 1)
}

// TestMoveMeetsConcurrentUpdate: the peer renames key 1 to 2 while this
// region updated key 1 later: under lww the update beats the old key's
// tombstone here and, applied there, at the peer; both regions end with
// keys 1 and 2.
func TestMoveMeetsConcurrentUpdate(t *testing.T) {
	e := newEnv(t, "t_move_upd")
	s0 := stamp(0, 1)
	e.runAll(64, e.txn(1, e.ins(1, "m", 1, s0, peerOrigin)))
	e.local(stamp(5, 0), "UPDATE "+schema.Quote(e.db)+".items SET name = 'local' WHERE id = 1")
	h := stamp(1, 0)
	u := e.upd(1, s0, peerOrigin, "moved", 1, h, peerOrigin)
	u.After["id"] = int64(2)
	old := e.del(1, s0, peerOrigin, h, peerOrigin)
	old.PrevUnknown = true
	e.runAll(64, e.txn(2, old, u))
	r1, ok1 := e.get(1)
	r2, ok2 := e.get(2)
	require.True(t, ok1 && r1.Name == "local", "key 1: the later local update beats the move's tombstone: %v", r1)
	require.True(t, ok2 && r2.Name == "moved", "key 2: the moved row: %v", r2)
}

// TestOwnMoveForwardedBack: this region renamed key 1 to 2; a forwarding
// peer (star hub, ring) sends both versions back: nothing changes, no
// error.
func TestOwnMoveForwardedBack(t *testing.T) {
	e := newEnv(t, "t_move_back")
	q := schema.Quote(e.db) + ".items"
	e.local(stamp(10, 0), "INSERT INTO "+q+" (id, name, qty) VALUES (1, 'mine', 1)")
	e.local(stamp(11, 0), "UPDATE "+q+" SET id = 2 WHERE id = 1")
	var vv, tvv string
	var h, th uint64
	require.NoError(t, db.QueryRow("SELECT _mlr_hlc, _mlr_vv FROM "+q+" WHERE id = 2").Scan(&h, &vv))
	require.NoError(t, db.QueryRow("SELECT _mlr_hlc, _mlr_vv FROM mlr."+schema.Quote(schema.TombstoneTable(e.db, "items"))+" WHERE id = 1").Scan(&th, &tvv),
		"the update trigger wrote the old key's tombstone")
	u := e.upd(1, stamp(10, 0), self, "mine", 1, h, self)
	u.After["id"], u.Meta = int64(2), vv
	old := e.del(1, stamp(10, 0), self, th, self)
	old.PrevUnknown, old.Meta = true, tvv
	e.runAll(64, e.txn(1, e.ins(1, "mine", 1, stamp(10, 0), self)), e.txn(2, old, u))
	_, ok := e.get(1)
	require.False(t, ok, "the old key stays removed: its tombstone has seen the insert")
	r, ok := e.get(2)
	require.True(t, ok)
	require.Equal(t, "mine", r.Name)
	require.Empty(t, e.conflicts())
}
