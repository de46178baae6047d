// Package conflict decides, without I/O, what a remote row change does to the local version of its row, under one of the rules lww, first-writer-wins, origin-priority, counter, max, min, manual.
//
// Detection follows DESIGN.md: a change carries the version it replaced
// (Prev, from the before image's _mlr_hlc/_mlr_origin). If the local row
// still holds Prev, the change is causally later and is applied without a
// conflict. Otherwise the two writes were concurrent and the rule decides.
// An insert meeting a row, an update meeting a tombstone and a delete
// meeting a newer row are conflicts too.
//
// Shared decisions (all rules):
//   - An insert or update meeting no row and no tombstone is applied (an
//     update of a row never seen is applied as an insert).
//   - An insert stamped after the local tombstone is a re-insert: applied,
//     no conflict. A delete meeting no row keeps the tombstone the rule's
//     order puts first (lww: the higher stamp).
//   - A row version against a tombstone (delete vs concurrent update) is
//     decided by the rule's order: by stamp for lww, counter, max and min
//     (a delete at h beats every change stamped before h and loses to every
//     change stamped after), lowest first for first-writer-wins, rank then
//     stamp for origin-priority.
//   - Equal stamps break by origin id, higher wins.
//   - A resolution keeps the winning version's stamp; a merged row takes the
//     higher (stamp, origin) of the two versions.
//   - counter adds every change's delta (after - before; an insert's value)
//     to the local value, causal or not, so each increment counts once; max
//     and min columns only grow (shrink): a write moving them the other way
//     is undone by merges elsewhere.
//   - manual keeps the local version on every conflict (Outcome Pending);
//     the applier records it for an operator.
//
// Convergence (property-tested under per-source FIFO, all-to-all): lww
// always; counter, max and min for rows not deleted concurrently with
// updates; first-writer-wins and origin-priority for one round of
// concurrent writes (no region writes the row again before it has received
// the others'). Beyond that the last two, and a delete racing merged
// counter/max/min updates, can leave regions different: a stamp and origin
// per row cannot tell which concurrent writes a later write had seen.
package conflict

import (
	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/hlc"
)

// Version is the local state of one row: a row (Exists), a tombstone and no
// row (Deleted), or neither (absent: never seen, or tombstone collected).
type Version struct {
	Exists  bool
	Deleted bool
	Stamp   hlc.Timestamp
	Origin  uint16
	// Row is the row image when Exists; nil otherwise.
	Row map[string]any
}

// Absent reports whether there is neither a row nor a tombstone.
func (v Version) Absent() bool { return !v.Exists && !v.Deleted }

// Change is a remote row change as the applier hands it over.
type Change struct {
	Op binlog.Op
	// Prev is the version the change replaced: from the before image's
	// _mlr_hlc/_mlr_origin for an update or delete, absent for an insert.
	Prev Version
	// PrevUnknown is set when the replaced version is not known; the change
	// is then never treated as causally later.
	PrevUnknown bool
	// Stamp and Origin name the version the change creates.
	Stamp  hlc.Timestamp
	Origin uint16
	// Row is the after image (nil for a delete).
	Row map[string]any
	// Before is the before image (nil for an insert); counter deltas are
	// Row - Before.
	Before map[string]any
}

// Outcome says whose version survived.
type Outcome uint8

const (
	RemoteWon Outcome = iota + 1
	LocalWon
	Merged
	// Pending keeps the local version and asks an operator (manual rule).
	Pending
)

// String is the outcome as stored in mlr.conflicts.outcome.
func (o Outcome) String() string {
	switch o {
	case RemoteWon:
		return "remote_won"
	case LocalWon:
		return "local_won"
	case Merged:
		return "merged"
	case Pending:
		return "pending"
	}
	return "unknown"
}

// Action is what the applier writes.
type Action uint8

const (
	// Nothing leaves the local row and tombstone as they are.
	Nothing Action = iota
	// WriteRow writes Row with Stamp/Origin (insert or replace the row).
	WriteRow
	// WriteDelete deletes the row if present and writes the tombstone
	// with Stamp/Origin.
	WriteDelete
)

// Write is the applier's instruction.
type Write struct {
	Action Action
	// Row is the full row to store for WriteRow (a fresh map, safe to keep).
	Row    map[string]any
	Stamp  hlc.Timestamp
	Origin uint16
}

// Decision is the result of Resolve. Conflict is true when the remote change
// met a concurrent local version; the applier logs it in mlr.conflicts with
// Outcome.
type Decision struct {
	Conflict bool
	Outcome  Outcome
	Write    Write
}

// Rule resolves one table's changes. Implementations are pure and safe for
// concurrent use.
type Rule interface {
	Name() string
	Resolve(local Version, remote Change) Decision
}

// newer reports whether (s1, o1) is above (s2, o2): higher stamp, ties by
// higher origin.
func newer(s1 hlc.Timestamp, o1 uint16, s2 hlc.Timestamp, o2 uint16) bool {
	if s1 != s2 {
		return s1 > s2
	}
	return o1 > o2
}

func sameVersion(a, b Version) bool {
	switch {
	case a.Absent() && b.Absent():
		return true
	case a.Exists != b.Exists || a.Deleted != b.Deleted:
		return false
	}
	return a.Stamp == b.Stamp && a.Origin == b.Origin
}

func copyRow(r map[string]any) map[string]any {
	if r == nil {
		return nil
	}
	c := make(map[string]any, len(r))
	for k, v := range r {
		c[k] = v
	}
	return c
}
