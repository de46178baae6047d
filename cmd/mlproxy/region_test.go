package main

import "testing"

func TestGTIDBehind(t *testing.T) {
	for _, c := range []struct{ pos, have, want string }{
		{"1-1-10", "1-1-10", ""},
		{"1-1-10", "1-1-12", ""},
		{"1-1-10,3-3-5", "1-1-7", "3 transactions of domain 1 (8 to 10), 5 transactions of domain 3 (1 to 5)"},
		{"", "1-1-7", ""},
		{"1-1-x", "", `binlog position "1-1-x": GTID "1-1-x": strconv.ParseUint: parsing "x": invalid syntax`},
	} {
		if got := gtidBehind(c.pos, c.have); got != c.want {
			t.Errorf("gtidBehind(%q, %q) = %q, want %q", c.pos, c.have, got, c.want)
		}
	}
}
