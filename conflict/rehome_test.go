package conflict

import (
	"testing"

	"github.com/mlproxy/mlproxy/change"
)

// TestRehome: eu (1) stores qty 10 = eu 7 + us 3 (us's share explicit).
// Copied to ap (3), eu's share becomes explicit and ap's implicit (0).
func TestRehome(t *testing.T) {
	m := change.Meta{VV: change.Vector{1: 5, 2: 4}, Contrib: map[string]map[uint16]string{"qty": {2: "3"}}}
	got := Rehome(m, map[string]any{"qty": []byte("10")}, false, []string{"qty"}, 1, 3)
	if c := got.Contrib["qty"]; len(c) != 2 || c[1] != "7" || c[2] != "3" {
		t.Errorf("rehomed contributions = %v; want eu 7 and us 3", got.Contrib)
	}
	if m.Contrib["qty"][1] != "" {
		t.Error("Rehome changed its argument")
	}
	// A reseed of us (2) from eu: us's share, explicit at eu, becomes
	// implicit again; eu's explicit.
	back := Rehome(m, map[string]any{"qty": []byte("10")}, false, []string{"qty"}, 1, 2)
	if c := back.Contrib["qty"]; len(c) != 1 || c[1] != "7" {
		t.Errorf("reseeded contributions = %v; want eu 7 only", back.Contrib)
	}
	// A tombstone keeps the value in Values.
	tomb := change.Meta{VV: change.Vector{1: 5}, Values: map[string]any{"qty": "4.50"}}
	got = Rehome(tomb, nil, true, []string{"qty"}, 1, 3)
	if c := got.Contrib["qty"]; c[1] != "4.50" {
		t.Errorf("tombstone contributions = %v; want eu 4.50", got.Contrib)
	}
}
