// Package schema reads a region's replicated tables from information_schema,
// installs mlproxy's metadata (invisible stamp columns, triggers, the
// internal `mlr` schema) and checks the server settings replication needs.
// It knows nothing of binlogs or the proxy.
package schema

import (
	"fmt"
	"strings"

	"github.com/mlproxy/mlproxy/change"
	"github.com/mlproxy/mlproxy/config"
)

// Internal is the schema that holds mlproxy's own tables.
const Internal = "mlr"

// Metadata column names, present (INVISIBLE) in every replicated table
// and (visible) in its tombstone table: the change package's names.
const (
	ColOrigin = change.ColOrigin
	ColHLC    = change.ColHLC
	ColMeta   = change.ColMeta
)

// isMetadata reports whether name is one of the metadata columns.
func isMetadata(name string) bool { return name == ColOrigin || name == ColHLC || name == ColMeta }

// Column is one column of a table as information_schema describes it.
type Column struct {
	Name       string
	DataType   string // e.g. "int", "varchar"
	ColumnType string // e.g. "int(10) unsigned", "varchar(64)"
	Nullable   bool
	Unsigned   bool
	Generated  bool // virtual/stored generated: never written
	Invisible  bool // INVISIBLE: left out of SELECT * and INSERT without a column list
	// Charset and Collation are set for character columns ("" otherwise);
	// a tombstone table copies them so that its key compares as the
	// table's key does.
	Charset   string
	Collation string
}

// Definition is the column's type as a column definition would spell it,
// with its character set and collation when it has them, e.g.
// "varchar(64) CHARACTER SET utf8mb4 COLLATE utf8mb4_general_ci".
func (c Column) Definition() string {
	d := c.ColumnType
	if c.Charset != "" {
		d += " CHARACTER SET " + c.Charset
	}
	if c.Collation != "" {
		d += " COLLATE " + c.Collation
	}
	return d
}

// textual reports whether the column holds character data, whose equality
// under a case- or accent-insensitive collation is weaker than "unchanged".
func (c Column) textual() bool {
	switch strings.ToLower(c.DataType) {
	case "char", "varchar", "tinytext", "text", "mediumtext", "longtext", "enum", "set", "json":
		return true
	}
	return c.Charset != ""
}

// Table is one replicated table: its columns in ordinal order (metadata
// columns included when present), its primary key and its rule.
type Table struct {
	Schema  string
	Name    string
	Columns []Column
	PK      []string // primary key column names in key order; empty = none
	Rule    config.TableRule
	// Unique lists the columns of each secondary unique key, in key order,
	// and ForeignKeys is set when a foreign key references the table or
	// the table references another. Both are read by ReadKeys (the
	// applier's dependency tracking); ReadTable leaves them empty.
	Unique      [][]string
	ForeignKeys bool
}

// QualifiedName is `schema`.`table`, quoted.
func (t *Table) QualifiedName() string { return Quote(t.Schema) + "." + Quote(t.Name) }

// UserColumns are the columns the application owns (not metadata, not
// generated).
func (t *Table) UserColumns() []Column {
	var cs []Column
	for _, c := range t.Columns {
		if isMetadata(c.Name) || c.Generated {
			continue
		}
		cs = append(cs, c)
	}
	return cs
}

// PKColumns are the primary key's columns in key order.
func (t *Table) PKColumns() []Column {
	cs := make([]Column, 0, len(t.PK))
	for _, n := range t.PK {
		if c, ok := t.Column(n); ok {
			cs = append(cs, c)
		}
	}
	return cs
}

// String is schema.table, unquoted, for messages.
func (t *Table) String() string { return t.Schema + "." + t.Name }

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
