package binlog

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"time"

	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/change"
	"github.com/mlproxy/mlproxy/hlc"
	"github.com/mlproxy/mlproxy/schema"
)

// checkpointsTable is mlr.checkpoints, the loop marker (docs/internals.md);
// markersTable is mlr.markers, the marker of a parallel apply worker's
// transactions (one row per peer and worker, peer_id as in checkpoints).
const (
	checkpointsTable = "checkpoints"
	markersTable     = "markers"
	tracesTable      = "traces"
)

// rowsEvent is one decoded rows event, free of go-mysql types so that the
// assembler can be tested without a server. For an update, rows holds
// before and after images alternately (before, after, before, after, ...).
type rowsEvent struct {
	schema, table string
	op            Op
	rows          []Row
	// when is the event header's time (Unix seconds): the derived stamp
	// of a delete without a tombstone is made from it.
	when uint32
}

// tableKey names a table.
type tableKey struct{ schema, table string }

// entry is one buffered row change of the open transaction.
type entry struct {
	rc   RowChange
	size int64
	// waiting marks a delete whose tombstone has not been read yet. No
	// entry at or after the first waiting one is emitted: a piece is
	// always a prefix of the transaction's changes, so changes to one row
	// are never reordered.
	waiting bool
	// key is the primary key of a waiting delete, built with the columns
	// in pending[table].cols.
	key  string
	when uint32
}

// pendingDeletes indexes the waiting deletes of one data table by primary key.
type pendingDeletes struct {
	// cols are the primary key columns the keys were built with (learned
	// from the tombstone table); nil while unknown (every key is "").
	cols []string
	// byKey maps a key to the absolute indexes of waiting deletes, oldest
	// first.
	byKey map[string][]int
}

// skipRecord describes a transaction whose first pieces were already
// emitted when the connection broke: the stream is re-read from the
// position after the last whole transaction, and those pieces are
// re-assembled identically but not sent again.
type skipRecord struct {
	seq    uint64
	id     string
	pieces int
}

// ErrReplayDiverged is returned when a transaction that was partly emitted
// before a reconnect reads back differently afterwards (the peer's binlog
// changed under the tailer). The applier must discard its open transaction;
// restart the region's replicator.
var ErrReplayDiverged = errors.New("binlog: a partly emitted transaction read back differently after reconnecting: restart replication from the last checkpoint")

// assembler turns a stream of begin/rows/commit calls into whole Txns (or
// pieces of them), pairing deletes with their tombstones, stamping row
// changes, and applying the topology filter.
//
// Invariants:
//   - a Txn with Last is sent only at the transaction's commit;
//   - pieces of one transaction carry the same Seq and consecutive Piece
//     numbers from 0, and each is a prefix of what remains, so changes keep
//     source order;
//   - buffered memory stays below about 2*maxBytes plus one rows event: a
//     piece is cut once maxBytes is buffered, and deletes still waiting for
//     their tombstone are held back until 2*maxBytes, then stamped as
//     unpaired.
type assembler struct {
	peer     uint16
	filter   filter
	maxBytes int64
	send     func(context.Context, *Txn) error
	m        *metrics
	log      *zap.Logger

	// tombCols are the primary key columns of each data table, as the
	// columns of its tombstone table (minus the stamp columns) last read.
	// Kept across transactions; refreshed from every tombstone rows event,
	// so a DDL that changes a key is picked up by the next tombstone.
	tombCols map[tableKey][]string

	// lastSeq is the Seq of the last transaction sent whole.
	lastSeq uint64
	skip    *skipRecord

	// The open transaction.
	open          bool
	id            string // "domain-server-seq", a MySQL GTID, or "file:pos" of its first event
	seq           uint64
	began         time.Time
	applied       bool
	forwardedFrom uint16
	trace         string // the first mlr.traces row of the transaction
	piece         int    // next piece number
	buf           []entry
	bufBytes      int64
	base          int // absolute index of buf[0]
	scan          int // absolute index: no waiting entry before it
	pending       map[tableKey]*pendingDeletes
	unpaired      int
}

func newAssembler(peer uint16, f filter, maxBytes int64, send func(context.Context, *Txn) error, m *metrics, log *zap.Logger) *assembler {
	return &assembler{peer: peer, filter: f, maxBytes: maxBytes, send: send, m: m, log: log,
		tombCols: map[tableKey][]string{}}
}

// begin opens a transaction. Calling it again while the open transaction
// has no row changes yet (MySQL's GTID event followed by BEGIN) only
// refines the id.
func (a *assembler) begin(id string, when time.Time) error {
	if a.open {
		if len(a.buf) == 0 && a.piece == 0 {
			if id != "" && a.id == "" {
				a.id = id
			}
			return nil
		}
		return fmt.Errorf("%w: transaction %s has no commit before the next transaction %s", ErrUnsupported, a.id, id)
	}
	a.open = true
	a.id = id
	a.seq = a.lastSeq + 1
	a.began = when
	a.applied = false
	a.forwardedFrom = 0
	a.trace = ""
	a.piece = 0
	a.buf = nil
	a.bufBytes = 0
	a.base = 0
	a.scan = 0
	a.pending = map[tableKey]*pendingDeletes{}
	a.unpaired = 0
	if a.skip != nil && a.skip.seq == a.seq && a.skip.id != id {
		return fmt.Errorf("%w: transaction %d was %s before reconnecting, now %s", ErrReplayDiverged, a.seq, a.skip.id, id)
	}
	return nil
}

// abort discards the open transaction after a broken connection. If pieces
// of it were sent, they are remembered so that the re-read does not send
// them again.
func (a *assembler) abort() {
	if !a.open {
		return
	}
	if a.piece > 0 && (a.skip == nil || a.skip.seq != a.seq || a.piece > a.skip.pieces) {
		a.skip = &skipRecord{seq: a.seq, id: a.id, pieces: a.piece}
	}
	a.open = false
	a.buf = nil
	a.bufBytes = 0
	a.pending = nil
}

// rows adds one rows event to the open transaction (opening one if the
// binlog has none open) and sends a piece when the buffer is full.
func (a *assembler) rows(ctx context.Context, ev *rowsEvent, at Position) error {
	if !a.open {
		if err := a.begin(at.File+":"+strconv.FormatUint(uint64(at.Pos), 10), time.Unix(int64(ev.when), 0)); err != nil {
			return err
		}
	}
	switch {
	case ev.schema == schema.Internal:
		a.internal(ev)
	case len(ev.rows) > 0 && !hasStamp(ev.rows[0]):
		// Not a replicated table (no stamp columns): the peer's own
		// business, like the mysql schema.
		a.m.filtered.Add(float64(len(ev.rows)))
	default:
		a.data(ev)
	}
	if a.bufBytes >= a.maxBytes {
		return a.cut(ctx, at)
	}
	return nil
}

// internal handles rows of the mlr schema: the checkpoint marker and
// tombstones cross; everything else there is region-local and dropped.
func (a *assembler) internal(ev *rowsEvent) {
	if ev.op == Delete {
		return // tombstone GC, checkpoint cleanup: region-local
	}
	if ev.table == tracesTable {
		// A traced write's context (package tracing): the first wins.
		if a.trace == "" && ev.op == Insert && len(ev.rows) > 0 {
			a.trace = traceparent(ev.rows[0]["traceparent"])
		}
		return
	}
	if ev.table == checkpointsTable || ev.table == markersTable {
		for i, r := range ev.rows {
			if ev.op == Update && i%2 == 0 {
				continue
			}
			a.applied = true
			if id, ok := toUint64(r["peer_id"]); ok && id <= math.MaxUint16 {
				a.forwardedFrom = uint16(id)
			}
		}
		return
	}
	db, tbl, ok := schema.ParseTombstoneTable(ev.table)
	if !ok {
		return
	}
	t := tableKey{db, tbl}
	for i, r := range ev.rows {
		if ev.op == Update && i%2 == 0 {
			continue // before image of an upsert that replaced an older tombstone
		}
		a.tombstone(t, r, ev.when)
	}
}

// tombstone pairs one tombstone row with the latest waiting delete of the
// same primary key, or emits it as a delete of unknown prior version.
func (a *assembler) tombstone(t tableKey, r Row, when uint32) {
	cols := make([]string, 0, len(r))
	for c := range r {
		if c != change.ColHLC && c != change.ColOrigin && c != change.ColMeta {
			cols = append(cols, c)
		}
	}
	slices.Sort(cols)
	if !slices.Equal(cols, a.tombCols[t]) {
		a.tombCols[t] = cols
	}
	stamp, _ := toUint64(r[change.ColHLC])
	origin := toOrigin(r[change.ColOrigin])
	meta := metaText(r[change.ColMeta])
	key, ok := pkKey(r, cols)
	p := a.pendingFor(t)
	if ok {
		if list := p.byKey[key]; len(list) > 0 {
			idx := list[len(list)-1]
			a.dropPending(p, key, idx)
			e := &a.buf[idx-a.base]
			e.waiting = false
			e.rc.Stamp, e.rc.Origin, e.rc.Meta = stamp, origin, meta
			return
		}
	}
	before := make(Row, len(cols))
	for _, c := range cols {
		before[c] = r[c]
	}
	a.m.orphans.Inc()
	a.add(entry{rc: RowChange{Schema: t.schema, Table: t.table, Op: Delete, Before: before,
		Stamp: stamp, Origin: origin, Meta: meta, PrevUnknown: true}, when: when})
}

// pendingFor returns the pending deletes of t, re-keyed if the primary key
// columns known for t changed since they were indexed.
func (a *assembler) pendingFor(t tableKey) *pendingDeletes {
	cols := a.tombCols[t]
	p := a.pending[t]
	if p == nil {
		p = &pendingDeletes{cols: cols, byKey: map[string][]int{}}
		a.pending[t] = p
		return p
	}
	if slices.Equal(p.cols, cols) {
		return p
	}
	p.cols = cols
	p.byKey = map[string][]int{}
	for i := range a.buf {
		e := &a.buf[i]
		if e.waiting && e.rc.Schema == t.schema && e.rc.Table == t.table {
			e.key, _ = pkKey(e.rc.Before, cols)
			p.byKey[e.key] = append(p.byKey[e.key], a.base+i)
		}
	}
	return p
}

func (a *assembler) dropPending(p *pendingDeletes, key string, idx int) {
	list := p.byKey[key]
	for i, v := range list {
		if v == idx {
			list = append(list[:i], list[i+1:]...)
			break
		}
	}
	if len(list) == 0 {
		delete(p.byKey, key)
	} else {
		p.byKey[key] = list
	}
}

// data adds the row changes of an application table.
func (a *assembler) data(ev *rowsEvent) {
	t := tableKey{ev.schema, ev.table}
	switch ev.op {
	case Insert:
		for _, r := range ev.rows {
			a.add(a.stamped(entry{rc: RowChange{Schema: ev.schema, Table: ev.table, Op: Insert, After: r}, when: ev.when}))
		}
	case Update:
		for i := 0; i+1 < len(ev.rows); i += 2 {
			a.add(a.stamped(entry{rc: RowChange{Schema: ev.schema, Table: ev.table, Op: Update,
				Before: ev.rows[i], After: ev.rows[i+1]}, when: ev.when}))
		}
	case Delete:
		p := a.pendingFor(t)
		for _, r := range ev.rows {
			key, _ := pkKey(r, p.cols)
			idx := a.base + len(a.buf)
			a.add(entry{rc: RowChange{Schema: ev.schema, Table: ev.table, Op: Delete, Before: r},
				waiting: true, key: key, when: ev.when})
			p.byKey[key] = append(p.byKey[key], idx)
		}
	}
}

// hasStamp reports whether r has the stamp columns schema apply adds to
// every replicated table.
func hasStamp(r Row) bool {
	_, ok := r[change.ColHLC]
	return ok
}

// stamped sets an insert's or update's Stamp, Origin and Meta from its
// after image.
func (a *assembler) stamped(e entry) entry {
	e.rc.Stamp, _ = toUint64(e.rc.After[change.ColHLC])
	e.rc.Origin = toOrigin(e.rc.After[change.ColOrigin])
	e.rc.Meta = metaText(e.rc.After[change.ColMeta])
	return e
}

// metaText is a _mlr_vv value as text ("" for NULL or absent).
func metaText(v any) string {
	switch x := v.(type) {
	case string:
		return x
	case []byte:
		return string(x)
	}
	return ""
}

func (a *assembler) add(e entry) {
	e.size = changeSize(&e.rc)
	a.buf = append(a.buf, e)
	a.bufBytes += e.size
}

// force gives the waiting delete at buf[i] the stamp derived from its
// event: its tombstone is not coming (or is too far away to wait for).
func (a *assembler) force(i int) {
	e := &a.buf[i]
	if !e.waiting {
		return
	}
	if p := a.pending[tableKey{e.rc.Schema, e.rc.Table}]; p != nil {
		a.dropPending(p, e.key, a.base+i)
	}
	e.waiting = false
	// Above the version it deleted and the peer's own entry in that
	// version's vector (a merge may keep a stamp below it), so the peer's
	// entry grows, as the triggers' floor makes it.
	prev, _ := toUint64(e.rc.Before[change.ColHLC])
	if m, err := change.ParseMeta(e.rc.Before[change.ColMeta]); err == nil {
		prev = max(prev, m.VV[a.peer])
	}
	e.rc.Stamp = max(derivedStamp(e.when), (prev+1)|hlc.BypassBit)
	e.rc.Origin = change.Origin(a.peer)
	a.unpaired++
	a.m.unpaired.Inc()
}

// derivedStamp is the stamp of a delete without a tombstone
// (docs/internals.md): (event seconds * 1000) << 16 | bypass bit.
func derivedStamp(when uint32) uint64 {
	return uint64(when)*1000<<16 | hlc.BypassBit
}

// firstWaiting returns the buffer index of the first waiting delete, or
// len(buf).
func (a *assembler) firstWaiting() int {
	if a.scan < a.base {
		a.scan = a.base
	}
	for a.scan-a.base < len(a.buf) && !a.buf[a.scan-a.base].waiting {
		a.scan++
	}
	return a.scan - a.base
}

// cut sends pieces while the buffer holds maxBytes or more.
func (a *assembler) cut(ctx context.Context, at Position) error {
	for a.bufBytes >= a.maxBytes {
		n := a.firstWaiting()
		var sz int64
		for _, e := range a.buf[:n] {
			sz += e.size
		}
		if sz < a.maxBytes/2 {
			// Mostly deletes waiting for their tombstones: wait for them
			// up to twice the bound, then stamp the oldest as unpaired.
			if a.bufBytes < 2*a.maxBytes {
				return nil
			}
			for n < len(a.buf) && sz < a.maxBytes/2 {
				a.force(n)
				sz += a.buf[n].size
				n++
			}
			if a.log != nil {
				a.log.Warn("deletes waited too long for their tombstones: stamped from the event time",
					zap.String("gtid", a.id), zap.Int("rows", n))
			}
		}
		if err := a.emit(ctx, n, false, Position{GTID: a.id, File: at.File, Pos: at.Pos}, a.began); err != nil {
			return err
		}
	}
	return nil
}

// commit ends the open transaction: deletes still waiting get derived
// stamps, and the rest is sent as the Last piece.
func (a *assembler) commit(ctx context.Context, pos Position, when time.Time) error {
	if !a.open {
		if err := a.begin(pos.GTID, when); err != nil {
			return err
		}
	}
	for i := range a.buf {
		a.force(i)
	}
	if a.unpaired > 0 && a.log != nil {
		a.log.Debug("deletes without tombstone stamped from the event time",
			zap.String("gtid", pos.GTID), zap.Int("rows", a.unpaired))
	}
	if err := a.emit(ctx, len(a.buf), true, pos, when); err != nil {
		return err
	}
	a.lastSeq = a.seq
	a.open = false
	a.buf = nil
	a.pending = nil
	a.skip = nil
	return nil
}

// rollback ends the open transaction without its changes (a ROLLBACK that
// the server logged for non-transactional changes): an empty Last piece
// keeps checkpoint progress.
func (a *assembler) rollback(ctx context.Context, pos Position, when time.Time) error {
	if a.open && a.piece > 0 && a.log != nil {
		a.log.Warn("transaction rolled back after pieces of it were emitted; its last piece is empty",
			zap.String("gtid", a.id))
	}
	a.buf, a.bufBytes = nil, 0
	return a.commit(ctx, pos, when)
}

// emit sends buf[:n] (filtered) as the next piece and drops it from the
// buffer. An empty piece that is not the last is not sent.
func (a *assembler) emit(ctx context.Context, n int, last bool, pos Position, when time.Time) error {
	changes := make([]RowChange, 0, n)
	var size, dropped, bypass int64
	for i := range a.buf[:n] {
		e := &a.buf[i]
		a.bufBytes -= e.size
		if a.filter.keep(e.rc.Origin, a.applied) {
			changes = append(changes, e.rc)
			size += e.size
			if e.rc.Op != Delete && hlc.Timestamp(e.rc.Stamp).Bypass() {
				bypass++
			}
		} else {
			dropped++
		}
		*e = entry{} // release the row maps
	}
	a.buf = a.buf[n:]
	a.base += n
	a.m.filtered.Add(float64(dropped))
	if bypass > 0 {
		a.m.bypass.Add(float64(bypass))
		if a.log != nil {
			// One line per transaction piece, never per row: an operator
			// sees that someone writes to the server directly.
			a.log.Info("rows written around the proxy (stamped by the server trigger)",
				zap.String("gtid", a.id), zap.Int64("rows", bypass))
		}
	}
	if !last && len(changes) == 0 {
		return nil
	}
	if len(changes) == 0 {
		changes = nil
	}
	piece := a.piece
	a.piece++
	if s := a.skip; s != nil && s.seq == a.seq && piece < s.pieces {
		if last {
			return fmt.Errorf("%w: transaction %s had %d pieces sent, now ends at piece %d", ErrReplayDiverged, a.id, s.pieces, piece)
		}
		a.m.resumed.Inc()
		return nil // sent before the reconnect
	}
	t := &Txn{
		Source:        a.peer,
		Applied:       a.applied,
		ForwardedFrom: a.forwardedFrom,
		Trace:         a.trace,
		Pos:           pos,
		Timestamp:     when,
		Seq:           a.seq,
		Piece:         piece,
		Last:          last,
		Changes:       changes,
		Size:          size,
	}
	if err := a.send(ctx, t); err != nil {
		return err
	}
	a.m.rows.Add(float64(len(changes)))
	a.m.bytes.Add(float64(size))
	if !last || piece > 0 {
		a.m.pieces.Inc()
	}
	if last {
		a.m.txns.Inc()
		a.m.lastCommit.Set(float64(when.Unix()))
	}
	return nil
}

// changeSize approximates the memory a row change holds.
func changeSize(rc *RowChange) int64 {
	n := int64(96 + len(rc.Schema) + len(rc.Table))
	for _, r := range []Row{rc.Before, rc.After} {
		for k, v := range r {
			n += int64(48 + len(k))
			switch x := v.(type) {
			case string:
				n += int64(len(x))
			case []byte:
				n += int64(len(x))
			}
		}
	}
	return n
}

// pkKey encodes the values of cols in r as a map key. Integers compare by
// value whatever their Go type, strings and byte slices alike.
func pkKey(r Row, cols []string) (string, bool) {
	if len(cols) == 0 {
		return "", false
	}
	b := make([]byte, 0, 16*len(cols))
	for _, c := range cols {
		v, ok := r[c]
		if !ok {
			return "", false
		}
		switch x := v.(type) {
		case nil:
			b = append(b, 'N')
		case int64:
			if x >= 0 {
				b = append(b, 'n')
				b = strconv.AppendUint(b, uint64(x), 10)
			} else {
				b = append(b, 'i')
				b = strconv.AppendInt(b, x, 10)
			}
		case uint64:
			b = append(b, 'n')
			b = strconv.AppendUint(b, x, 10)
		case string:
			b = append(b, 's')
			b = strconv.AppendInt(b, int64(len(x)), 10)
			b = append(b, ':')
			b = append(b, x...)
		case []byte:
			b = append(b, 's')
			b = strconv.AppendInt(b, int64(len(x)), 10)
			b = append(b, ':')
			b = append(b, x...)
		default:
			b = fmt.Appendf(b, "%T:%v", v, v)
		}
		b = append(b, 0)
	}
	return string(b), true
}

func toUint64(v any) (uint64, bool) {
	switch x := v.(type) {
	case uint64:
		return x, true
	case int64:
		if x >= 0 {
			return uint64(x), true
		}
	}
	return 0, false
}

func toOrigin(v any) change.Origin {
	if u, ok := toUint64(v); ok && u <= math.MaxUint32 {
		return change.Origin(u)
	}
	return 0
}

// traceparent is a mlr.traces value as text, "" unless it has a
// traceparent's length (the applier parses it strictly).
func traceparent(v any) string {
	var s string
	switch x := v.(type) {
	case string:
		s = x
	case []byte:
		s = string(x)
	}
	if len(s) != 55 {
		return ""
	}
	return s
}
