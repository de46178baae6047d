package proxy

import (
	"strings"
	"testing"
	"unicode/utf8"
)

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

func TestValidText(t *testing.T) {
	long := strings.Repeat("列", 400) // 3 bytes each
	for _, max := range []int{1024, 1023, 1022, 10, 1} {
		got := validText(long, max)
		if len(got) > max || !utf8.ValidString(got) || !strings.HasPrefix(long, got) {
			t.Errorf("validText(1200 bytes of 列, %d) = %d bytes, valid %v", max, len(got), utf8.ValidString(got))
		}
	}
	if got := validText("a\xffb", 10); got != "a\uFFFDb" {
		t.Errorf("invalid byte: got %q", got)
	}
}
