package proxy

import "testing"

func TestCarryLimit(t *testing.T) {
	var l carryLimit
	n := 0
	for range 50 {
		if l.allow(100, 10) {
			n++
		}
	}
	if n != 10 {
		t.Errorf("second 100 allowed %d of 50 with a limit of 10", n)
	}
	if !l.allow(101, 10) {
		t.Error("the next second starts a new count")
	}
	var d carryLimit
	for i := range 1000 {
		if !d.allow(7, 0) {
			t.Fatalf("the default limit (1000) refused the %dth", i+1)
		}
	}
	if d.allow(7, 0) {
		t.Error("the default limit let the 1001st through")
	}
}
