package conflict

import (
	"errors"
	"strings"
	"testing"

	"github.com/mlproxy/mlproxy/change"
	"github.com/mlproxy/mlproxy/hlc/stamp"
)

func TestNewRuleErrors(t *testing.T) {
	for _, c := range []struct {
		spec Spec
		want string
	}{
		{Spec{Name: "counter"}, "needs columns"},
		{Spec{Name: "max"}, "needs columns"},
		{Spec{Name: "origin-priority"}, "needs a priority list"},
		{Spec{Name: "origin-priority", Priority: []uint16{1, 1}}, "twice"},
		{Spec{Name: "lww", Columns: []string{"n"}}, "only used by counter"},
		{Spec{Name: "counter", Columns: []string{"n"}, Priority: []uint16{1}}, "only used by origin-priority"},
		{Spec{Name: "newest", Where: "table rule shop.t (line 7)"}, "line 7"},
	} {
		_, err := NewRule(c.spec)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: err %v, want %q", c.spec, err, c.want)
		}
	}
	if _, err := NewRule(Spec{Name: "newest"}); !errors.Is(err, ErrUnknownRule) {
		t.Errorf("unknown rule: %v not ErrUnknownRule", err)
	}
	if r, err := NewRule(Spec{}); err != nil || r.Name() != "lww" {
		t.Fatalf("default rule: %v %v", r, err)
	}
}

func s(ms int64) stamp.Timestamp { return stamp.New(ms, 0) }

func row(v string, n int64) map[string]any { return map[string]any{"v": v, "n": n} }

func vv(kv ...uint64) change.Vector {
	m := change.Vector{}
	for i := 0; i+1 < len(kv); i += 2 {
		m[uint16(kv[i])] = kv[i+1]
	}
	return m
}

// TestResolveByVector: the vectors alone tell causally later from already
// seen from concurrent, whatever the stamps say.
func TestResolveByVector(t *testing.T) {
	lww := mustRule(t, Spec{})
	base := Version{Exists: true, Stamp: s(10), Origin: 1, Row: row("a", 1), Meta: change.Meta{VV: vv(1, uint64(s(10)))}, Home: 2}
	later := Version{Exists: true, Stamp: s(5), Origin: 3, Row: row("b", 2), Meta: change.Meta{VV: vv(1, uint64(s(10)), 3, uint64(s(5)))}, Home: 3}
	if d := lww.Resolve(base, later); d.Conflict || d.Outcome != RemoteWon || d.Write.Row["v"] != "b" {
		t.Errorf("causally later with a lower stamp: %+v", d)
	}
	if d := lww.Resolve(later, base); d.Write.Action != Nothing || d.Conflict {
		t.Errorf("already seen: %+v", d)
	}
	if d := lww.Resolve(base, base); d.Write.Action != Nothing {
		t.Errorf("same version: %+v", d)
	}
	other := Version{Exists: true, Stamp: s(20), Origin: 2, Row: row("c", 3), Meta: change.Meta{VV: vv(2, uint64(s(20)))}, Home: 2}
	d := lww.Resolve(other, later)
	if !d.Conflict || d.Outcome != LocalWon || d.Write.Action != WriteRow || d.Write.Row["v"] != "c" {
		t.Fatalf("concurrent, local newer: %+v", d)
	}
	if got := d.Write.Meta.VV; got.Compare(other.Meta.VV.Join(later.Meta.VV)) != change.Equal {
		t.Errorf("merged vector %v, want the join", got)
	}
}

// TestCounterDeleteRacesIncrement pins the documented semantics: the
// higher stamp decides whether the row exists, no increment is lost.
func TestCounterDeleteRacesIncrement(t *testing.T) {
	c := mustRule(t, Spec{Name: "counter", Columns: []string{"n"}})
	// Region 1 inserted n=10 (stamp 10); regions 1 and 2 both have it.
	// Region 2 adds 5 (stamp 20); region 1 concurrently deletes (stamp 15).
	// Region 2 stores region 1's part explicitly (its applier wrote it).
	inc := Version{Exists: true, Stamp: s(20), Origin: 2, Row: row("a", 15), Home: 2, Meta: change.Meta{
		VV: vv(1, uint64(s(10)), 2, uint64(s(20))), Contrib: map[string]map[uint16]string{"n": {1: "10"}}}}
	del := Version{Deleted: true, Stamp: s(15), Origin: 1, Meta: change.Meta{VV: vv(1, uint64(s(15))), Values: map[string]any{"n": int64(10)}}, Home: 1}

	// At region 1 (holding the tombstone) the later increment wins: the
	// row comes back with every increment.
	d := c.Resolve(del, inc)
	if !d.Conflict || d.Write.Action != WriteRow || numText(d.Write.Row["n"]) != "15" {
		t.Fatalf("increment after the delete: %+v", d)
	}
	// At region 2 the same.
	d2 := c.Resolve(inc, del)
	if d2.Write.Action != WriteRow || numText(d2.Write.Row["n"]) != "15" {
		t.Fatalf("delete arriving after the increment: %+v", d2)
	}

	// A delete stamped after the increment wins; the increment is kept in
	// the tombstone, and a re-insert at region 1 sets the value.
	late := del
	late.Stamp = s(30)
	late.Meta = change.Meta{VV: vv(1, uint64(s(30))), Values: map[string]any{"n": int64(10)}}
	d = c.Resolve(late, inc)
	if d.Write.Action != WriteDelete {
		t.Fatalf("later delete: %+v", d)
	}
	tomb := d.Write.Version(1)
	if got := tomb.Meta.Values["n"]; numText(got) != "15" {
		t.Errorf("tombstone keeps the merged total: %v", got)
	}
	// Re-insert n=100 at region 1 (the trigger inherits the tombstone's
	// metadata without "m"): the value is 100, and region 2's +5 stays
	// with the contributions the row inherited.
	re := Version{Exists: true, Stamp: s(40), Origin: 1, Row: row("b", 100), Home: 1,
		Meta: change.Meta{VV: tomb.Meta.VV.Join(vv(1, uint64(s(40)))), Contrib: tomb.Meta.Contrib}}
	got := contributions(re, "n")
	if total, _ := sumAll(got); total != 100 {
		t.Errorf("re-inserted row's contributions %v sum to %d, want 100", got, total)
	}
	// Region 2, which still holds inc, converges to the re-insert.
	if d := c.Resolve(inc, re); numText(d.Write.Row["n"]) != "100" {
		t.Errorf("region 2 after the re-insert: %+v", d)
	}
}

// TestOriginPriorityRanks: the version that has seen the later writes of
// the higher-ranked region wins, also when it was written elsewhere.
func TestOriginPriorityRanks(t *testing.T) {
	op := mustRule(t, Spec{Name: "origin-priority", Priority: []uint16{2, 1}})
	a := Version{Exists: true, Stamp: s(30), Origin: 1, Row: row("by1", 0), Meta: change.Meta{VV: vv(1, uint64(s(30)))}, Home: 1}
	b := Version{Exists: true, Stamp: s(20), Origin: 2, Row: row("by2", 0), Meta: change.Meta{VV: vv(2, uint64(s(20)))}, Home: 2}
	if d := op.Resolve(a, b); d.Outcome != RemoteWon || d.Write.Row["v"] != "by2" {
		t.Errorf("region 2 outranks region 1: %+v", d)
	}
	if d := op.Resolve(b, a); d.Outcome != LocalWon || d.Write.Row["v"] != "by2" {
		t.Errorf("region 2 keeps its version: %+v", d)
	}
	// The merged version ranks as b did, by b's own vector.
	m := op.Resolve(a, b).Write.Version(1)
	if m.Meta.Own.Compare(b.Meta.VV) != change.Equal {
		t.Errorf("merged version's own vector %v, want %v", m.Meta.Own, b.Meta.VV)
	}
}

func TestMetaRoundTrip(t *testing.T) {
	m := change.Meta{VV: vv(1, 5, 3, 7), Birth: change.Birth{Stamp: 4, Origin: 1},
		Contrib: map[string]map[uint16]string{"n": {2: "-3", 3: "1.50"}}, Values: map[string]any{"n": "10", "d": nil}, Own: vv(3, 7)}
	enc := m.Encode()
	if enc != `{"1":5,"3":7,"b":[4,1],"c":{"n":{"2":-3,"3":1.50}},"m":{"d":null,"n":"10"},"w":{"3":7}}` {
		t.Errorf("encoding %s", enc)
	}
	back, err := change.ParseMeta(enc)
	if err != nil || back.Encode() != enc {
		t.Errorf("round trip: %v %s", err, back.Encode())
	}
	// What the triggers write (JSON_COMPACT of JSON_SET) parses too.
	if got, err := change.ParseMeta([]byte(`{"2":11,"1":9}`)); err != nil || got.VV[2] != 11 || got.VV[1] != 9 {
		t.Errorf("trigger metadata: %v %v", got, err)
	}
	if _, err := change.ParseMeta("{not json"); err == nil {
		t.Error("bad metadata parsed")
	}
}

func TestNumeric(t *testing.T) {
	if got, _ := sum("10.50", "0.125"); got != "10.625" {
		t.Errorf("decimal sum = %v", got)
	}
	if got, _ := delta(uint64(10), int64(3)); got != int64(7) {
		t.Errorf("delta = %#v", got)
	}
	if got, _ := sum(nil, int64(3)); got != int64(3) {
		t.Errorf("NULL + 3 = %#v", got)
	}
	if got, _ := sum("7", int64(3)); got != int64(10) {
		t.Errorf("integer text + 3 = %#v", got)
	}
	if _, ok := sum("abc", int64(1)); ok {
		t.Error("non-numeric sum reported ok")
	}
	if c, ok := compare("2025-01-02 00:00:00", "2024-12-31 23:59:59"); !ok || c <= 0 {
		t.Errorf("temporal compare = %d %v", c, ok)
	}
}
