package skew

import (
	"strings"
	"testing"
	"time"
)

func monitorWith(now time.Time, offsets map[string]time.Duration, stale ...string) *Monitor {
	m := New(Options{Now: func() time.Time { return now }, MaxOffset: 500 * time.Millisecond})
	for name, off := range offsets {
		at := now
		for _, s := range stale {
			if s == name {
				at = now.Add(-time.Minute)
			}
		}
		m.read[name] = Reading{Peer: name, offset: off, MeasuredAt: at, at: time.Now().Add(at.Sub(now))}
	}
	return m
}

func TestFenceNeedsAStrictMajorityOfAllPeers(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	cases := []struct {
		name    string
		offsets map[string]time.Duration
		stale   []string
		peers   int
		fenced  bool
	}{
		{"ahead of both peers", map[string]time.Duration{"us": 10 * time.Second, "ap": 9 * time.Second}, nil, 2, true},
		{"ahead of one of two (that one is slow)", map[string]time.Duration{"us": 10 * time.Second, "ap": 100 * time.Millisecond}, nil, 2, false},
		{"within max_offset", map[string]time.Duration{"us": 400 * time.Millisecond, "ap": 450 * time.Millisecond}, nil, 2, false},
		{"behind everyone", map[string]time.Duration{"us": -10 * time.Second, "ap": -10 * time.Second}, nil, 2, false},
		{"a stale reading does not count", map[string]time.Duration{"us": 10 * time.Second, "ap": 10 * time.Second}, []string{"ap"}, 2, false},
		{"partitioned: no readings", nil, nil, 2, false},
		{"one peer, ahead of it", map[string]time.Duration{"us": time.Second}, nil, 1, true},
		{"three of four", map[string]time.Duration{"a": time.Second, "b": time.Second, "c": time.Second, "d": 0}, nil, 4, true},
		{"two of four is no majority", map[string]time.Duration{"a": time.Second, "b": time.Second, "c": 0, "d": 0}, nil, 4, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			m := monitorWith(now, tc.offsets, tc.stale...)
			m.decide(tc.peers)
			why := m.Fenced()
			if (why != "") != tc.fenced {
				t.Fatalf("fenced = %q, want fenced %v", why, tc.fenced)
			}
			if tc.fenced && !strings.Contains(why, "clock.max_offset") {
				t.Errorf("reason %q does not name clock.max_offset", why)
			}
		})
	}
}

func TestFenceLiftsWhenBackWithinBounds(t *testing.T) {
	now := time.Unix(1_800_000_000, 0)
	m := monitorWith(now, map[string]time.Duration{"us": 10 * time.Second, "ap": 10 * time.Second})
	m.decide(2)
	if m.Fenced() == "" || !m.Status().Fenced {
		t.Fatal("not fenced 10s ahead of both peers")
	}
	m.read["us"] = Reading{Peer: "us", offset: 0, MeasuredAt: now, at: time.Now()}
	m.decide(2)
	if why := m.Fenced(); why != "" {
		t.Fatalf("still fenced after one peer agrees: %s", why)
	}
}

func TestParseUnix(t *testing.T) {
	for in, want := range map[string]time.Time{
		"1733520000.123456": time.Unix(1733520000, 123456000),
		"1733520000.5":      time.Unix(1733520000, 500000000),
		"1733520000":        time.Unix(1733520000, 0),
	} {
		got, err := parseUnix(in)
		if err != nil || !got.Equal(want) {
			t.Errorf("parseUnix(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	if _, err := parseUnix("soon"); err == nil {
		t.Error("parseUnix(soon) gave no error")
	}
}
