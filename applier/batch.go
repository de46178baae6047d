package applier

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/change"
	"github.com/mlproxy/mlproxy/conflict"
	"github.com/mlproxy/mlproxy/hlc"
	"github.com/mlproxy/mlproxy/schema"
)

// Set-based apply.
//
// The changes of a batch (or of one piece of a large transaction) are
// applied as one or more segments. A segment is applied in three steps:
//
//  1. read: for each table, the local versions (live row and tombstone) of
//     every key the segment's changes address are read and locked with one
//     query per chunk of keys;
//  2. decide: the changes are decided in source order, each against the
//     in-memory current version of its key, which the decision then
//     updates, so several changes to one key see each other's outcome
//     exactly as one-by-one apply would;
//  3. write: the net result per key is written with multi-row statements,
//     per table in the order deletes, inserts, updates (upserts of rows that
//     existed), tombstones; then the conflict log rows, in decision order.
//
// A segment's result in the tables is what applying its changes one after
// another leaves: a key whose initial row was deleted and that ends live is
// deleted and re-inserted (as one-by-one apply does), a tombstone is
// replaced by the rule's merge of it and the remote version, an existing
// row is updated only in the columns the changes wrote, and every written
// version carries its metadata (_mlr_vv) as the rule left it.
//
// An update that changes the primary key is a version of the new key; the
// old key's removal arrives beside it as that key's tombstone (the update
// trigger writes one), a delete of its own: each key is resolved against
// its own local state, so a move meets concurrent writes of either key
// under the rule like any other change.
// When a multi-row write meets a key constraint (a secondary unique key
// swapped between rows within the segment, a foreign key whose order of
// writes mattered), the whole batch is rolled back and applied again with
// one change per segment: the one-by-one semantics, errors included. A
// transaction streamed in pieces cannot be applied again from memory: such
// a failure in one of its pieces stops the applier instead, although one
// change at a time would have succeeded.
//
// Keys are matched by their binlog values; two spellings of one key that
// the column's collation equates (case, trailing spaces) are merged when
// the local server has the row or its tombstone.

// maxChunkRows bounds the rows of one multi-row statement (a power of two:
// statements are prepared once per size, sizes are powers of two).
const maxChunkRows = 256

// maxChunkBytes bounds the argument bytes of one multi-row statement, well
// under the smallest max_allowed_packet worth supporting (4 MiB).
const maxChunkBytes = 1 << 20

// deleteChunkBytes bounds the deleted rows' bytes between a chunk's
// deletes and its tombstones in the binlog: under half the smallest piece
// a tailer cuts (64 KiB), so the tailer always pairs them.
const deleteChunkBytes = 24 << 10

// errSplit marks a multi-row write refused by a key constraint: the batch
// is applied again one change at a time.
var errSplit = errors.New("set-based write refused by a key constraint")

// item is one remote change of a segment.
type item struct {
	rc  *binlog.RowChange
	txn *binlog.Txn
	tk  tableKey
	pk  []any  // the key the change addresses (its old key for an update)
	key string // pk encoded
	// remote is the version the change carries, as the rule sees it.
	remote conflict.Version
}

// keyState is the in-memory local version of one key during a segment.
type keyState struct {
	pk       []any
	live     *conflict.Version // the live row, nil when none
	tomb     conflict.Version  // the tombstone (Deleted), or zero
	initLive bool              // the server had a live row when read
	initSize int               // that row's approximate size in a binlog event
	removed  bool              // that initial row was deleted in the segment
	created  bool              // live was inserted in the segment
	dirty    bool              // live was written in the segment
	cols     map[string]bool   // columns written since live was created
	tombSet  bool              // the tombstone was written in the segment
}

func (k *keyState) version() conflict.Version {
	if k.live != nil {
		return *k.live
	}
	return k.tomb
}

// tableSeg gathers one table's keys in a segment.
type tableSeg struct {
	tk    tableKey
	items []*item
	keys  []string             // distinct item keys, first appearance order
	pks   map[string][]any     // item key → its values
	state map[string]*keyState // item key → state (merged spellings share one)
	order []*keyState          // distinct states, first appearance order
}

// conflictRec is a conflict to log.
type conflictRec struct {
	p      *plan
	pk     []any
	local  conflict.Version
	remote conflict.Version
	d      conflict.Decision
	shadow *shadowResult // what the table's shadow rule would have done; nil without one
}

// segResult is what a segment adds to the batch once it is written.
type segResult struct {
	rows     map[binlog.Op]uint64
	stamps   []hlc.Timestamp
	conflict []conflictRec
	settled  []conflictRec // keys of manual tables a later version reached
}

// applyTxns applies txns (whole source transactions, or one piece of one)
// inside the open local transaction. serial applies one change per
// segment. Errors name the peer, schema.table and position.
func (a *Applier) applyTxns(ctx context.Context, conn *sql.Conn, st *batchState, txns []*binlog.Txn, serial bool) error {
	if st.started.IsZero() {
		st.started = time.Now()
	}
	var seg []*item
	var held []heldChange
	flush := func() error {
		if len(seg) == 0 {
			return nil
		}
		err := a.applySegment(ctx, conn, st, seg, serial)
		seg = seg[:0]
		return err
	}
	for _, t := range txns {
		for i := range t.Changes {
			// A change whose origin is this region arrives only when a
			// peer forwards its merge of several writes (star, ring):
			// resolving it against the local version keeps what is new
			// in it and changes nothing otherwise.
			rc := &t.Changes[i]
			if a.changeHook != nil {
				a.changeHook(rc)
			}
			if st.park && a.stoppedTable(rc) != nil {
				held = append(held, heldChange{t: t, rc: rc})
				continue
			}
			it, err := a.newItem(ctx, t, rc)
			if err != nil {
				err = drift(&item{rc: rc, txn: t, tk: tableKey{rc.Schema, rc.Table}}, err)
				return fmt.Errorf("apply %s %s.%s from peer %s at gtid %s (%s:%d): %w",
					rc.Op, rc.Schema, rc.Table, a.peer, t.Pos.GTID, t.Pos.File, t.Pos.Pos, err)
			}
			if serial {
				if err := a.applyGuarded(ctx, conn, st, it); err != nil {
					return err
				}
				continue
			}
			seg = append(seg, it)
		}
	}
	if err := flush(); err != nil {
		return err
	}
	if err := a.writeHeld(ctx, conn, st, held); err != nil {
		return err
	}
	for _, t := range txns {
		st.gtid = mergeGTID(st.gtid, t.Pos.GTID)
		st.last = t
		st.applied(t)
		if t.Last {
			st.txns++
		}
	}
	return nil
}

// newItem resolves rc's plan and the key it addresses.
func (a *Applier) newItem(ctx context.Context, t *binlog.Txn, rc *binlog.RowChange) (*item, error) {
	p, err := a.planFor(ctx, rc)
	if err != nil {
		return nil, err
	}
	// The key of the version the change carries: the after image's (for
	// an update that changes the key, the new key), the before image's for
	// a delete.
	addr := rc.After
	if rc.Op == binlog.Delete {
		addr = rc.Before
	}
	pk, err := p.pk(addr)
	if err != nil {
		return nil, err
	}
	rv, err := p.remote(rc, t.Source)
	if err != nil {
		return nil, err
	}
	return &item{rc: rc, txn: t, tk: tableKey{rc.Schema, rc.Table}, pk: pk, key: encodeKey(pk), remote: rv}, nil
}

// segErr wraps an error of a segment's statements with where it happened.
func (a *Applier) segErr(seg []*item, tk tableKey, err error) error {
	t := seg[len(seg)-1].txn
	return fmt.Errorf("apply %d changes (%s) from peer %s at gtid %s (%s:%d): %w",
		len(seg), tk, a.peer, t.Pos.GTID, t.Pos.File, t.Pos.Pos, err)
}

// applySegment reads, decides and writes one segment (see the top of this
// file), then adds its counts to st and moves the clock.
func (a *Applier) applySegment(ctx context.Context, conn *sql.Conn, st *batchState, seg []*item, serial bool) error {
	var order []*tableSeg
	tables := map[tableKey]*tableSeg{}
	for _, it := range seg {
		ts := tables[it.tk]
		if ts == nil {
			ts = &tableSeg{tk: it.tk, pks: map[string][]any{}, state: map[string]*keyState{}}
			tables[it.tk] = ts
			order = append(order, ts)
		}
		ts.items = append(ts.items, it)
		if _, ok := ts.pks[it.key]; !ok {
			ts.pks[it.key] = it.pk
			ts.keys = append(ts.keys, it.key)
		}
	}
	for _, ts := range order {
		if err := a.readTable(ctx, conn, ts); err != nil {
			return a.segErr(seg, ts.tk, fmt.Errorf("read local versions: %w", err))
		}
	}

	res := segResult{rows: map[binlog.Op]uint64{}}
	for _, it := range seg {
		ts := tables[it.tk]
		p := a.plans[it.tk]
		ks := ts.state[it.key]
		local := ks.version()
		local.Home = a.cfg.Self
		d := p.rule.Resolve(local, it.remote)
		if err := ks.apply(p, d); err != nil {
			return a.segErr(seg, it.tk, err)
		}
		if d.Conflict {
			rec := conflictRec{p: p, pk: it.pk, local: local, remote: it.remote, d: d}
			if p.shadow != nil {
				rec.shadow = shadowOf(p.shadow, local, it.remote, d)
			}
			res.conflict = append(res.conflict, rec)
		} else if p.rule.Name() == "manual" && !local.Absent() {
			// A version causally after the local one: a resolution made in
			// another region (or a later write) settles this key's pending
			// conflicts here too.
			res.settled = append(res.settled, conflictRec{p: p, pk: it.pk, remote: it.remote})
		}
		res.rows[it.rc.Op]++
		res.stamps = append(res.stamps, max(it.remote.Stamp, hlc.Timestamp(it.remote.Meta.VV.Max())))
	}

	for _, ts := range order {
		if err := a.writeTable(ctx, conn, a.plans[ts.tk], ts); err != nil {
			if !serial && constraintErr(err) {
				err = fmt.Errorf("%w: %w", errSplit, err)
			}
			return a.segErr(seg, ts.tk, err)
		}
	}
	if err := a.logConflicts(ctx, conn, res.conflict); err != nil {
		return a.segErr(seg, seg[0].tk, fmt.Errorf("log conflicts: %w", err))
	}
	if err := a.settleConflicts(ctx, conn, res.settled); err != nil {
		return a.segErr(seg, seg[0].tk, fmt.Errorf("settle conflicts: %w", err))
	}

	for op, n := range res.rows {
		st.rows[op] += n
	}
	for _, c := range res.conflict {
		k := conflictKey{db: c.p.t.Schema, table: c.p.t.Name, rule: c.p.rule.Name(), outcome: c.d.Outcome.String()}
		if c.shadow != nil {
			k.shadow, k.differs = c.p.shadow.Name(), c.shadow.differs
		}
		st.confl = append(st.confl, k)
	}
	for _, s := range res.stamps {
		if s > st.maxStamp {
			st.maxStamp = s
		}
		// The stamp is data: it applies even when the clock refuses to follow.
		if err := a.clock.Update(s); err != nil {
			st.ahead++
			st.aheadErr = err
		}
	}
	return nil
}

// constraintErr reports a duplicate key or foreign key failure.
func constraintErr(err error) bool {
	var me *mysql.MySQLError
	if !errors.As(err, &me) {
		return false
	}
	switch me.Number {
	case 1062, // ER_DUP_ENTRY
		1451, // ER_ROW_IS_REFERENCED_2
		1452: // ER_NO_REFERENCED_ROW_2
		return true
	}
	return false
}

// errNumber is err's server error number, 0 if none (logged instead of the
// message, which may quote row values).
func errNumber(err error) uint16 {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		return me.Number
	}
	return 0
}

// remote is the version rc carries, as the rule sees it. source is the
// region whose binlog it was read from (the version's Home). A delete
// whose tombstone did not arrive (no metadata) takes the deleted row's
// metadata with its own stamp added, and keeps the row's values for the
// merge columns.
func (p *plan) remote(rc *binlog.RowChange, source uint16) (conflict.Version, error) {
	v := conflict.Version{Exists: rc.Op != binlog.Delete, Deleted: rc.Op == binlog.Delete,
		Stamp: hlc.Timestamp(rc.Stamp), Origin: rc.Origin, Home: source}
	if v.Exists {
		v.Row = p.userRow(rc.After)
	}
	raw := any(rc.Meta)
	if rc.Meta == "" && rc.Op == binlog.Delete {
		raw = rc.Before[schema.ColMeta]
	}
	m, err := change.ParseMeta(raw)
	if err != nil {
		return v, fmt.Errorf("metadata of a version from region %d: %w", source, err)
	}
	if rc.Meta == "" && rc.Op == binlog.Delete {
		if r := rc.Origin.Region(); m.VV[r] < rc.Stamp {
			m.VV[r] = rc.Stamp
		}
		m.Own = nil
		m.Values = p.userRow(rc.Before)
	}
	v.Meta = m
	return v, nil
}

// apply carries decision d into the key's in-memory version, exactly as
// writing it would change what a later read returns.
func (k *keyState) apply(p *plan, d conflict.Decision) error {
	w := d.Write
	switch w.Action {
	case conflict.Nothing:
	case conflict.WriteRow:
		cols := p.writeColumns(w.Row)
		var row map[string]any
		if k.cols == nil {
			k.cols = map[string]bool{}
		}
		if k.live != nil {
			row = make(map[string]any, len(k.live.Row)+len(cols))
			for c, v := range k.live.Row {
				row[c] = v
			}
		} else {
			row = make(map[string]any, len(cols))
			k.created = true
			k.cols = map[string]bool{}
		}
		for _, c := range cols {
			row[c] = w.Row[c]
			k.cols[c] = true
		}
		k.live = &conflict.Version{Exists: true, Stamp: w.Stamp, Origin: w.Origin, Row: row, Meta: w.Meta}
		k.dirty = true
	case conflict.WriteDelete:
		if k.live != nil {
			k.live, k.dirty, k.created, k.cols = nil, false, false, nil
			if k.initLive {
				k.removed = true
			}
		}
		// The decision is the merge of the tombstone that was here and
		// the remote version: it replaces the tombstone.
		k.tomb = conflict.Version{Deleted: true, Stamp: w.Stamp, Origin: w.Origin, Meta: w.Meta}
		k.tombSet = true
	default:
		return fmt.Errorf("unknown action %d", w.Action)
	}
	return nil
}

// encodeKey encodes primary key values as a map key. Text and byte
// strings encode alike (the decoder and the driver differ in which they
// use).
func encodeKey(vs []any) string {
	var b strings.Builder
	for _, v := range vs {
		switch x := localValue(v).(type) {
		case string:
			fmt.Fprintf(&b, "s%d:%s", len(x), x)
		case nil:
			b.WriteString("n;")
		default:
			fmt.Fprintf(&b, "%T:%v;", x, x)
		}
	}
	return b.String()
}

// readTable reads and locks the local versions of ts's keys and sets up
// their states. A read that fails because the local table lost a column
// re-reads the table and reads again (nothing was written yet).
func (a *Applier) readTable(ctx context.Context, conn *sql.Conn, ts *tableSeg) error {
	p := a.plans[ts.tk]
	err := a.readVersions(ctx, conn, p, ts)
	if badField(err) {
		rc := ts.items[0].rc
		if p, err = a.reloadPlan(ctx, rc, "the local table lost a column"); err == nil {
			for _, it := range ts.items {
				if col := p.unknownColumn(it.rc); col != "" {
					return drift(it, fmt.Errorf("table %s.%s has no column %s: %w", rc.Schema, rc.Table, col, ErrUnknownColumn))
				}
			}
			err = a.readVersions(ctx, conn, p, ts)
		}
	}
	return err
}

// readVersions runs p's lookup over ts's keys in chunks. Keys the server
// finds as one row (or tombstone) share one state.
func (a *Applier) readVersions(ctx context.Context, conn *sql.Conn, p *plan, ts *tableSeg) error {
	ts.state = map[string]*keyState{}
	ts.order = ts.order[:0]
	byDB := map[string]*keyState{}
	n, m := len(p.user), len(p.t.PK)
	pkUser := p.pkUserIndex()
	for start := 0; start < len(ts.keys); {
		cnt := min(len(ts.keys)-start, maxChunkRows)
		size := pow2ceil(cnt)
		text := p.sized("lookup", nil, size, p.lookupSQL)
		if a.nowait {
			text = p.sized("lookup-nowait", nil, size, p.lookupNowaitSQL)
		}
		s, err := p.stmt(ctx, conn, text)
		if err != nil {
			return err
		}
		args := make([]any, 0, size*m)
		for i := 0; i < size; i++ {
			args = append(args, ts.pks[ts.keys[start+min(i, cnt-1)]]...)
		}
		rows, err := s.QueryContext(ctx, args...)
		if err != nil {
			return err
		}
		vals := make([]any, 1+n+3+m+3)
		ptrs := make([]any, len(vals))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		for rows.Next() {
			for i := range vals {
				vals[i] = nil
			}
			if err := rows.Scan(ptrs...); err != nil {
				rows.Close()
				return err
			}
			i, _ := toUint64(vals[0])
			if int(i) >= cnt {
				continue // padding
			}
			key := ts.keys[start+int(i)]
			if ts.state[key] != nil {
				continue
			}
			ks := &keyState{pk: ts.pks[key]}
			dbKey := ""
			if h, ok := toUint64(vals[1+n]); ok {
				row := make(map[string]any, n)
				for j, c := range p.user {
					row[c.Name] = localValue(vals[1+j])
				}
				o, _ := toUint64(vals[1+n+1])
				meta, err := change.ParseMeta(vals[1+n+2])
				if err != nil {
					rows.Close()
					return fmt.Errorf("local row of %s.%s: %w", p.t.Schema, p.t.Name, err)
				}
				ks.live = &conflict.Version{Exists: true, Stamp: hlc.Timestamp(h), Origin: change.Origin(o), Row: row, Meta: meta}
				ks.initLive = true
				ks.initSize = argBytes(vals[1 : 1+n+3])
				if pkUser != nil {
					dbKey = "d" + encodeKey(pick(vals[1:], pkUser))
				}
			}
			if h, ok := toUint64(vals[1+n+3+m]); ok {
				o, _ := toUint64(vals[1+n+3+m+1])
				meta, err := change.ParseMeta(vals[1+n+3+m+2])
				if err != nil {
					rows.Close()
					return fmt.Errorf("local tombstone of %s.%s: %w", p.t.Schema, p.t.Name, err)
				}
				ks.tomb = conflict.Version{Deleted: true, Stamp: hlc.Timestamp(h), Origin: change.Origin(o), Meta: meta}
				if dbKey == "" {
					dbKey = "d" + encodeKey(vals[1+n+3:1+n+3+m])
				}
			}
			if dbKey != "" {
				if prev := byDB[dbKey]; prev != nil {
					ts.state[key] = prev
					continue
				}
				byDB[dbKey] = ks
			}
			ts.state[key] = ks
			ts.order = append(ts.order, ks)
		}
		if err := rows.Close(); err != nil {
			return err
		}
		if err := rows.Err(); err != nil {
			return err
		}
		start += cnt
	}
	for _, key := range ts.keys {
		if ts.state[key] == nil {
			return fmt.Errorf("lookup of %s.%s returned no row for a key", p.t.Schema, p.t.Name)
		}
	}
	return nil
}

// pick returns vs at the indexes ix.
func pick(vs []any, ix []int) []any {
	out := make([]any, len(ix))
	for i, j := range ix {
		out[i] = vs[j]
	}
	return out
}

// pow2ceil is the least power of two ≥ n (n ≥ 1).
func pow2ceil(n int) int {
	p := 1
	for p < n {
		p <<= 1
	}
	return p
}

// pow2floor is the greatest power of two ≤ n (n ≥ 1).
func pow2floor(n int) int {
	p := 1
	for p*2 <= n {
		p <<= 1
	}
	return p
}

// chunkRows is the largest power of two of rows of about rowBytes each
// that fits one statement.
func chunkRows(rowBytes int) int {
	if rowBytes <= 0 {
		return maxChunkRows
	}
	return min(maxChunkRows, pow2floor(max(1, maxChunkBytes/rowBytes)))
}

// argBytes estimates the size of a row's arguments on the wire.
func argBytes(vs []any) int {
	n := 0
	for _, v := range vs {
		switch x := v.(type) {
		case string:
			n += len(x) + 4
		case []byte:
			n += len(x) + 4
		default:
			n += 9
		}
	}
	return n
}

// execRows runs the multi-row statement built by text(size) over rows, in
// chunks whose sizes are powers of two. pad repeats the last row to fill a
// chunk (for statements where a repeated row changes nothing); otherwise
// the rows are split into chunks of exactly-fitting sizes.
func (a *Applier) execRows(ctx context.Context, stmt func(size int) (*sql.Stmt, error), rows [][]any, pad bool) error {
	if len(rows) == 0 {
		return nil
	}
	per := maxChunkRows
	for _, r := range rows {
		per = min(per, chunkRows(argBytes(r)))
	}
	for start := 0; start < len(rows); {
		cnt := min(len(rows)-start, per)
		size := cnt
		if pad {
			size = pow2ceil(cnt)
		} else {
			size = pow2floor(cnt)
			cnt = size
		}
		s, err := stmt(size)
		if err != nil {
			return err
		}
		args := make([]any, 0, size*len(rows[start]))
		for i := 0; i < size; i++ {
			args = append(args, rows[start+min(i, cnt-1)]...)
		}
		if _, err := s.ExecContext(ctx, args...); err != nil {
			return err
		}
		start += cnt
	}
	return nil
}

// writeTable writes the net result of ts's keys.
func (a *Applier) writeTable(ctx context.Context, conn *sql.Conn, p *plan, ts *tableSeg) error {
	// A deleted row and its tombstone: written close together, see below.
	type deletion struct {
		pk, tomb []any
		size     int
	}
	var dels []deletion
	var tombs [][]any
	type group struct {
		cols []string
		rows [][]any
	}
	var ins, ups []*group
	add := func(gs []*group, ks *keyState) []*group {
		cols := make([]string, 0, len(ks.cols))
		for _, c := range p.user {
			if ks.cols[c.Name] {
				cols = append(cols, c.Name)
			}
		}
		r := make([]any, 0, len(cols)+2)
		for _, c := range cols {
			r = append(r, ks.live.Row[c])
		}
		r = append(r, uint64(ks.live.Stamp), uint32(ks.live.Origin), ks.live.Meta.Encode())
		for _, g := range gs {
			if equalCols(g.cols, cols) {
				g.rows = append(g.rows, r)
				return gs
			}
		}
		return append(gs, &group{cols: cols, rows: [][]any{r}})
	}
	for _, ks := range ts.order {
		var tomb []any
		if ks.tombSet {
			tomb = append(append(make([]any, 0, len(ks.pk)+3), ks.pk...),
				uint64(ks.tomb.Stamp), uint32(ks.tomb.Origin), ks.tomb.Meta.Encode())
		}
		if ks.initLive && ks.removed {
			dels = append(dels, deletion{pk: ks.pk, tomb: tomb, size: ks.initSize})
		} else if tomb != nil {
			tombs = append(tombs, tomb)
		}
		if ks.live != nil && ks.dirty {
			if ks.created {
				ins = add(ins, ks)
			} else {
				ups = add(ups, ks)
			}
		}
	}
	prep := func(kind string, cols []string, build func([]string, int) string) func(int) (*sql.Stmt, error) {
		return func(size int) (*sql.Stmt, error) {
			return p.stmt(ctx, conn, p.sized(kind, cols, size, build))
		}
	}
	// Deletes, each chunk followed at once by its tombstones: a tailer
	// reading this region's binlog (a star spoke, the next region of a
	// ring) pairs a delete with its tombstone only while they are close
	// (within about one piece of its relay); a delete without its
	// tombstone would get a stamp derived from the event instead.
	for start := 0; start < len(dels); {
		end, size := start, 0
		for end < len(dels) && end-start < maxChunkRows && (end == start || size+dels[end].size <= deleteChunkBytes) {
			size += dels[end].size
			end++
		}
		var pks, ts [][]any
		for _, d := range dels[start:end] {
			pks = append(pks, d.pk)
			if d.tomb != nil {
				ts = append(ts, d.tomb)
			}
		}
		if err := a.execRows(ctx, prep("delete", nil, p.deleteSQL), pks, true); err != nil {
			return fmt.Errorf("delete rows: %w", err)
		}
		if err := a.execRows(ctx, prep("tomb", nil, p.tombSQL), ts, true); err != nil {
			return fmt.Errorf("write tombstones: %w", err)
		}
		start = end
	}
	for _, g := range ins {
		if err := a.execRows(ctx, prep("insert", g.cols, p.insertRowsSQL), g.rows, false); err != nil {
			return fmt.Errorf("insert rows: %w", err)
		}
	}
	for _, g := range ups {
		if err := a.execRows(ctx, prep("upsert", g.cols, p.upsertRowsSQL), g.rows, true); err != nil {
			return fmt.Errorf("update rows: %w", err)
		}
	}
	if err := a.execRows(ctx, prep("tomb", nil, p.tombSQL), tombs, true); err != nil {
		return fmt.Errorf("write tombstones: %w", err)
	}
	return nil
}

func equalCols(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// settleConflictSQL closes the pending conflicts of one key that a
// causally later version has reached.
const settleConflictSQL = "UPDATE mlr.conflicts SET resolved_at = NOW(6), resolution = ? " +
	"WHERE db = ? AND tbl = ? AND pk = ? AND outcome = 'pending' AND resolved_at IS NULL"

// settleConflicts marks resolved the pending conflicts of keys that a
// version causally later than the local one reached (manual tables only:
// only they leave conflicts pending).
func (a *Applier) settleConflicts(ctx context.Context, conn *sql.Conn, recs []conflictRec) error {
	for _, c := range recs {
		pkJSON, err := jsonText(c.pk)
		if err != nil {
			return err
		}
		why := fmt.Sprintf("superseded by %s at %d", c.remote.Origin, uint64(c.remote.Stamp))
		st, err := a.stmt(ctx, conn, settleConflictSQL)
		if err != nil {
			return err
		}
		if _, err := st.ExecContext(ctx, why, c.p.t.Schema, c.p.t.Name, pkJSON); err != nil {
			return err
		}
	}
	return nil
}

// logConflicts records the segment's conflicts, in decision order: both
// versions (NULL row = absent or deleted), the rule and the outcome, and,
// for tables with a shadow rule, what it would have done.
func (a *Applier) logConflicts(ctx context.Context, conn *sql.Conn, recs []conflictRec) error {
	var rows, shadowed [][]any
	for _, c := range recs {
		pkJSON, err := jsonText(c.pk)
		if err != nil {
			return err
		}
		var localHLC, localOrigin, localRow, remoteRow, localMeta any
		if c.local.Exists || c.local.Deleted {
			localHLC, localOrigin = uint64(c.local.Stamp), uint32(c.local.Origin)
			localMeta = c.local.Meta.Encode()
		}
		if c.local.Exists {
			if localRow, err = jsonText(c.local.Row); err != nil {
				return err
			}
		}
		if c.remote.Row != nil {
			if remoteRow, err = jsonText(c.remote.Row); err != nil {
				return err
			}
		}
		row := []any{a.cfg.Peer.ID, c.p.t.Schema, c.p.t.Name, pkJSON, c.p.rule.Name(),
			localHLC, localOrigin, uint64(c.remote.Stamp), uint32(c.remote.Origin), localRow, remoteRow, localMeta, c.remote.Meta.Encode(), c.d.Outcome.String()}
		if c.shadow == nil {
			rows = append(rows, row)
			continue
		}
		var shadowRow any
		if c.shadow.row != nil {
			if shadowRow, err = jsonText(c.shadow.row); err != nil {
				return err
			}
		}
		shadowed = append(shadowed, append(row, c.p.shadow.Name(), c.shadow.d.Outcome.String(), shadowRow, c.shadow.differs))
	}
	if err := a.execRows(ctx, func(size int) (*sql.Stmt, error) {
		return a.stmt(ctx, conn, insertConflictSQL+strings.Repeat(", "+conflictValues, size-1))
	}, rows, false); err != nil {
		return err
	}
	return a.execRows(ctx, func(size int) (*sql.Stmt, error) {
		return a.stmt(ctx, conn, insertShadowConflictSQL+strings.Repeat(", "+shadowConflictValues, size-1))
	}, shadowed, false)
}
