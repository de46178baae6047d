package applier

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/conflict"
	"github.com/mlproxy/mlproxy/schema"
)

// ErrUnknownColumn is returned for a change naming a column the local table
// lacks even after re-reading it: apply the same DDL here (mlproxy does not
// replicate DDL), then restart.
var ErrUnknownColumn = errors.New("change names a column the local table does not have: waiting for the DDL to reach this region's table (`mlproxy schema ddl` runs it in every region); the link retries")

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
	// shadow is the table's shadow rule, nil without one (shadow.go).
	shadow conflict.Rule
	// user are the columns a write may set (no metadata, no generated).
	user []schema.Column
	// known holds every column name of the local table.
	known map[string]schema.Column

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
	if _, ok := t.Column(schema.ColMeta); !ok {
		return nil, fmt.Errorf("table %s.%s has no %s column: %w", t.Schema, t.Name, schema.ColMeta, ErrNotPrepared)
	}
	p := &plan{
		t:      t,
		rule:   rule,
		shadow: shadowRule(rule),
		user:   t.UserColumns(),
		known:  make(map[string]schema.Column, len(t.Columns)),
		stmts:  map[string]*sql.Stmt{},
		texts:  map[string]string{},
	}
	for _, c := range t.Columns {
		p.known[c.Name] = c
	}
	return p, nil
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

// sized returns build(cols, n), built once per kind, column list and row
// count. Callers use powers of two for n, so a plan holds at most
// log2(maxChunkRows)+1 statements per kind and column list.
func (p *plan) sized(kind string, cols []string, n int, build func([]string, int) string) string {
	k := kind + "\x00" + strconv.Itoa(n) + "\x00" + strings.Join(cols, "\x00")
	if s, ok := p.texts[k]; ok {
		return s
	}
	s := build(cols, n)
	p.texts[k] = s
	return s
}

// pkUserIndex returns the positions of the primary key columns among the
// user columns, or nil when one of them is not a user column (generated).
func (p *plan) pkUserIndex() []int {
	ix := make([]int, 0, len(p.t.PK))
	for _, k := range p.t.PK {
		found := false
		for i, c := range p.user {
			if c.Name == k {
				ix = append(ix, i)
				found = true
				break
			}
		}
		if !found {
			return nil
		}
	}
	return ix
}

// lookupSQL reads the local versions of n keys, live rows and tombstones
// together, locking both (or the gaps where they would be). The keys are
// bound into a derived table numbered 0..n-1 that both are joined to.
// Args: the keys' primary key values in order; result rows: the key's
// number, the row's user columns, _mlr_hlc, _mlr_origin, _mlr_vv (NULL
// stamps: no row), the tombstone's primary key columns, _mlr_hlc,
// _mlr_origin, _mlr_vv (NULL stamps: none). Exactly one result row per key
// number.
func (p *plan) lookupSQL(_ []string, n int) string {
	t := p.t
	cols := []string{"k.i"}
	for _, c := range p.user {
		cols = append(cols, "t."+schema.Quote(c.Name))
	}
	h, o, m := schema.Quote(schema.ColHLC), schema.Quote(schema.ColOrigin), schema.Quote(schema.ColMeta)
	cols = append(cols, "t."+h, "t."+o, "t."+m)
	var onT, onB []string
	for i, c := range t.PK {
		cols = append(cols, "b."+schema.Quote(c))
		k := fmt.Sprintf("k%d", i)
		onT = append(onT, "t."+schema.Quote(c)+" = k."+k)
		onB = append(onB, "b."+schema.Quote(c)+" = k."+k)
	}
	cols = append(cols, "b."+h, "b."+o, "b."+m)
	var keys strings.Builder
	for r := 0; r < n; r++ {
		if r > 0 {
			keys.WriteString(" UNION ALL ")
		}
		fmt.Fprintf(&keys, "SELECT %d", r)
		if r == 0 {
			keys.WriteString(" AS i")
		}
		for i := range t.PK {
			keys.WriteString(", ?")
			if r == 0 {
				fmt.Fprintf(&keys, " AS k%d", i)
			}
		}
	}
	return "SELECT " + strings.Join(cols, ", ") + " FROM (" + keys.String() + ") k" +
		" LEFT JOIN " + t.QualifiedName() + " t ON " + strings.Join(onT, " AND ") +
		" LEFT JOIN " + t.TombstoneQualifiedName() + " b ON " + strings.Join(onB, " AND ") +
		" FOR UPDATE"
}

// lookupNowaitSQL is lookupSQL failing at once (error 1205) on a row a
// local client holds instead of waiting for it (Applier.nowait).
func (p *plan) lookupNowaitSQL(cols []string, n int) string { return p.lookupSQL(cols, n) + " NOWAIT" }

// valuesList is n rows of w placeholders each.
func valuesList(n, w int) string {
	row := "(" + strings.TrimSuffix(strings.Repeat("?, ", w), ", ") + ")"
	return strings.TrimSuffix(strings.Repeat(row+", ", n), ", ")
}

// deleteSQL deletes the rows of n primary keys. Args: the keys in order.
func (p *plan) deleteSQL(_ []string, n int) string {
	ks := make([]string, len(p.t.PK))
	for i, c := range p.t.PK {
		ks[i] = schema.Quote(c)
	}
	return "DELETE FROM " + p.t.QualifiedName() + " WHERE (" + strings.Join(ks, ", ") + ") IN (" + valuesList(n, len(ks)) + ")"
}

// insertRowsSQL inserts n rows of the named columns then _mlr_hlc,
// _mlr_origin, _mlr_vv.
func (p *plan) insertRowsSQL(cols []string, n int) string {
	q := make([]string, 0, len(cols)+2)
	for _, c := range cols {
		q = append(q, schema.Quote(c))
	}
	q = append(q, schema.Quote(schema.ColHLC), schema.Quote(schema.ColOrigin), schema.Quote(schema.ColMeta))
	return "INSERT INTO " + p.t.QualifiedName() + " (" + strings.Join(q, ", ") + ") VALUES " + valuesList(n, len(q))
}

// upsertRowsSQL updates n existing rows: the named columns (primary key
// columns among them keep their key, or change only its spelling) then
// _mlr_hlc, _mlr_origin. Used only for keys whose row was read live and
// locked, so the insert branch never runs.
func (p *plan) upsertRowsSQL(cols []string, n int) string {
	sets := make([]string, 0, len(cols)+2)
	for _, c := range append(append([]string{}, cols...), schema.ColHLC, schema.ColOrigin, schema.ColMeta) {
		q := schema.Quote(c)
		sets = append(sets, q+" = VALUES("+q+")")
	}
	return p.insertRowsSQL(cols, n) + " ON DUPLICATE KEY UPDATE " + strings.Join(sets, ", ")
}

// tombSQL records n tombstones, or replaces existing ones: the applier
// read and locked the tombstone and decided the new one as the merge of it
// and the remote version. Args per row: the primary key values, _mlr_hlc,
// _mlr_origin, _mlr_vv.
func (p *plan) tombSQL(_ []string, n int) string {
	cs := make([]string, 0, len(p.t.PK)+3)
	for _, c := range p.t.PK {
		cs = append(cs, schema.Quote(c))
	}
	h, o, m := schema.Quote(schema.ColHLC), schema.Quote(schema.ColOrigin), schema.Quote(schema.ColMeta)
	cs = append(cs, h, o, m)
	return "INSERT INTO " + p.t.TombstoneQualifiedName() + " (" + strings.Join(cs, ", ") + ") VALUES " +
		valuesList(n, len(cs)) + " ON DUPLICATE KEY UPDATE " +
		h + " = VALUES(" + h + "), " + o + " = VALUES(" + o + "), " + m + " = VALUES(" + m + ")"
}
