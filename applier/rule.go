package applier

import (
	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/hlc"
)

// The types below mirror the decision API of package conflict (Version,
// Change, Decision, Rule), which lands in parallel. They are the applier's
// view of it: when conflict lands they become aliases of its types.

// Version is one row's local version: the live row, or its tombstone.
type Version struct {
	Exists  bool // a live row holds the primary key
	Deleted bool // no live row, but a tombstone does
	Stamp   hlc.Timestamp
	Origin  uint16
	Row     map[string]any // user columns of the live row; nil otherwise
}

// Change is one remote row change, as the rule sees it.
type Change struct {
	Op binlog.Op
	// Prev is the version the change replaced at the source (the before
	// image's stamp); meaningless for an insert or when PrevUnknown.
	Prev        Version
	PrevUnknown bool
	// Stamp and Origin name the version the change creates.
	Stamp  hlc.Timestamp
	Origin uint16
	// Row is the after image's user columns (nil for a delete), Before the
	// before image's (nil for an insert).
	Row    map[string]any
	Before map[string]any
}

// Outcome is how a decision ended, as mlr.conflicts.outcome spells it.
type Outcome string

const (
	RemoteWon Outcome = "remote_won"
	LocalWon  Outcome = "local_won"
	Merged    Outcome = "merged"
	Pending   Outcome = "pending"
)

// Action is what the applier writes for a decision.
type Action uint8

const (
	// Keep writes nothing: the local version stays.
	Keep Action = iota
	// Write inserts or updates the row with Decision.Row, Stamp, Origin.
	Write
	// Delete removes the row and records its tombstone at Stamp, Origin.
	Delete
)

// Decision is a rule's verdict on one remote change.
type Decision struct {
	Conflict bool
	Outcome  Outcome
	Action   Action
	Row      map[string]any
	Stamp    hlc.Timestamp
	Origin   uint16
}

// Rule decides one table's conflicts. It is pure: no I/O, no clock.
type Rule interface {
	Name() string
	Resolve(local Version, remote Change) Decision
}
