package applier

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"unicode/utf8"

	"github.com/go-sql-driver/mysql"
	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/conflict"
	"github.com/mlproxy/mlproxy/hlc"
	"github.com/mlproxy/mlproxy/schema"
)

// applyTxn applies one source transaction (or one piece of it) inside the
// open local transaction. Errors name the peer, schema.table and position.
func (a *Applier) applyTxn(ctx context.Context, conn *sql.Conn, st *batchState, t *binlog.Txn) error {
	for i := range t.Changes {
		rc := &t.Changes[i]
		if rc.Origin == a.cfg.Self {
			st.skipped++ // the tailer filters these; never apply our own change
			continue
		}
		if a.changeHook != nil {
			a.changeHook(rc)
		}
		if err := a.applyChange(ctx, conn, st, rc); err != nil {
			return fmt.Errorf("apply %s %s.%s from peer %s at gtid %s (%s:%d): %w",
				rc.Op, rc.Schema, rc.Table, a.peer, t.Pos.GTID, t.Pos.File, t.Pos.Pos, err)
		}
	}
	st.gtid = mergeGTID(st.gtid, t.Pos.GTID)
	st.last = t
	if t.Last {
		st.txns++
	}
	return nil
}

// applyChange gathers the inputs of one decision (local version, remote
// change), lets the table's rule decide, and writes the outcome.
func (a *Applier) applyChange(ctx context.Context, conn *sql.Conn, st *batchState, rc *binlog.RowChange) error {
	p, err := a.planFor(ctx, rc)
	if err != nil {
		return err
	}
	addr := rc.Before // the row the change addresses (its old key)
	if rc.Op == binlog.Insert {
		addr = rc.After
	}
	pk, err := p.pk(addr)
	if err != nil {
		return err
	}
	local, err := a.readLocal(ctx, conn, p, pk)
	if badField(err) {
		// The lookup is the first statement of the change: nothing was
		// written yet, so re-read the table and look again.
		if p, err = a.reloadPlan(ctx, rc, "the local table lost a column"); err == nil {
			if col := p.unknownColumn(rc); col != "" {
				return fmt.Errorf("table %s.%s has no column %s: %w", rc.Schema, rc.Table, col, ErrUnknownColumn)
			}
			local, err = a.readLocal(ctx, conn, p, pk)
		}
	}
	if err != nil {
		return fmt.Errorf("read local version: %w", err)
	}
	ch := conflict.Change{
		Op:          rc.Op,
		PrevUnknown: rc.PrevUnknown,
		Stamp:       hlc.Timestamp(rc.Stamp),
		Origin:      rc.Origin,
		Row:         p.userRow(rc.After),
		Before:      p.userRow(rc.Before),
	}
	if rc.Op != binlog.Insert && !rc.PrevUnknown {
		h, okH := toUint64(rc.Before[schema.ColHLC])
		o, okO := toUint64(rc.Before[schema.ColOrigin])
		if okH && okO {
			ch.Prev = conflict.Version{Exists: true, Stamp: hlc.Timestamp(h), Origin: uint16(o), Row: ch.Before}
		} else {
			ch.PrevUnknown = true // a before image without stamps
		}
	}

	d := p.rule.Resolve(local, ch)
	if err := a.write(ctx, conn, p, pk, local, d); err != nil {
		return fmt.Errorf("write %s outcome: %w", d.Outcome, err)
	}
	if d.Conflict {
		if err := a.logConflict(ctx, conn, p, pk, local, ch, d); err != nil {
			return fmt.Errorf("log conflict: %w", err)
		}
		st.confl = append(st.confl, conflictKey{p.t.Schema, p.t.Name, p.rule.Name(), d.Outcome.String()})
	}
	st.rows[rc.Op]++
	if ch.Stamp > st.maxStamp {
		st.maxStamp = ch.Stamp
	}
	// The stamp is data: it applies even when the clock refuses to follow.
	if err := a.clock.Update(ch.Stamp); err != nil {
		st.ahead++
		a.ahead = err
	}
	return nil
}

// planFor returns the compiled plan of rc's table, re-reading the table
// when rc names a column the plan does not know (DDL at the source first).
func (a *Applier) planFor(ctx context.Context, rc *binlog.RowChange) (*plan, error) {
	k := tableKey{rc.Schema, rc.Table}
	p := a.plans[k]
	if p == nil {
		t, rule, err := a.tables.Table(ctx, rc.Schema, rc.Table)
		if err != nil {
			return nil, fmt.Errorf("resolve table: %w", err)
		}
		if p, err = newPlan(t, rule); err != nil {
			return nil, err
		}
		a.plans[k] = p
	}
	col := p.unknownColumn(rc)
	if col == "" {
		return p, nil
	}
	np, err := a.reloadPlan(ctx, rc, "a change named an unknown column")
	if err != nil {
		return nil, err
	}
	if col := np.unknownColumn(rc); col != "" {
		return nil, fmt.Errorf("table %s.%s has no column %s: %w", rc.Schema, rc.Table, col, ErrUnknownColumn)
	}
	return np, nil
}

// reloadPlan re-reads rc's table after DDL and replaces its plan (closing
// the old plan's statements).
func (a *Applier) reloadPlan(ctx context.Context, rc *binlog.RowChange, why string) (*plan, error) {
	k := tableKey{rc.Schema, rc.Table}
	t, rule, err := a.tables.Reload(ctx, rc.Schema, rc.Table)
	if err != nil {
		return nil, fmt.Errorf("re-read table: %w", err)
	}
	np, err := newPlan(t, rule)
	if err != nil {
		return nil, err
	}
	if p := a.plans[k]; p != nil {
		p.closeStmts()
	}
	a.plans[k] = np
	a.log.Info("table re-read: "+why, zap.String("schema", rc.Schema), zap.String("table", rc.Table))
	return np, nil
}

// badField reports the server's "unknown column" error: the local table
// lost a column the plan names (DDL here since the plan was built).
func badField(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1054 // ER_BAD_FIELD_ERROR
}

// readLocal reads and locks the local version of the row with primary key
// pk: the live row, else its tombstone, else nothing. Locking the
// tombstone (or the gap where it would be) keeps a concurrent local delete
// or insert from slipping between the read and the write.
func (a *Applier) readLocal(ctx context.Context, conn *sql.Conn, p *plan, pk []any) (conflict.Version, error) {
	s, err := p.stmt(ctx, conn, p.lookup)
	if err != nil {
		return conflict.Version{}, err
	}
	n := len(p.user)
	vals := make([]any, n+4)
	ptrs := make([]any, len(vals))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if err := s.QueryRowContext(ctx, pk...).Scan(ptrs...); err != nil {
		return conflict.Version{}, err
	}
	if h, ok := toUint64(vals[n]); ok {
		row := make(map[string]any, n)
		for i, c := range p.user {
			row[c.Name] = localValue(vals[i])
		}
		o, _ := toUint64(vals[n+1])
		return conflict.Version{Exists: true, Stamp: hlc.Timestamp(h), Origin: uint16(o), Row: row}, nil
	}
	if h, ok := toUint64(vals[n+2]); ok {
		o, _ := toUint64(vals[n+3])
		return conflict.Version{Deleted: true, Stamp: hlc.Timestamp(h), Origin: uint16(o)}, nil
	}
	return conflict.Version{}, nil
}

// write carries out a decision on the row addressed by pk. A delete writes
// the tombstone after the row's delete, in the same transaction; a
// tombstone only ever moves to a newer stamp.
func (a *Applier) write(ctx context.Context, conn *sql.Conn, p *plan, pk []any, local conflict.Version, d conflict.Decision) error {
	w := d.Write
	switch w.Action {
	case conflict.Nothing:
		return nil
	case conflict.WriteRow:
		cols := p.writeColumns(w.Row)
		args := make([]any, 0, len(cols)+2+len(pk))
		for _, c := range cols {
			args = append(args, w.Row[c])
		}
		args = append(args, uint64(w.Stamp), w.Origin)
		var text string
		if local.Exists {
			text = p.cachedSQL("u", cols, p.updateSQL)
			args = append(args, pk...)
		} else {
			text = p.cachedSQL("i", cols, p.insertSQL)
		}
		return p.exec(ctx, conn, text, args...)
	case conflict.WriteDelete:
		if local.Exists {
			if err := p.exec(ctx, conn, p.deleteRow, pk...); err != nil {
				return err
			}
		}
		args := append(append(make([]any, 0, len(pk)+2), pk...), uint64(w.Stamp), w.Origin)
		return p.exec(ctx, conn, p.upsertTomb, args...)
	}
	return fmt.Errorf("unknown action %d", w.Action)
}

const insertConflictSQL = "INSERT INTO mlr.conflicts (peer_id, db, tbl, pk, rule, " +
	"local_hlc, local_origin, remote_hlc, remote_origin, local_row, remote_row, outcome) " +
	"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

// logConflict records a remote change that met a concurrent local version:
// both versions (NULL row = absent or deleted), the rule and the outcome.
func (a *Applier) logConflict(ctx context.Context, conn *sql.Conn, p *plan, pk []any, local conflict.Version, ch conflict.Change, d conflict.Decision) error {
	pkJSON, err := jsonText(pk)
	if err != nil {
		return err
	}
	var localHLC, localOrigin, localRow, remoteRow any
	if local.Exists || local.Deleted {
		localHLC, localOrigin = uint64(local.Stamp), local.Origin
	}
	if local.Exists {
		if localRow, err = jsonText(local.Row); err != nil {
			return err
		}
	}
	if ch.Row != nil {
		if remoteRow, err = jsonText(ch.Row); err != nil {
			return err
		}
	}
	s, err := a.stmt(ctx, conn, insertConflictSQL)
	if err != nil {
		return err
	}
	_, err = s.ExecContext(ctx, a.cfg.Peer.ID, p.t.Schema, p.t.Name, pkJSON, p.rule.Name(),
		localHLC, localOrigin, uint64(ch.Stamp), ch.Origin, localRow, remoteRow, d.Outcome.String())
	return err
}

// exec runs a statement of the plan, prepared once on conn.
func (p *plan) exec(ctx context.Context, conn *sql.Conn, text string, args ...any) error {
	s, err := p.stmt(ctx, conn, text)
	if err != nil {
		return err
	}
	_, err = s.ExecContext(ctx, args...)
	return err
}

// userRow is img's user columns (metadata and generated columns left out),
// or nil for a nil image.
func (p *plan) userRow(img binlog.Row) map[string]any {
	if img == nil {
		return nil
	}
	row := make(map[string]any, len(img))
	for name, v := range img {
		c, ok := p.known[name]
		if !ok || c.Generated || name == schema.ColHLC || name == schema.ColOrigin {
			continue
		}
		row[name] = v
	}
	return row
}

// localValue turns a scanned value into the shape the binlog decoder uses
// for the same column (text as string).
func localValue(v any) any {
	if b, ok := v.([]byte); ok {
		return string(b)
	}
	return v
}

// toUint64 reads a stamp or origin from a row image or a scanned value.
func toUint64(v any) (uint64, bool) {
	switch x := v.(type) {
	case uint64:
		return x, true
	case int64:
		return uint64(x), true
	case uint32:
		return uint64(x), true
	case int32:
		return uint64(x), true
	case uint16:
		return uint64(x), true
	case int:
		return uint64(x), true
	case []byte:
		n, err := strconv.ParseUint(string(x), 10, 64)
		return n, err == nil
	case string:
		n, err := strconv.ParseUint(x, 10, 64)
		return n, err == nil
	}
	return 0, false
}

// jsonText encodes v for a JSON column; byte strings that are valid UTF-8
// are written as text, others base64 (encoding/json's default).
func jsonText(v any) (string, error) {
	b, err := json.Marshal(jsonable(v))
	if err != nil {
		return "", fmt.Errorf("encode as JSON: %w", err)
	}
	return string(b), nil
}

func jsonable(v any) any {
	switch x := v.(type) {
	case []byte:
		if utf8.Valid(x) {
			return string(x)
		}
		return x
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = jsonable(e)
		}
		return m
	case []any:
		s := make([]any, len(x))
		for i, e := range x {
			s[i] = jsonable(e)
		}
		return s
	}
	return v
}
