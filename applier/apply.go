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
	"github.com/mlproxy/mlproxy/schema"
)

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
		p, err = newPlan(t, rule)
		if errors.Is(err, ErrNotPrepared) {
			// The table source may hold the table as read before `schema
			// apply` prepared it (a link retrying while the table was
			// created and then prepared): read it again.
			return a.reloadPlan(ctx, rc, "the table was not prepared when last read")
		}
		if err != nil {
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

// conflictValues is one row of insertConflictSQL's VALUES.
const conflictValues = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

// insertConflictSQL logs one conflict; multi-row statements repeat
// conflictValues.
const insertConflictSQL = "INSERT INTO mlr.conflicts (peer_id, db, tbl, pk, rule, " +
	"local_hlc, local_origin, remote_hlc, remote_origin, local_row, remote_row, local_meta, remote_meta, outcome) " +
	"VALUES " + conflictValues

// shadowConflictValues and insertShadowConflictSQL log a conflict of a
// table with a shadow rule (the shadow columns came with shadow rules:
// tables without one keep working on a conflict log from before them).
const shadowConflictValues = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"

const insertShadowConflictSQL = "INSERT INTO mlr.conflicts (peer_id, db, tbl, pk, rule, " +
	"local_hlc, local_origin, remote_hlc, remote_origin, local_row, remote_row, local_meta, remote_meta, outcome, " +
	"shadow_rule, shadow_outcome, shadow_row, shadow_differs) VALUES " + shadowConflictValues

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
		if !ok || c.Generated || name == schema.ColHLC || name == schema.ColOrigin || name == schema.ColMeta {
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
