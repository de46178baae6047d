package conflict

import (
	"errors"
	"fmt"
	"slices"

	"github.com/mlproxy/mlproxy/change"
)

// ErrUnknownRule names a rule that does not exist.
var ErrUnknownRule = errors.New("unknown conflict rule (want lww, first-writer-wins, origin-priority, counter, max, min or manual)")

// Spec is a table's rule as configured, with region names resolved to ids.
type Spec struct {
	// Name is the rule ("" = lww).
	Name string
	// Columns are the merged columns of counter, max and min.
	Columns []string
	// Priority lists region ids, highest first (origin-priority).
	Priority []uint16
	// Where names the table rule for errors (e.g. "table rule shop.stock
	// (line 12)").
	Where string
}

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
	// beats reports whether version a wins a conflict against the
	// concurrent version b (rows and tombstones alike). Every order is
	// monotone in causality: a version causally later than a beats
	// everything a beats, which makes the merge associative.
	beats func(a, b Version) bool
	merge mergeKind
	cols  []string
	// manual keeps local on every conflict, with Outcome Pending.
	manual bool
}

// NewRule compiles a table's rule.
func NewRule(s Spec) (Rule, error) {
	name := s.Name
	if name == "" {
		name = "lww"
	}
	where := s.Where
	if where == "" {
		where = "table rule"
	}
	r := &rule{name: name, beats: lwwBeats}
	switch name {
	case "lww", "manual":
		r.manual = name == "manual"
	case "first-writer-wins":
		r.beats = fwwBeats
	case "origin-priority":
		if len(s.Priority) == 0 {
			return nil, fmt.Errorf("%s: origin-priority needs a priority list of region names, highest first", where)
		}
		for i, id := range s.Priority {
			if slices.Contains(s.Priority[:i], id) {
				return nil, fmt.Errorf("%s: priority names region %d twice", where, id)
			}
		}
		prio := slices.Clone(s.Priority)
		r.beats = func(a, b Version) bool {
			if c := rankCompare(prio, a.rankVector(), b.rankVector()); c != 0 {
				return c > 0
			}
			return lwwBeats(a, b)
		}
	case "counter", "max", "min":
		if len(s.Columns) == 0 {
			return nil, fmt.Errorf("%s: rule %s needs columns: the numeric columns to merge", where, name)
		}
		r.merge = map[string]mergeKind{"counter": mergeCounter, "max": mergeMax, "min": mergeMin}[name]
		r.cols = slices.Clone(s.Columns)
	default:
		return nil, fmt.Errorf("%s: rule %q: %w", where, name, ErrUnknownRule)
	}
	if len(s.Priority) > 0 && name != "origin-priority" {
		return nil, fmt.Errorf("%s: priority is only used by origin-priority, not %s", where, name)
	}
	if len(s.Columns) > 0 && r.merge == noMerge {
		return nil, fmt.Errorf("%s: columns are only used by counter, max and min, not %s", where, name)
	}
	return r, nil
}

func (r *rule) Name() string { return r.name }

func lwwBeats(a, b Version) bool { return newer(a.Stamp, a.Origin, b.Stamp, b.Origin) }

// fwwBeats: the lineage born first wins; within a lineage the later
// version.
func fwwBeats(a, b Version) bool {
	ba, bb := a.birth(), b.birth()
	if ba != bb {
		if ba.Stamp != bb.Stamp {
			return ba.Stamp < bb.Stamp
		}
		return bb.Origin.Less(ba.Origin)
	}
	return lwwBeats(a, b)
}

// rankCompare compares two vectors entry by entry in priority order
// (listed regions first, then the others by id): +1 when a is ahead at the
// first entry that differs, -1 when b is, 0 when equal.
func rankCompare(prio []uint16, a, b change.Vector) int {
	for _, r := range prio {
		if a[r] != b[r] {
			if a[r] > b[r] {
				return 1
			}
			return -1
		}
	}
	rest := make([]uint16, 0, len(a)+len(b))
	for r := range a {
		rest = append(rest, r)
	}
	for r := range b {
		rest = append(rest, r)
	}
	slices.Sort(rest)
	for _, r := range rest {
		if slices.Contains(prio, r) || a[r] == b[r] {
			continue
		}
		if a[r] > b[r] {
			return 1
		}
		return -1
	}
	return 0
}

// Resolve merges the remote version into the local one. See the package
// doc.
func (r *rule) Resolve(local, remote Version) Decision {
	lv, rv := local.vector(), remote.vector()
	local.Meta.VV, remote.Meta.VV = lv, rv
	ord := lv.Compare(rv)
	if ord == change.Equal || ord == change.After || remote.Absent() {
		return Decision{Outcome: LocalWon} // already seen here
	}
	causal := ord == change.Before
	if r.merge != noMerge {
		d := Decision{Conflict: !causal, Outcome: Merged, Write: r.mergeWrite(local, remote, causal)}
		if causal {
			d.Outcome = RemoteWon
		}
		return d
	}
	if causal {
		return Decision{Outcome: RemoteWon, Write: r.winner(remote, local, local.Home)}
	}
	if r.manual {
		return Decision{Conflict: true, Outcome: Pending}
	}
	if r.beats(remote, local) {
		return Decision{Conflict: true, Outcome: RemoteWon, Write: r.winner(remote, local, local.Home)}
	}
	return Decision{Conflict: true, Outcome: LocalWon, Write: r.winner(local, remote, local.Home)}
}

// winner is the write that keeps w's row (or tombstone), stamp and origin,
// with the join of both vectors. The merged version ranks as w did (its
// stamp, birth and, for origin-priority, own vector are w's): ranking it
// by the join would let it beat versions w itself does not beat, and the
// merge would depend on the order versions arrive in.
func (r *rule) winner(w, other Version, home uint16) Write {
	out := Write{Action: WriteRow, Row: copyRow(w.Row), Stamp: w.Stamp, Origin: w.Origin}
	if w.Deleted {
		out = Write{Action: WriteDelete, Stamp: w.Stamp, Origin: w.Origin}
	}
	out.Meta = change.Meta{VV: w.Meta.VV.Join(other.Meta.VV)}
	switch r.name {
	case "first-writer-wins":
		out.Meta.Birth = w.birth()
	case "origin-priority":
		if own := w.rankVector(); own.Compare(out.Meta.VV) != change.Equal {
			out.Meta.Own = own
		}
	}
	return out
}

// mergeWrite merges two versions under counter, max or min: existence and
// the other columns from the lww winner (the remote version when it is
// causally later), the named columns merged.
func (r *rule) mergeWrite(local, remote Version, causal bool) Write {
	w, other := local, remote
	if causal || lwwBeats(remote, local) {
		w, other = remote, local
	}
	if local.Absent() {
		w, other = remote, local
	}
	out := r.winner(w, other, local.Home)
	merged := make(map[string]any, len(r.cols))
	switch r.merge {
	case mergeCounter:
		out.Meta.Contrib = map[string]map[uint16]string{}
		for _, c := range r.cols {
			total, per := r.sumContrib(c, local, remote)
			if v, _ := colValue(w, c); v == nil && len(per) == 0 && text(total) == "0" {
				total = nil // a NULL nobody added to stays NULL
			}
			merged[c] = total
			delete(per, local.Home) // implicit at home
			if len(per) > 0 {
				out.Meta.Contrib[c] = per
			}
		}
	case mergeMax, mergeMin:
		for _, c := range r.cols {
			lvl, lok := colValue(local, c)
			rvl, rok := colValue(remote, c)
			switch {
			case !lok:
				merged[c] = rvl
			case !rok:
				merged[c] = lvl
			default:
				merged[c] = r.pick(lvl, rvl)
			}
		}
	}
	if out.Action == WriteRow {
		for c, v := range merged {
			out.Row[c] = v
		}
	} else {
		out.Meta.Values = merged
	}
	return out
}

// pick is the max (min) of two values of a max (min) column; a value that
// cannot be ordered against the other leaves the first.
func (r *rule) pick(a, b any) any {
	c, ok := compare(a, b)
	if !ok {
		return a
	}
	if (c >= 0) == (r.merge == mergeMax) {
		return a
	}
	return b
}

// colValue is a merge column's value in v: the row's, or the value the
// tombstone kept. ok is false when v holds none (absent).
func colValue(v Version, col string) (any, bool) {
	switch {
	case v.Exists:
		x, ok := v.Row[col]
		return x, ok
	case v.Deleted:
		x, ok := v.Meta.Values[col]
		return x, ok
	}
	return nil, false
}

// contributions returns v's per-region contributions to counter column
// col: the stored ones, and v.Home's implicit one (the value minus the
// others).
func contributions(v Version, col string) map[uint16]any {
	out := map[uint16]any{}
	if v.Absent() {
		return out
	}
	var others any = int64(0)
	for r, n := range v.Meta.Contrib[col] {
		if r == v.Home {
			continue
		}
		out[r] = n
		if s, ok := sum(others, n); ok {
			others = s
		}
	}
	total, _ := colValue(v, col)
	if d, ok := delta(total, others); ok {
		out[v.Home] = d
	}
	return out
}

// sumContrib merges the contributions of both versions to col, each
// region's from the version whose vector has the higher entry for it
// (local on a tie: equal entries have seen the same writes), and returns
// the total and the merged contributions as decimal text.
func (r *rule) sumContrib(col string, local, remote Version) (any, map[uint16]string) {
	lc, rc := contributions(local, col), contributions(remote, col)
	regions := map[uint16]bool{}
	for k := range lc {
		regions[k] = true
	}
	for k := range rc {
		regions[k] = true
	}
	var total any = int64(0)
	per := map[uint16]string{}
	ids := make([]uint16, 0, len(regions))
	for k := range regions {
		ids = append(ids, k)
	}
	slices.Sort(ids)
	for _, k := range ids {
		// A region's contribution comes from the version that has seen
		// more of its writes; a version without an entry holds 0.
		var v any = int64(0)
		if remote.Meta.VV[k] > local.Meta.VV[k] {
			if x, ok := rc[k]; ok {
				v = x
			}
		} else if x, ok := lc[k]; ok {
			v = x
		}
		if s, ok := sum(total, v); ok {
			total = s
		}
		if t := text(v); t != "0" {
			per[k] = t
		}
	}
	return total, per
}

// text is a number as decimal text.
func text(v any) string {
	n, ok := toNum(v)
	if !ok {
		return "0"
	}
	if n.kind == kDec {
		return n.r.FloatString(n.scale)
	}
	if n.kind == kFloat {
		f, _ := n.r.Float64()
		return fmt.Sprint(f)
	}
	return n.r.RatString()
}

var _ Rule = (*rule)(nil)

// Rehome is the counter metadata of a version stored at region from, as
// it must be stored at region to (a region seeded with from's copy): each
// counter column of cols gets every region's contribution explicit but
// to's own, which becomes implicit (the value minus the others). Copied
// unchanged, from's implicit share would read as to's, and from's would be
// lost. row holds the row's values (a tombstone's are in meta.Values).
func Rehome(meta change.Meta, row map[string]any, deleted bool, cols []string, from, to uint16) change.Meta {
	v := Version{Exists: !deleted, Deleted: deleted, Row: row, Meta: meta, Home: from}
	out := meta
	out.Contrib = map[string]map[uint16]string{}
	for c, per := range meta.Contrib {
		out.Contrib[c] = per
	}
	for _, col := range cols {
		per := map[uint16]string{}
		for r, x := range contributions(v, col) {
			if r == to {
				continue
			}
			if t := text(x); t != "0" {
				per[r] = t
			}
		}
		if len(per) == 0 {
			delete(out.Contrib, col)
		} else {
			out.Contrib[col] = per
		}
	}
	if len(out.Contrib) == 0 {
		out.Contrib = nil
	}
	return out
}
