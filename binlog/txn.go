package binlog

import (
	"strconv"
	"strings"
	"time"
)

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
// (int64/uint64 for integers, signedness from the table map, so
// BIGINT UNSIGNED is uint64; float32/float64; string or []byte for text and
// blobs; string for decimals and temporal types, TIMESTAMP formatted in UTC;
// int64 index for ENUM and int64 bitmask for SET and BIT; nil for NULL).
// Invisible columns (_mlr_origin, _mlr_hlc) are included.
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

// Position is where a transaction ends in the source's binlog, and where a
// tailer resumes after it (binlog.Checkpoint takes the same three fields).
//
// GTID is the source's GTID position after the transaction: for MariaDB one
// "domain-server-seq" per domain seen, comma separated and sorted (with the
// usual single domain that is exactly the transaction's own GTID); for
// MySQL with gtid_mode=ON the executed GTID set. It is empty when the
// source has no GTIDs (or, when resuming by file/position, until the first
// one is read). File/Pos always point after the transaction's commit event.
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
// Only the Last piece's Pos is a checkpoint; an earlier piece carries the
// transaction's own GTID and the file/position read so far (for progress).
//
// Every source transaction is sent, also when loop suppression leaves it
// no changes (DDL, an applier's transaction in all-to-all): its Last piece
// then has no Changes and serves checkpoint progress only.
type Txn struct {
	// Source is the region id of the server this transaction was read from
	// (the peer). Each RowChange's Origin names the region that wrote that
	// row version (equal to Source unless an applier there forwarded it).
	Source uint16
	// Applied is true when the transaction was written by an applier in the
	// source region (it carries a mlr.checkpoints row, the loop marker).
	// The applier writes that row last, so on pieces before the Last one
	// Applied is only true once the marker has been read.
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

// SeqNo returns the sequence number of domain's GTID in a MariaDB GTID
// position such as "1-1-42,2-2-7" (0 when the domain is absent). Comparing
// a peer's @@gtid_binlog_pos with a checkpoint this way counts the
// transactions between them.
func SeqNo(pos string, domain uint32) int64 {
	d := strconv.FormatUint(uint64(domain), 10)
	for _, g := range strings.Split(pos, ",") {
		f := strings.Split(strings.TrimSpace(g), "-")
		if len(f) == 3 && f[0] == d {
			n, _ := strconv.ParseInt(f[2], 10, 64)
			return n
		}
	}
	return 0
}
