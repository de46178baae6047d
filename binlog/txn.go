package binlog

import (
	"strconv"
	"strings"
	"time"

	"github.com/mlproxy/mlproxy/change"
)

// The row-change contract lives in package change (binlog, applier and
// conflict share it); these names keep binlog's callers short.
type (
	Op        = change.Op
	Row       = change.Row
	RowChange = change.Change
	Position  = change.Position
)

const (
	Insert = change.Insert
	Update = change.Update
	Delete = change.Delete
)

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
	// (the peer): the Home of the versions it carries. Each RowChange's
	// Origin names the writer of that row version.
	Source uint16
	// Applied is true when the transaction was written by an applier in the
	// source region (it carries a mlr.checkpoints row, the loop marker).
	// The applier writes the marker first in every transaction it commits,
	// so every piece of such a transaction carries Applied.
	Applied bool
	// ForwardedFrom is the peer id in that checkpoint row when Applied.
	ForwardedFrom uint16
	// Trace is the W3C traceparent a sampled write carried (its proxy
	// span's context, from mlr.traces), "" for most transactions.
	Trace string

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
