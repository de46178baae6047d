package conflict

import (
	"errors"
	"fmt"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/config"
)

// ErrUnknownRule names a rule that does not exist.
var ErrUnknownRule = errors.New("unknown conflict rule (want lww, first-writer-wins, origin-priority, counter, max, min or manual)")

// mergeKind is how a merge rule combines its named columns.
type mergeKind uint8

const (
	noMerge mergeKind = iota
	mergeCounter
	mergeMax
	mergeMin
)

// rule implements every Rule; the fields select the behaviour.
type rule struct {
	name string
	// beats reports whether version a wins a conflict against version b
	// (rows and tombstones alike).
	beats func(a, b Version) bool
	merge mergeKind
	cols  []string
	// manual keeps local on every conflict, with Outcome Pending.
	manual bool
}

// NewRule compiles a table's configured rule. regionIDs maps region names to
// ids (for origin-priority).
func NewRule(cfg config.TableRule, regionIDs map[string]uint16) (Rule, error) {
	name := cfg.Rule
	if name == "" {
		name = "lww"
	}
	where := fmt.Sprintf("table rule %s.%s (line %d)", cfg.Schema, cfg.Table, cfg.Line)
	r := &rule{name: name, beats: lwwBeats}
	switch name {
	case "lww", "manual":
		r.manual = name == "manual"
	case "first-writer-wins":
		r.beats = fwwBeats
	case "origin-priority":
		if len(cfg.Priority) == 0 {
			return nil, fmt.Errorf("%s: origin-priority needs a priority list of region names, highest first", where)
		}
		rank := make(map[uint16]int, len(cfg.Priority))
		for i, region := range cfg.Priority {
			id, ok := regionIDs[region]
			if !ok {
				return nil, fmt.Errorf("%s: priority names unknown region %q", where, region)
			}
			if _, dup := rank[id]; dup {
				return nil, fmt.Errorf("%s: priority names region %q twice", where, region)
			}
			rank[id] = len(cfg.Priority) - i // unlisted regions rank 0
		}
		r.beats = func(a, b Version) bool {
			if ra, rb := rank[a.Origin], rank[b.Origin]; ra != rb {
				return ra > rb
			}
			return lwwBeats(a, b)
		}
	case "counter", "max", "min":
		if len(cfg.Columns) == 0 {
			return nil, fmt.Errorf("%s: rule %s needs columns: the numeric columns to merge", where, name)
		}
		r.merge = map[string]mergeKind{"counter": mergeCounter, "max": mergeMax, "min": mergeMin}[name]
		r.cols = append([]string(nil), cfg.Columns...)
	default:
		return nil, fmt.Errorf("%s: rule %q: %w", where, name, ErrUnknownRule)
	}
	if len(cfg.Priority) > 0 && name != "origin-priority" {
		return nil, fmt.Errorf("%s: priority is only used by origin-priority, not %s", where, name)
	}
	if len(cfg.Columns) > 0 && r.merge == noMerge {
		return nil, fmt.Errorf("%s: columns are only used by counter, max and min, not %s", where, name)
	}
	return r, nil
}

func (r *rule) Name() string { return r.name }

func lwwBeats(a, b Version) bool { return newer(a.Stamp, a.Origin, b.Stamp, b.Origin) }

// fwwBeats: the lower stamp wins; equal stamps break by higher origin.
func fwwBeats(a, b Version) bool {
	if a.Stamp != b.Stamp {
		return a.Stamp < b.Stamp
	}
	return a.Origin > b.Origin
}

// Resolve decides what remote does to local. See the package doc for the
// shared decisions; the rule adds its order and merge.
func (r *rule) Resolve(local Version, ch Change) Decision {
	remote := Version{Exists: ch.Op != binlog.Delete, Deleted: ch.Op == binlog.Delete, Stamp: ch.Stamp, Origin: ch.Origin, Row: ch.Row}
	keep := Decision{Outcome: LocalWon}
	if !local.Absent() && local.Stamp == ch.Stamp && local.Origin == ch.Origin {
		return keep // this very version is already here
	}
	causal := !ch.PrevUnknown && sameVersion(local, ch.Prev)

	if ch.Op == binlog.Delete {
		switch {
		case !local.Exists: // no row: keep the tombstone the rule orders first, no conflict
			if local.Deleted && !r.beats(remote, local) {
				return keep
			}
			return remoteWon(remote, false)
		case causal:
			return remoteWon(remote, false)
		}
		return r.conflict(local, remote)
	}

	switch {
	case local.Absent():
		// Nothing here: apply (an update of a row never seen, as an insert).
		return remoteWon(Version{Exists: true, Stamp: ch.Stamp, Origin: ch.Origin, Row: r.onAbsent(ch)}, false)
	case local.Deleted:
		if ch.Op == binlog.Insert && lwwBeats(remote, local) {
			return remoteWon(remote, false) // re-insert after the delete
		}
		return r.conflict(local, remote)
	case causal:
		if r.merge != noMerge {
			return remoteWon(Version{Exists: true, Stamp: ch.Stamp, Origin: ch.Origin, Row: r.mergeRow(local, ch)}, false)
		}
		return remoteWon(remote, false)
	}
	// Two row versions, concurrent.
	if r.merge != noMerge && !r.manual {
		w := local
		if lwwBeats(remote, local) {
			w = remote
		}
		return Decision{Conflict: true, Outcome: Merged, Write: Write{Action: WriteRow, Row: r.mergeRow(local, ch), Stamp: w.Stamp, Origin: w.Origin}}
	}
	return r.conflict(local, remote)
}

// conflict settles two concurrent versions by the rule's order (or leaves
// it to an operator).
func (r *rule) conflict(local, remote Version) Decision {
	switch {
	case r.manual:
		return Decision{Conflict: true, Outcome: Pending}
	case r.beats(remote, local):
		return remoteWon(remote, true)
	}
	return Decision{Conflict: true, Outcome: LocalWon}
}

func remoteWon(v Version, conflict bool) Decision {
	w := Write{Action: WriteRow, Row: copyRow(v.Row), Stamp: v.Stamp, Origin: v.Origin}
	if v.Deleted {
		w = Write{Action: WriteDelete, Stamp: v.Stamp, Origin: v.Origin}
	}
	return Decision{Conflict: conflict, Outcome: RemoteWon, Write: w}
}

// onAbsent is the row an insert or update writes where nothing is known. A
// counter update contributes only its delta (after - before): the row it
// updated has not arrived yet and will add its own value when it does.
func (r *rule) onAbsent(ch Change) map[string]any {
	row := copyRow(ch.Row)
	if r.merge == mergeCounter && ch.Op == binlog.Update {
		for _, c := range r.cols {
			if d, ok := delta(ch.Row[c], ch.Before[c]); ok {
				row[c] = d
			}
		}
	}
	return row
}

// mergeRow combines local and remote rows: the named columns by the merge
// (counter: local + delta; max/min of both), every other column from the
// version with the higher (stamp, origin).
func (r *rule) mergeRow(local Version, ch Change) map[string]any {
	var row map[string]any
	if newer(ch.Stamp, ch.Origin, local.Stamp, local.Origin) {
		row = copyRow(ch.Row)
	} else {
		row = copyRow(local.Row)
	}
	for _, c := range r.cols {
		lv, rv := local.Row[c], ch.Row[c]
		switch r.merge {
		case mergeCounter:
			var d any = rv // an insert's delta is its value
			ok := true
			if ch.Op == binlog.Update {
				d, ok = delta(rv, ch.Before[c])
			}
			if ok {
				if s, ok := sum(lv, d); ok {
					row[c] = s
				}
			}
		case mergeMax, mergeMin:
			if cmp, ok := compare(lv, rv); ok {
				if (cmp >= 0) == (r.merge == mergeMax) {
					row[c] = lv
				} else {
					row[c] = rv
				}
			}
		}
	}
	return row
}

var _ Rule = (*rule)(nil)
