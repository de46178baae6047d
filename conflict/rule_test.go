package conflict

import (
	"errors"
	"strings"
	"testing"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/hlc"
)

func TestNewRuleErrors(t *testing.T) {
	ids := map[string]uint16{"eu": 1, "us": 2}
	for _, c := range []struct {
		cfg  config.TableRule
		want string
	}{
		{config.TableRule{Rule: "counter"}, "needs columns"},
		{config.TableRule{Rule: "max"}, "needs columns"},
		{config.TableRule{Rule: "origin-priority"}, "needs a priority list"},
		{config.TableRule{Rule: "origin-priority", Priority: []string{"eu", "mars"}}, `unknown region "mars"`},
		{config.TableRule{Rule: "origin-priority", Priority: []string{"eu", "eu"}}, "twice"},
		{config.TableRule{Rule: "lww", Columns: []string{"n"}}, "only used by counter"},
		{config.TableRule{Rule: "counter", Columns: []string{"n"}, Priority: []string{"eu"}}, "only used by origin-priority"},
		{config.TableRule{Rule: "newest"}, "unknown conflict rule"},
	} {
		_, err := NewRule(c.cfg, ids)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%+v: err %v, want %q", c.cfg, err, c.want)
		}
	}
	if _, err := NewRule(config.TableRule{Rule: "newest"}, ids); !errors.Is(err, ErrUnknownRule) {
		t.Errorf("unknown rule: %v not ErrUnknownRule", err)
	}
	r, err := NewRule(config.TableRule{}, ids)
	if err != nil || r.Name() != "lww" {
		t.Fatalf("default rule: %v %v", r, err)
	}
}

func row(v int64) map[string]any { return map[string]any{"v": v, "n": v} }

func TestResolveCases(t *testing.T) {
	s := func(ms int64) hlc.Timestamp { return hlc.New(ms, 0) }
	v0 := Version{Exists: true, Stamp: s(10), Origin: 1, Row: row(1)}
	lww := mustRule(t, config.TableRule{})
	counter := mustRule(t, config.TableRule{Rule: "counter", Columns: []string{"n"}})
	fww := mustRule(t, config.TableRule{Rule: "first-writer-wins"})
	prio := mustRule(t, config.TableRule{Rule: "origin-priority", Priority: []string{"r1"}})
	manual := mustRule(t, config.TableRule{Rule: "manual"})
	upd := func(stamp hlc.Timestamp, origin uint16, prev Version, after int64) Change {
		return Change{Op: binlog.Update, Prev: prev, Stamp: stamp, Origin: origin, Row: row(after), Before: prev.Row}
	}
	concurrent := Version{Exists: true, Stamp: s(20), Origin: 2, Row: row(5)}
	tomb := Version{Deleted: true, Stamp: s(30), Origin: 3}
	for _, c := range []struct {
		name     string
		rule     Rule
		local    Version
		ch       Change
		conflict bool
		outcome  Outcome
		action   Action
		stamp    hlc.Timestamp
		n        any
	}{
		{"causal update applies", lww, v0, upd(s(20), 2, v0, 7), false, RemoteWon, WriteRow, s(20), int64(7)},
		{"concurrent older update loses", lww, concurrent, upd(s(15), 3, v0, 7), true, LocalWon, Nothing, 0, nil},
		{"concurrent newer update wins", lww, concurrent, upd(s(25), 3, v0, 7), true, RemoteWon, WriteRow, s(25), int64(7)},
		{"equal stamp: higher origin wins", lww, concurrent, upd(s(20), 3, v0, 7), true, RemoteWon, WriteRow, s(20), int64(7)},
		{"equal stamp: lower origin loses", lww, concurrent, upd(s(20), 1, v0, 7), true, LocalWon, Nothing, 0, nil},
		{"update meets later tombstone", lww, tomb, upd(s(25), 2, v0, 7), true, LocalWon, Nothing, 0, nil},
		{"update after tombstone wins", lww, tomb, upd(s(35), 2, v0, 7), true, RemoteWon, WriteRow, s(35), int64(7)},
		{"delete meets newer row", lww, concurrent, Change{Op: binlog.Delete, Prev: v0, Stamp: s(15), Origin: 3, Before: v0.Row}, true, LocalWon, Nothing, 0, nil},
		{"delete meets older row", lww, concurrent, Change{Op: binlog.Delete, Prev: v0, Stamp: s(25), Origin: 3, Before: v0.Row}, true, RemoteWon, WriteDelete, s(25), nil},
		{"update of a row never seen: insert", lww, Version{}, upd(s(20), 2, v0, 7), false, RemoteWon, WriteRow, s(20), int64(7)},
		{"insert meets row", lww, concurrent, Change{Op: binlog.Insert, Stamp: s(22), Origin: 1, Row: row(9)}, true, RemoteWon, WriteRow, s(22), int64(9)},
		{"re-insert after tombstone", lww, tomb, Change{Op: binlog.Insert, Stamp: s(40), Origin: 1, Row: row(9)}, false, RemoteWon, WriteRow, s(40), int64(9)},
		{"prev unknown is never causal", lww, concurrent, Change{Op: binlog.Delete, PrevUnknown: true, Stamp: s(15), Origin: 3}, true, LocalWon, Nothing, 0, nil},
		{"counter merges delta, keeps newer stamp", counter, concurrent, upd(s(15), 3, v0, 4), true, Merged, WriteRow, s(20), int64(8)},
		{"counter causal applies delta", counter, v0, upd(s(15), 3, v0, 4), false, RemoteWon, WriteRow, s(15), int64(4)},
		{"counter update of unseen row: delta only", counter, Version{}, upd(s(15), 3, v0, 4), false, RemoteWon, WriteRow, s(15), int64(3)},
		{"fww: older concurrent wins", fww, concurrent, upd(s(15), 3, v0, 7), true, RemoteWon, WriteRow, s(15), int64(7)},
		{"fww: causal successor applies", fww, v0, upd(s(20), 2, v0, 7), false, RemoteWon, WriteRow, s(20), int64(7)},
		{"priority: ranked origin wins though older", prio, concurrent, upd(s(15), 1, v0, 7), true, RemoteWon, WriteRow, s(15), int64(7)},
		{"priority: unranked origins by stamp", prio, concurrent, upd(s(15), 3, v0, 7), true, LocalWon, Nothing, 0, nil},
		{"manual: conflict pending", manual, concurrent, upd(s(25), 3, v0, 7), true, Pending, Nothing, 0, nil},
		{"manual: causal applies", manual, v0, upd(s(25), 3, v0, 7), false, RemoteWon, WriteRow, s(25), int64(7)},
	} {
		d := c.rule.Resolve(c.local, c.ch)
		if d.Conflict != c.conflict || d.Outcome != c.outcome || d.Write.Action != c.action || d.Write.Stamp != c.stamp {
			t.Errorf("%s: got %+v (outcome %s)", c.name, d, d.Outcome)
			continue
		}
		if c.action == WriteRow && d.Write.Row["n"] != c.n {
			t.Errorf("%s: n = %v, want %v", c.name, d.Write.Row["n"], c.n)
		}
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
	if _, ok := sum("abc", int64(1)); ok {
		t.Error("non-numeric sum reported ok")
	}
	if c, ok := compare("2025-01-02 00:00:00", "2024-12-31 23:59:59"); !ok || c <= 0 {
		t.Errorf("temporal compare = %d %v", c, ok)
	}
}
