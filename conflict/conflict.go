// Package conflict decides, without I/O, what a remote version of a row
// does to the local version, under one of the rules lww,
// first-writer-wins, origin-priority, counter, max, min, manual.
//
// Every version (live row or tombstone) carries a version vector
// (change.Meta). Resolve compares the two vectors:
//
//   - the local vector dominates or equals the remote one: the remote
//     version was already seen here; nothing is written, no conflict;
//   - the remote vector dominates: the remote version is causally later
//     and replaces the local one, no conflict;
//   - neither: the versions are concurrent, a conflict, and the table's
//     rule decides. The result's vector is the join of both; its stamp,
//     origin and rank are the winner's (a later write anywhere is stamped
//     above the row's stamp and above its own region's vector entry).
//
// Resolve is a merge of states, not the application of a delta: applying
// one version twice, or in any order, gives the same result. Every rule
// is a join-semilattice over versions, which is why all regions converge
// for any history, any delivery order and any topology (property-tested
// at 3 and 5 regions):
//
//   - lww orders concurrent versions by (stamp, origin), higher wins;
//     tombstones compete like rows (a delete beats concurrent changes
//     stamped before it and loses to those stamped after).
//   - first-writer-wins orders concurrent versions by their lineage's birth
//     (the stamp of the lineage's first version, inherited by every later
//     version of it, a re-insert after a delete included), lower wins;
//     versions of one lineage by (stamp, origin), higher wins.
//   - origin-priority compares the vectors' entries in priority order
//     (highest-ranked region first, unlisted regions after by id): the
//     version that has seen the later writes of the higher-ranked region
//     wins; equal vectors by (stamp, origin). A version by a high-ranked
//     region beats a concurrent one by a lower-ranked region; a version
//     that built on a high-ranked region's write keeps that standing.
//   - counter, max and min decide existence and the other columns as lww;
//     their named columns merge. A counter column is a sum of per-region
//     contributions, each region's taken from the version that has seen
//     more of that region's writes (a PN-counter keyed by the vector), so
//     every increment counts exactly once, also when merged rows are
//     forwarded by a star hub or around a ring. A delete racing an
//     increment: the higher stamp decides whether the row exists; the
//     increment is never lost (a surviving row includes it; if the delete
//     survives, a later re-insert sets the value and the increments the
//     delete had not seen are added to it). max and min columns only grow
//     (shrink) over a key's lineage: the merge takes the larger (smaller)
//     value, and the triggers keep local writes from moving them the
//     other way.
//   - manual keeps the local version on every conflict (Outcome Pending)
//     and leaves it to an operator; regions differ in that row until it is
//     resolved.
package conflict

import (
	"github.com/mlproxy/mlproxy/change"
	"github.com/mlproxy/mlproxy/hlc/stamp"
)

// Version is the state of one row at one region: a row (Exists), a
// tombstone and no row (Deleted), or neither (absent: never seen, or
// tombstone collected).
type Version struct {
	Exists  bool
	Deleted bool
	Stamp   stamp.Timestamp
	Origin  change.Origin
	// Row is the row image (user columns) when Exists; nil otherwise.
	Row map[string]any
	// Meta is the version's vector and rule metadata.
	Meta change.Meta
	// Home is the region whose server stored this version: the region
	// whose own counter contributions Meta leaves implicit. For the local
	// version it is this region, also when the row is absent.
	Home uint16
}

// Absent reports whether there is neither a row nor a tombstone.
func (v Version) Absent() bool { return !v.Exists && !v.Deleted }

// vector is v's vector, completed for versions written before vectors
// existed: the writer's entry is at least the version's stamp.
func (v Version) vector() change.Vector {
	vv := v.Meta.VV
	if v.Absent() || v.Stamp == 0 {
		return vv
	}
	if r := v.Origin.Region(); vv[r] < uint64(v.Stamp) {
		vv = vv.Clone()
		vv[r] = uint64(v.Stamp)
	}
	return vv
}

// rankVector is the vector origin-priority ranks v by: its own vector
// (Meta.Own, for a merged version), else its vector.
func (v Version) rankVector() change.Vector {
	if len(v.Meta.Own) > 0 {
		return v.Meta.Own
	}
	return v.vector()
}

// birth is v's lineage birth; a version without one (written before
// births were kept) is its own.
func (v Version) birth() change.Birth {
	if v.Meta.Birth != (change.Birth{}) {
		return v.Meta.Birth
	}
	return change.Birth{Stamp: uint64(v.Stamp), Origin: v.Origin}
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
	// WriteRow writes Row with Stamp, Origin and Meta (insert or replace
	// the row).
	WriteRow
	// WriteDelete deletes the row if present and writes the tombstone
	// with Stamp, Origin and Meta.
	WriteDelete
)

// Write is the applier's instruction. Its Meta is encoded for storage at
// the local region (Home of the local version).
type Write struct {
	Action Action
	// Row is the full row to store for WriteRow (a fresh map, safe to keep).
	Row    map[string]any
	Stamp  stamp.Timestamp
	Origin change.Origin
	Meta   change.Meta
}

// Version is the local version the write leaves.
func (w Write) Version(home uint16) Version {
	switch w.Action {
	case WriteRow:
		return Version{Exists: true, Stamp: w.Stamp, Origin: w.Origin, Row: w.Row, Meta: w.Meta, Home: home}
	case WriteDelete:
		return Version{Deleted: true, Stamp: w.Stamp, Origin: w.Origin, Meta: w.Meta, Home: home}
	}
	return Version{Home: home}
}

// Decision is the result of Resolve. Conflict is true when the remote
// version was concurrent with the local one; the applier logs it in
// mlr.conflicts with Outcome.
type Decision struct {
	Conflict bool
	Outcome  Outcome
	Write    Write
}

// Rule resolves one table's versions. Implementations are pure and safe
// for concurrent use.
type Rule interface {
	Name() string
	Resolve(local, remote Version) Decision
}

// newer reports whether (s1, o1) is above (s2, o2): higher stamp, ties by
// higher origin.
func newer(s1 stamp.Timestamp, o1 change.Origin, s2 stamp.Timestamp, o2 change.Origin) bool {
	if s1 != s2 {
		return s1 > s2
	}
	return o2.Less(o1)
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
