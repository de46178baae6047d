// Package schema reads a region's replicated tables from information_schema,
// installs mlproxy's metadata (invisible stamp columns, triggers, the
// internal `mlr` schema) and checks the server settings replication needs.
// It knows nothing of binlogs or the proxy.
package schema

import (
	"fmt"
	"strings"

	"github.com/mlproxy/mlproxy/config"
)

// Internal is the schema that holds mlproxy's own tables.
const Internal = "mlr"

// Metadata column names, present (INVISIBLE) in every replicated table.
const (
	ColOrigin = "_mlr_origin"
	ColHLC    = "_mlr_hlc"
)

// Column is one column of a table as information_schema describes it.
type Column struct {
	Name       string
	DataType   string // e.g. "int", "varchar"
	ColumnType string // e.g. "int(10) unsigned", "varchar(64)"
	Nullable   bool
	Unsigned   bool
	Generated  bool // virtual/stored generated: never written
}

// Table is one replicated table: its columns in ordinal order (metadata
// columns included when present), its primary key and its rule.
type Table struct {
	Schema  string
	Name    string
	Columns []Column
	PK      []string // primary key column names in key order; empty = none
	Rule    config.TableRule
}

// QualifiedName is `schema`.`table`, quoted.
func (t *Table) QualifiedName() string { return Quote(t.Schema) + "." + Quote(t.Name) }

// UserColumns are the columns the application owns (not metadata, not
// generated).
func (t *Table) UserColumns() []Column {
	var cs []Column
	for _, c := range t.Columns {
		if c.Name == ColOrigin || c.Name == ColHLC || c.Generated {
			continue
		}
		cs = append(cs, c)
	}
	return cs
}

// Column returns the named column.
func (t *Table) Column(name string) (Column, bool) {
	for _, c := range t.Columns {
		if c.Name == name {
			return c, true
		}
	}
	return Column{}, false
}

// TombstoneTable is the name, inside the Internal schema, of the table that
// holds db.table's tombstones: "<db>.<table>" (a dot is legal in a quoted
// identifier, and the name stays readable and reversible). Names longer than
// 64 characters are refused by schema apply.
func TombstoneTable(db, table string) string { return db + "." + table }

// ParseTombstoneTable reverses TombstoneTable.
func ParseTombstoneTable(name string) (db, table string, ok bool) {
	db, table, ok = strings.Cut(name, ".")
	return db, table, ok && db != "" && table != ""
}

// Quote quotes an identifier with backticks.
func Quote(ident string) string { return "`" + strings.ReplaceAll(ident, "`", "``") + "`" }

// ErrNoPrimaryKey is returned for a replicated table without a primary key.
var ErrNoPrimaryKey = fmt.Errorf("replicated table has no primary key: add one (mlproxy identifies rows across regions by primary key)")
