package applier

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/conflict"
	"github.com/mlproxy/mlproxy/schema"
)

// ErrUnknownColumn is returned for a change naming a column the local table
// lacks even after re-reading it: apply the same DDL here (mlproxy does not
// replicate DDL), then restart.
var ErrUnknownColumn = errors.New("change names a column the local table does not have: apply the source's DDL to this region's table, then restart")

// ErrNotPrepared is returned for a table without the metadata columns or a
// primary key: run `mlproxy schema apply` on this region.
var ErrNotPrepared = errors.New("table lacks mlproxy's metadata columns or primary key: run `mlproxy schema apply` on this region")

// tableKey names a table.
type tableKey struct{ db, table string }

func (k tableKey) String() string { return k.db + "." + k.table }

// plan is one table's compiled apply plan: its columns, rule and SQL. A
// plan is rebuilt (and its statements closed) when the table is re-read
// after DDL. Statements are prepared on the applier's session connection
// and live as long as the plan and that connection.
type plan struct {
	t    *schema.Table
	rule conflict.Rule
	// user are the columns a write may set (no metadata, no generated).
	user []schema.Column
	// known holds every column name of the local table.
	known map[string]schema.Column

	// lookup reads and locks the row and its tombstone in one round trip.
	// Args: pk; result: user columns, _mlr_hlc, _mlr_origin of the row
	// (NULL stamps: no row), then the tombstone's _mlr_hlc, _mlr_origin
	// (NULL: none).
	lookup     string
	deleteRow  string // args: pk
	upsertTomb string // args: pk, _mlr_hlc, _mlr_origin

	// stmts are prepared on the session connection, keyed by SQL text.
	stmts map[string]*sql.Stmt
	// texts caches insert/update SQL by kind and column list.
	texts map[string]string
}

func newPlan(t *schema.Table, rule conflict.Rule) (*plan, error) {
	if len(t.PK) == 0 {
		return nil, fmt.Errorf("table %s.%s has no primary key: %w", t.Schema, t.Name, ErrNotPrepared)
	}
	if _, ok := t.Column(schema.ColHLC); !ok {
		return nil, fmt.Errorf("table %s.%s has no %s column: %w", t.Schema, t.Name, schema.ColHLC, ErrNotPrepared)
	}
	if _, ok := t.Column(schema.ColOrigin); !ok {
		return nil, fmt.Errorf("table %s.%s has no %s column: %w", t.Schema, t.Name, schema.ColOrigin, ErrNotPrepared)
	}
	p := &plan{
		t:          t,
		rule:       rule,
		user:       t.UserColumns(),
		known:      make(map[string]schema.Column, len(t.Columns)),
		lookup:     lookupSQL(t),
		deleteRow:  t.DeleteByPKSQL(),
		upsertTomb: upsertTombstoneSQL(t),
		stmts:      map[string]*sql.Stmt{},
		texts:      map[string]string{},
	}
	for _, c := range t.Columns {
		p.known[c.Name] = c
	}
	return p, nil
}

// lookupSQL reads the local version of one row, live row and tombstone
// together, locking both (or the gaps where they would be). The key is
// bound once into a one-row derived table that both are joined to.
func lookupSQL(t *schema.Table) string {
	var cols, keys, onT, onB []string
	for _, c := range t.UserColumns() {
		cols = append(cols, "t."+schema.Quote(c.Name))
	}
	h, o := schema.Quote(schema.ColHLC), schema.Quote(schema.ColOrigin)
	cols = append(cols, "t."+h, "t."+o, "b."+h, "b."+o)
	for i, c := range t.PK {
		k := fmt.Sprintf("k%d", i)
		keys = append(keys, "? AS "+k)
		onT = append(onT, "t."+schema.Quote(c)+" = k."+k)
		onB = append(onB, "b."+schema.Quote(c)+" = k."+k)
	}
	return "SELECT " + strings.Join(cols, ", ") + " FROM (SELECT " + strings.Join(keys, ", ") + ") k" +
		" LEFT JOIN " + t.QualifiedName() + " t ON " + strings.Join(onT, " AND ") +
		" LEFT JOIN " + t.TombstoneQualifiedName() + " b ON " + strings.Join(onB, " AND ") +
		" FOR UPDATE"
}

// upsertTombstoneSQL records a tombstone, or moves an existing one forward:
// a tombstone is replaced only by a newer one ((hlc, origin) compared as a
// pair, as ties break by origin). Assignments run left to right, so the
// origin is decided against the old stamp first; the stamp then only grows.
// Args: the primary key values, _mlr_hlc, _mlr_origin.
func upsertTombstoneSQL(t *schema.Table) string {
	cs := make([]string, 0, len(t.PK)+2)
	for _, c := range t.PK {
		cs = append(cs, schema.Quote(c))
	}
	h, o := schema.Quote(schema.ColHLC), schema.Quote(schema.ColOrigin)
	cs = append(cs, h, o)
	return "INSERT INTO " + t.TombstoneQualifiedName() + " (" + strings.Join(cs, ", ") + ") VALUES (" +
		strings.TrimSuffix(strings.Repeat("?, ", len(cs)), ", ") + ") ON DUPLICATE KEY UPDATE " +
		o + " = IF(VALUES(" + h + ") > " + h + " OR (VALUES(" + h + ") = " + h + " AND VALUES(" + o + ") > " + o + "), VALUES(" + o + "), " + o + "), " +
		h + " = GREATEST(" + h + ", VALUES(" + h + "))"
}

// writeColumns are the user columns present in row, in table order: a
// change from a source that lacks a column the local table has (DDL applied
// here first) leaves that column to its default (insert) or as it is
// (update).
func (p *plan) writeColumns(row map[string]any) []string {
	cs := make([]string, 0, len(p.user))
	for _, c := range p.user {
		if _, ok := row[c.Name]; ok {
			cs = append(cs, c.Name)
		}
	}
	return cs
}

// insertSQL inserts the named columns then _mlr_hlc, _mlr_origin.
func (p *plan) insertSQL(cols []string) string {
	q := make([]string, 0, len(cols)+2)
	for _, c := range cols {
		q = append(q, schema.Quote(c))
	}
	q = append(q, schema.Quote(schema.ColHLC), schema.Quote(schema.ColOrigin))
	return "INSERT INTO " + p.t.QualifiedName() + " (" + strings.Join(q, ", ") + ") VALUES (" +
		strings.TrimSuffix(strings.Repeat("?, ", len(q)), ", ") + ")"
}

// updateSQL sets the named columns then _mlr_hlc, _mlr_origin, by the
// primary key the row had before. Args: values, stamp, origin, old pk.
func (p *plan) updateSQL(cols []string) string {
	sets := make([]string, 0, len(cols)+2)
	for _, c := range cols {
		sets = append(sets, schema.Quote(c)+" = ?")
	}
	sets = append(sets, schema.Quote(schema.ColHLC)+" = ?", schema.Quote(schema.ColOrigin)+" = ?")
	ws := make([]string, len(p.t.PK))
	for i, c := range p.t.PK {
		ws[i] = schema.Quote(c) + " = ?"
	}
	return "UPDATE " + p.t.QualifiedName() + " SET " + strings.Join(sets, ", ") + " WHERE " + strings.Join(ws, " AND ")
}

// cachedSQL returns build(cols), built once per kind and column list.
func (p *plan) cachedSQL(kind string, cols []string, build func([]string) string) string {
	k := kind + "\x00" + strings.Join(cols, "\x00")
	if s, ok := p.texts[k]; ok {
		return s
	}
	s := build(cols)
	p.texts[k] = s
	return s
}

// unknownColumn returns the first column (sorted, for a stable message) of
// the change that the local table lacks, or "".
func (p *plan) unknownColumn(rc *binlog.RowChange) string {
	var missing []string
	for _, img := range []binlog.Row{rc.Before, rc.After} {
		for name := range img {
			if _, ok := p.known[name]; !ok {
				missing = append(missing, name)
			}
		}
	}
	if len(missing) == 0 {
		return ""
	}
	sort.Strings(missing)
	return missing[0]
}

// pk returns the primary key values of img, in key order.
func (p *plan) pk(img binlog.Row) ([]any, error) {
	vs := make([]any, len(p.t.PK))
	for i, c := range p.t.PK {
		v, ok := img[c]
		if !ok {
			return nil, fmt.Errorf("row image of %s.%s lacks primary key column %s", p.t.Schema, p.t.Name, c)
		}
		vs[i] = v
	}
	return vs, nil
}

// stmt returns the statement for text, prepared on conn once.
func (p *plan) stmt(ctx context.Context, conn *sql.Conn, text string) (*sql.Stmt, error) {
	if s, ok := p.stmts[text]; ok {
		return s, nil
	}
	s, err := conn.PrepareContext(ctx, text)
	if err != nil {
		return nil, err
	}
	p.stmts[text] = s
	return s, nil
}

// closeStmts closes every prepared statement (after DDL, or when the
// connection they belong to is dropped).
func (p *plan) closeStmts() {
	for k, s := range p.stmts {
		_ = s.Close()
		delete(p.stmts, k)
	}
}
