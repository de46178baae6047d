package schema

import "strings"

// SQL the applier and the tombstone collector run against one table. Every
// identifier is quoted; every value is a ? placeholder. Columns are the
// table's user columns (UserColumns: generated and metadata columns left
// out) in ordinal order, then _mlr_hlc, _mlr_origin, _mlr_vv; primary key columns
// are in key order. The argument order of each statement is documented on
// its method.

// TombstoneQualifiedName is `mlr`.`<db>.<table>`, quoted.
func (t *Table) TombstoneQualifiedName() string {
	return Quote(Internal) + "." + Quote(TombstoneTable(t.Schema, t.Name))
}

// metaColumns are the three metadata columns in the order every statement
// uses, quoted.
func metaColumns() []string { return []string{Quote(ColHLC), Quote(ColOrigin), Quote(ColMeta)} }

// versionColumns are the user columns then the three metadata columns, quoted.
func (t *Table) versionColumns() []string {
	uc := t.UserColumns()
	cs := make([]string, 0, len(uc)+3)
	for _, c := range uc {
		cs = append(cs, Quote(c.Name))
	}
	return append(cs, metaColumns()...)
}

// pkWhere is "`a` = ? AND `b` = ?" over the primary key.
func (t *Table) pkWhere() string {
	ws := make([]string, len(t.PK))
	for i, c := range t.PK {
		ws[i] = Quote(c) + " = ?"
	}
	return strings.Join(ws, " AND ")
}

func placeholders(n int) string {
	return strings.TrimSuffix(strings.Repeat("?, ", n), ", ")
}

// SelectVersionSQL reads and locks the local version of one row. Args: the
// primary key values. Result: the user columns, _mlr_hlc, _mlr_origin,
// _mlr_vv (TEXT, NULL for a row written before version vectors).
func (t *Table) SelectVersionSQL() string {
	return "SELECT " + strings.Join(t.versionColumns(), ", ") + " FROM " + t.QualifiedName() +
		" WHERE " + t.pkWhere() + " FOR UPDATE"
}

// SelectTombstoneSQL reads and locks one row's tombstone. Args: the
// primary key values. Result: _mlr_hlc, _mlr_origin, _mlr_vv (NULL for a
// tombstone written before version vectors).
func (t *Table) SelectTombstoneSQL() string {
	return "SELECT " + strings.Join(metaColumns(), ", ") + " FROM " + t.TombstoneQualifiedName() +
		" WHERE " + t.pkWhere() + " FOR UPDATE"
}

// UpsertTombstoneSQL records (or moves forward) one row's tombstone. Args:
// the primary key values, _mlr_hlc, _mlr_origin, _mlr_vv.
func (t *Table) UpsertTombstoneSQL() string {
	cs := make([]string, 0, len(t.PK)+3)
	for _, c := range t.PK {
		cs = append(cs, Quote(c))
	}
	cs = append(cs, metaColumns()...)
	sets := make([]string, 0, 3)
	for _, m := range metaColumns() {
		sets = append(sets, m+" = VALUES("+m+")")
	}
	return "INSERT INTO " + t.TombstoneQualifiedName() + " (" + strings.Join(cs, ", ") + ") VALUES (" +
		placeholders(len(cs)) + ") ON DUPLICATE KEY UPDATE " + strings.Join(sets, ", ")
}

// DeleteTombstoneSQL drops one row's tombstone. Args: the primary key values.
func (t *Table) DeleteTombstoneSQL() string {
	return "DELETE FROM " + t.TombstoneQualifiedName() + " WHERE " + t.pkWhere()
}

// InsertSQL inserts one row with its stamp. Args: the user columns,
// _mlr_hlc, _mlr_origin, _mlr_vv.
func (t *Table) InsertSQL() string { return t.insertLike("INSERT") }

// ReplaceSQL is InsertSQL as REPLACE. Under @_mlr_apply = 1 the delete it
// may do writes no tombstone.
func (t *Table) ReplaceSQL() string { return t.insertLike("REPLACE") }

func (t *Table) insertLike(verb string) string {
	cs := t.versionColumns()
	return verb + " INTO " + t.QualifiedName() + " (" + strings.Join(cs, ", ") + ") VALUES (" +
		placeholders(len(cs)) + ")"
}

// UpdateByPKSQL overwrites one row, primary key included (a remote update
// may change it). Args: the user columns, _mlr_hlc, _mlr_origin, _mlr_vv,
// then the primary key values the row had before.
func (t *Table) UpdateByPKSQL() string {
	cs := t.versionColumns()
	sets := make([]string, len(cs))
	for i, c := range cs {
		sets[i] = c + " = ?"
	}
	return "UPDATE " + t.QualifiedName() + " SET " + strings.Join(sets, ", ") + " WHERE " + t.pkWhere()
}

// DeleteByPKSQL deletes one row. Args: the primary key values.
func (t *Table) DeleteByPKSQL() string {
	return "DELETE FROM " + t.QualifiedName() + " WHERE " + t.pkWhere()
}

// GCTombstonesSQL drops a batch of tombstones older than a stamp every peer
// has applied. Args: the stamp, the batch size.
func (t *Table) GCTombstonesSQL() string {
	return "DELETE FROM " + t.TombstoneQualifiedName() + " WHERE " + Quote(ColHLC) + " < ? LIMIT ?"
}

// Plan is a table's SQL, built once (and rebuilt, from a fresh ReadTable,
// when DDL changes the table). Argument orders are those of the Table
// methods of the same names.
type Plan struct {
	Table           *Table
	SelectVersion   string
	SelectTombstone string
	UpsertTombstone string
	DeleteTombstone string
	Insert          string
	Replace         string
	UpdateByPK      string
	DeleteByPK      string
	GCTombstones    string
}

// Plan builds t's Plan. t must have a primary key.
func (t *Table) Plan() *Plan {
	return &Plan{
		Table:           t,
		SelectVersion:   t.SelectVersionSQL(),
		SelectTombstone: t.SelectTombstoneSQL(),
		UpsertTombstone: t.UpsertTombstoneSQL(),
		DeleteTombstone: t.DeleteTombstoneSQL(),
		Insert:          t.InsertSQL(),
		Replace:         t.ReplaceSQL(),
		UpdateByPK:      t.UpdateByPKSQL(),
		DeleteByPK:      t.DeleteByPKSQL(),
		GCTombstones:    t.GCTombstonesSQL(),
	}
}
