package binlog

import "time"

// Op is the kind of a row change.
type Op uint8

const (
	Insert Op = iota + 1
	Update
	Delete
)

func (o Op) String() string {
	switch o {
	case Insert:
		return "insert"
	case Update:
		return "update"
	case Delete:
		return "delete"
	}
	return "unknown"
}

// Row is one row image keyed by column name, values as go-mysql decodes them
// (int64/uint64 for integers, string or []byte for text and blobs, string
// for decimals and temporal types, nil for NULL). Invisible columns
// (_mlr_origin, _mlr_hlc) are included.
type Row map[string]any

// RowChange is one changed row of one table. Before is nil for an insert,
// After is nil for a delete.
//
// Stamp and Origin name the version this change creates: the after image's
// _mlr_hlc/_mlr_origin for an insert or update; for a delete, those of the
// tombstone the trigger (or a forwarding applier) wrote in the same
// transaction, paired by primary key. A delete without a tombstone (a
// foreign-key cascade) gets a derived bypass stamp (see docs/internals.md).
//
// A tombstone with no delete beside it (a forwarding region deleted a row it
// no longer had) becomes a Delete whose Before holds only the primary key
// columns, with PrevUnknown set: the version it replaced is not known.
type RowChange struct {
	Schema      string
	Table       string
	Op          Op
	Before      Row
	After       Row
	Stamp       uint64
	Origin      uint16
	PrevUnknown bool
}

// Position is where a transaction ends in the source's binlog. GTID is the
// MariaDB GTID of the transaction ("domain-server-seq") or a MySQL GTID set
// when the source has GTIDs; File/Pos always point after its commit.
type Position struct {
	GTID string
	File string
	Pos  uint32
}

// Txn is one whole source transaction, emitted only at its COMMIT/XID.
//
// A transaction larger than the tailer's memory bound arrives in pieces:
// every piece carries the same Seq, Piece counts from 0 and Last is set on
// the final one; the applier applies all pieces in one local transaction and
// commits only after Last. Small transactions are a single piece with Last.
type Txn struct {
	// Source is the region id of the server this transaction was read from
	// (the peer), Origin the region whose client wrote it (equal to Source
	// unless the transaction was forwarded by an applier there).
	Source uint16
	// Applied is true when the transaction was written by an applier in the
	// source region (it carries a mlr.checkpoints row, the loop marker).
	Applied bool
	// ForwardedFrom is the peer id in that checkpoint row when Applied.
	ForwardedFrom uint16

	Pos       Position
	Timestamp time.Time // source commit time (binlog event header)
	Seq       uint64    // source order, starting at 1 per tailer run
	Piece     int
	Last      bool

	Changes []RowChange
	// Size is the approximate memory held by Changes, in bytes.
	Size int64
}
