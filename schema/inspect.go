package schema

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/mlproxy/mlproxy/config"
)

// ErrNoTable is returned for a rule or a lookup naming a table that does not
// exist (or is a view, which cannot be replicated).
var ErrNoTable = errors.New("no such base table: create it, or fix the schema/table names in the configuration")

// ErrInternalSchema is returned for a rule that names the internal schema.
var ErrInternalSchema = errors.New("the `" + Internal + "` schema is mlproxy's own and is never replicated: remove the rule")

// Inspect resolves rules to the base tables they name, reading each table's
// columns (in ordinal order) and primary key from information_schema.
//
// A rule names one table, or every table of a schema with Table "*"; a table
// matched by an exact rule takes that rule even when a wildcard also matches
// it. Views and the Internal schema are never included. A rule naming a
// table (or, with "*", a schema) that does not exist is an error naming it;
// all such errors are returned together (errors.Join) with the tables that
// did resolve. Tables are sorted by schema, then name. A table without a
// primary key is returned with an empty PK: refusing it is Apply's and
// Check's job.
func Inspect(ctx context.Context, db *sql.DB, rules []config.TableRule) ([]*Table, error) {
	tables, errs := inspect(ctx, db, rules)
	return tables, errors.Join(errs...)
}

// inspect is Inspect returning one error per unresolved rule; a failed
// query is a single error.
func inspect(ctx context.Context, db *sql.DB, rules []config.TableRule) ([]*Table, []error) {
	type key struct{ schema, table string }
	var errs []error
	schemas := map[string]bool{}
	for _, r := range rules {
		if strings.EqualFold(r.Schema, Internal) {
			errs = append(errs, &whereError{r.Schema + "." + r.Table, fmt.Errorf("rule for %s.%s: %w", r.Schema, r.Table, ErrInternalSchema)})
			continue
		}
		schemas[r.Schema] = true
	}
	// Every base table of every schema a rule mentions, as the server
	// spells it; lookups fold case as information_schema does.
	existing := map[string]map[string]string{} // lower(schema) -> lower(table) -> "schema\x00table"
	for s := range schemas {
		names, err := baseTables(ctx, db, s)
		if err != nil {
			return nil, append(errs, err)
		}
		m := map[string]string{}
		for _, n := range names {
			m[strings.ToLower(n[1])] = n[0] + "\x00" + n[1]
		}
		existing[strings.ToLower(s)] = m
	}

	chosen := map[key]config.TableRule{}
	exact := map[key]bool{}
	for _, r := range rules {
		if strings.EqualFold(r.Schema, Internal) {
			continue
		}
		inSchema := existing[strings.ToLower(r.Schema)]
		if r.Table == "*" {
			// An empty (or not yet created) schema is fine: its tables
			// are prepared by schema apply once they exist.
			for _, full := range inSchema {
				s, t, _ := strings.Cut(full, "\x00")
				k := key{s, t}
				if _, ok := chosen[k]; !ok {
					chosen[k] = r
				}
			}
			continue
		}
		full, ok := inSchema[strings.ToLower(r.Table)]
		if !ok {
			errs = append(errs, &whereError{r.Schema + "." + r.Table, fmt.Errorf("rule for %s.%s: %w", r.Schema, r.Table, ErrNoTable)})
			continue
		}
		s, t, _ := strings.Cut(full, "\x00")
		k := key{s, t}
		if exact[k] {
			errs = append(errs, &whereError{s + "." + t, fmt.Errorf("rule for %s.%s: the table is named by two rules: keep one", s, t)})
			continue
		}
		exact[k] = true
		chosen[k] = r
	}

	keys := make([]key, 0, len(chosen))
	for k := range chosen {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool {
		if keys[i].schema != keys[j].schema {
			return keys[i].schema < keys[j].schema
		}
		return keys[i].table < keys[j].table
	})
	tables := make([]*Table, 0, len(keys))
	for _, k := range keys {
		t, err := ReadTable(ctx, db, k.schema, k.table)
		if err != nil {
			errs = append(errs, &whereError{k.schema + "." + k.table, err})
			continue
		}
		t.Rule = chosen[k]
		tables = append(tables, t)
	}
	return tables, errs
}

// baseTables lists [schema, table] of the base tables of one schema, as
// the server spells them.
func baseTables(ctx context.Context, db *sql.DB, schema string) ([][2]string, error) {
	rows, err := db.QueryContext(ctx, `SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES
WHERE TABLE_SCHEMA = ? AND TABLE_TYPE = 'BASE TABLE' ORDER BY TABLE_NAME`, schema)
	if err != nil {
		return nil, fmt.Errorf("list tables of schema %s: %w", schema, err)
	}
	defer rows.Close()
	var out [][2]string
	for rows.Next() {
		var n [2]string
		if err := rows.Scan(&n[0], &n[1]); err != nil {
			return nil, fmt.Errorf("list tables of schema %s: %w", schema, err)
		}
		out = append(out, n)
	}
	if err := rows.Err(); err != nil {
		return nil, fmt.Errorf("list tables of schema %s: %w", schema, err)
	}
	return out, nil
}

// ReadTable reads one base table's columns and primary key, as after DDL.
// The returned Table has a zero Rule: the caller keeps the rule it had. A
// missing table (or a view) is ErrNoTable wrapped with schema.table.
func ReadTable(ctx context.Context, db *sql.DB, schema, table string) (*Table, error) {
	var s, n string
	err := db.QueryRowContext(ctx, `SELECT TABLE_SCHEMA, TABLE_NAME FROM information_schema.TABLES
WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND TABLE_TYPE = 'BASE TABLE'`, schema, table).Scan(&s, &n)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("read %s.%s: %w", schema, table, ErrNoTable)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s.%s: %w", schema, table, err)
	}
	t := &Table{Schema: s, Name: n}
	if t.Columns, err = readColumns(ctx, db, s, n); err != nil {
		return nil, fmt.Errorf("read columns of %s.%s: %w", s, n, err)
	}
	if t.PK, err = readPK(ctx, db, s, n); err != nil {
		return nil, fmt.Errorf("read primary key of %s.%s: %w", s, n, err)
	}
	return t, nil
}

// ReadKeys fills t.Unique and t.ForeignKeys from information_schema.
func ReadKeys(ctx context.Context, db *sql.DB, t *Table) error {
	rows, err := db.QueryContext(ctx, `SELECT INDEX_NAME, COLUMN_NAME FROM information_schema.STATISTICS
WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND NON_UNIQUE = 0 AND INDEX_NAME <> 'PRIMARY'
ORDER BY INDEX_NAME, SEQ_IN_INDEX`, t.Schema, t.Name)
	if err != nil {
		return fmt.Errorf("read unique keys of %s: %w", t, err)
	}
	defer rows.Close()
	t.Unique = nil
	last := ""
	for rows.Next() {
		var idx, col string
		if err := rows.Scan(&idx, &col); err != nil {
			return fmt.Errorf("read unique keys of %s: %w", t, err)
		}
		if idx != last || len(t.Unique) == 0 {
			t.Unique = append(t.Unique, nil)
			last = idx
		}
		t.Unique[len(t.Unique)-1] = append(t.Unique[len(t.Unique)-1], col)
	}
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read unique keys of %s: %w", t, err)
	}
	var n int
	if err := db.QueryRowContext(ctx, `SELECT COUNT(*) FROM information_schema.REFERENTIAL_CONSTRAINTS
WHERE (CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?) OR (UNIQUE_CONSTRAINT_SCHEMA = ? AND REFERENCED_TABLE_NAME = ?)`,
		t.Schema, t.Name, t.Schema, t.Name).Scan(&n); err != nil {
		return fmt.Errorf("read foreign keys of %s: %w", t, err)
	}
	t.ForeignKeys = n > 0
	return nil
}

func readColumns(ctx context.Context, db *sql.DB, schema, table string) ([]Column, error) {
	// GENERATION_EXPRESSION is NULL (MariaDB) or '' (MySQL) for ordinary
	// columns; EXTRA says INVISIBLE on both.
	rows, err := db.QueryContext(ctx, `SELECT COLUMN_NAME, DATA_TYPE, COLUMN_TYPE, IS_NULLABLE,
  COALESCE(GENERATION_EXPRESSION, ''), EXTRA, COALESCE(CHARACTER_SET_NAME, ''), COALESCE(COLLATION_NAME, '')
FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION`, schema, table)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var cs []Column
	for rows.Next() {
		var c Column
		var nullable, gen, extra string
		if err := rows.Scan(&c.Name, &c.DataType, &c.ColumnType, &nullable, &gen, &extra, &c.Charset, &c.Collation); err != nil {
			return nil, err
		}
		c.DataType = strings.ToLower(c.DataType)
		c.Nullable = nullable == "YES"
		c.Unsigned = strings.Contains(strings.ToLower(c.ColumnType), "unsigned")
		upper := strings.ToUpper(extra)
		c.Generated = gen != "" || strings.Contains(upper, "GENERATED")
		c.Invisible = strings.Contains(upper, "INVISIBLE")
		cs = append(cs, c)
	}
	return cs, rows.Err()
}

func readPK(ctx context.Context, db *sql.DB, schema, table string) ([]string, error) {
	rows, err := db.QueryContext(ctx, `SELECT COLUMN_NAME FROM information_schema.STATISTICS
WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX`, schema, table)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var pk []string
	for rows.Next() {
		var n string
		if err := rows.Scan(&n); err != nil {
			return nil, err
		}
		pk = append(pk, n)
	}
	return pk, rows.Err()
}
