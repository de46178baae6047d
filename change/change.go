// Package change is the row-change contract between the tailer (binlog/),
// the applier (applier/) and the conflict rules (conflict/): what one
// changed row looks like once it has left a binlog, and the metadata every
// version of a replicated row carries. It imports none of those packages.
//
// A version of a row (a live row or a tombstone) is named by three hidden
// values: its stamp (_mlr_hlc), the writer that made it (_mlr_origin) and
// its metadata (_mlr_vv: the version vector and, per rule, what the rule
// needs to merge; see Meta). docs/internals.md fixes the encodings.
package change

import "strconv"

// Names of the hidden columns schema apply adds to every replicated table
// and to its tombstone table.
const (
	ColOrigin = "_mlr_origin"
	ColHLC    = "_mlr_hlc"
	ColMeta   = "_mlr_vv"
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
// (int64/uint64 for integers, float32/float64, string or []byte for text
// and blobs, string for decimals and temporal types, nil for NULL). Hidden
// columns (_mlr_*) are included when the image has them.
type Row map[string]any

// Origin names the writer of a version: a region, and an instance within
// it for regions served by several writers. Packed as instance<<16 |
// region, so the region ids stored today (instance 0) are valid Origins
// as they are. Versions tie-break by Origin (higher wins) after the stamp.
type Origin uint32

// NewOrigin packs a region and an instance.
func NewOrigin(region, instance uint16) Origin { return Origin(uint32(instance)<<16 | uint32(region)) }

// Region is the region the writer belongs to: version vectors have one
// entry per region.
func (o Origin) Region() uint16 { return uint16(o) }

// Instance is the writer within its region (0: the only one).
func (o Origin) Instance() uint16 { return uint16(o >> 16) }

// Less orders origins by region, then instance.
func (o Origin) Less(p Origin) bool {
	if o.Region() != p.Region() {
		return o.Region() < p.Region()
	}
	return o.Instance() < p.Instance()
}

func (o Origin) String() string {
	if o.Instance() == 0 {
		return strconv.Itoa(int(o.Region()))
	}
	return strconv.Itoa(int(o.Region())) + "." + strconv.Itoa(int(o.Instance()))
}

// Change is one changed row of one table, as read from a source region's
// binlog. Before is nil for an insert, After is nil for a delete.
//
// Stamp, Origin and Meta name the version the change creates: the after
// image's _mlr_hlc, _mlr_origin and _mlr_vv for an insert or update; for a
// delete, those of the tombstone written in the same transaction, paired
// by primary key (a delete without one gets a derived stamp and the before
// image's metadata).
//
// PrevUnknown marks a delete made from a tombstone alone (a forwarding
// region deleted a row it no longer had): Before then holds only the
// primary key columns.
type Change struct {
	Schema      string
	Table       string
	Op          Op
	Before      Row
	After       Row
	Stamp       uint64
	Origin      Origin
	Meta        string
	PrevUnknown bool
}

// Position is where a transaction ends in the source's binlog, and where a
// tailer resumes after it.
//
// GTID is the source's GTID position after the transaction: for MariaDB one
// "domain-server-seq" per domain seen, comma separated and sorted; for
// MySQL with gtid_mode=ON the executed GTID set. It is empty when the
// source has no GTIDs. File/Pos always point after the transaction's
// commit event.
type Position struct {
	GTID string
	File string
	Pos  uint32
}
