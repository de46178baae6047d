package schema

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"

	"github.com/go-sql-driver/mysql"
	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/redact"
)

// InternalTables are the CREATE TABLE statements of the Internal schema's
// fixed tables (docs/internals.md, "Internal schema mlr"), by table name.
var InternalTables = map[string]string{
	"checkpoints": "CREATE TABLE `" + Internal + "`.`checkpoints` (\n" +
		"  peer_id     SMALLINT UNSIGNED NOT NULL PRIMARY KEY,\n" +
		"  peer_name   VARCHAR(64)  NOT NULL,\n" +
		"  gtid        VARCHAR(1024) NOT NULL DEFAULT '',\n" +
		"  file        VARCHAR(255) NOT NULL DEFAULT '',\n" +
		"  pos         BIGINT UNSIGNED NOT NULL DEFAULT 0,\n" +
		"  hlc         BIGINT UNSIGNED NOT NULL DEFAULT 0,\n" +
		"  txns        BIGINT UNSIGNED NOT NULL DEFAULT 0,\n" +
		"  batches     BIGINT UNSIGNED NOT NULL DEFAULT 0,\n" +
		"  source_ts   TIMESTAMP(6) NULL,\n" +
		"  applied_at  TIMESTAMP(6) NULL\n" +
		") ENGINE=InnoDB",
	"conflicts": "CREATE TABLE `" + Internal + "`.`conflicts` (\n" +
		"  id BIGINT UNSIGNED AUTO_INCREMENT PRIMARY KEY,\n" +
		"  detected_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),\n" +
		"  peer_id SMALLINT UNSIGNED NOT NULL,\n" +
		"  db VARCHAR(64) NOT NULL, tbl VARCHAR(64) NOT NULL,\n" +
		"  pk JSON NOT NULL,\n" +
		"  rule VARCHAR(32) NOT NULL,\n" +
		"  local_hlc BIGINT UNSIGNED NULL,  local_origin SMALLINT UNSIGNED NULL,\n" +
		"  remote_hlc BIGINT UNSIGNED NOT NULL, remote_origin SMALLINT UNSIGNED NOT NULL,\n" +
		"  local_row JSON NULL, remote_row JSON NULL,\n" +
		"  local_meta JSON NULL, remote_meta JSON NULL,\n" +
		"  outcome VARCHAR(32) NOT NULL,\n" +
		"  resolved_at TIMESTAMP(6) NULL, resolution VARCHAR(64) NULL,\n" +
		"  shadow_rule VARCHAR(32) NULL, shadow_outcome VARCHAR(32) NULL,\n" +
		"  shadow_row JSON NULL, shadow_differs BOOLEAN NULL,\n" +
		"  KEY (db, tbl), KEY (outcome)\n" +
		") ENGINE=InnoDB",
	"hlc": "CREATE TABLE `" + Internal + "`.`hlc` (id TINYINT UNSIGNED PRIMARY KEY, high_water BIGINT UNSIGNED NOT NULL) ENGINE=InnoDB",
	// strong_leaders holds the leader `mlproxy strong move` gave a strong
	// table (0 while it moves), over the configured one.
	"strong_leaders": "CREATE TABLE `" + Internal + "`.`strong_leaders` (\n" +
		"  db VARCHAR(64) NOT NULL, tbl VARCHAR(64) NOT NULL,\n" +
		"  leader SMALLINT UNSIGNED NOT NULL,\n" +
		"  previous SMALLINT UNSIGNED NOT NULL DEFAULT 0,  -- the leader before a move (its writes are waited for)\n" +
		"  moved_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),\n" +
		"  moved_by VARCHAR(128) NOT NULL DEFAULT '',\n" +
		"  PRIMARY KEY (db, tbl)\n" +
		") ENGINE=InnoDB",
	// replicator names the instance of this region that runs the
	// replicator (the holder of its GET_LOCK) and the epoch it took over
	// at; appliers commit only under their own epoch.
	"replicator": "CREATE TABLE `" + Internal + "`.`replicator` (\n" +
		"  id TINYINT UNSIGNED PRIMARY KEY,\n" +
		"  epoch BIGINT UNSIGNED NOT NULL,\n" +
		"  holder VARCHAR(255) NOT NULL,\n" +
		"  since TIMESTAMP(6) NOT NULL\n" +
		") ENGINE=InnoDB",
	// link_stops names the change a stopped link is held at (key values
	// included: the CLI shows them, logs and metrics do not).
	"link_stops": "CREATE TABLE `" + Internal + "`.`link_stops` (\n" +
		"  peer_id SMALLINT UNSIGNED NOT NULL PRIMARY KEY,\n" +
		"  gtid VARCHAR(1024) NOT NULL,\n" +
		"  db VARCHAR(64) NOT NULL, tbl VARCHAR(64) NOT NULL,\n" +
		"  pk JSON NOT NULL,\n" +
		"  error VARCHAR(1024) NOT NULL,\n" +
		"  since TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6)\n" +
		") ENGINE=InnoDB",
	// table_stops names, per peer and table, the change a table stopped
	// at (on_constraint: stop when only that table needs to wait) and an
	// operator's pending request (skip, retry) for it.
	"table_stops": "CREATE TABLE `" + Internal + "`.`table_stops` (\n" +
		"  peer_id SMALLINT UNSIGNED NOT NULL,\n" +
		"  db VARCHAR(64) NOT NULL, tbl VARCHAR(64) NOT NULL,\n" +
		"  gtid VARCHAR(1024) NOT NULL,\n" +
		"  pk JSON NOT NULL,\n" +
		"  key_hash CHAR(12) NOT NULL,\n" +
		"  kind VARCHAR(16) NOT NULL DEFAULT 'constraint',\n" +
		"  error VARCHAR(1024) NOT NULL,\n" +
		"  since TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),\n" +
		"  request VARCHAR(8) NULL, request_gtid VARCHAR(1024) NULL, requested_by VARCHAR(128) NULL,\n" +
		"  PRIMARY KEY (peer_id, db, tbl)\n" +
		") ENGINE=InnoDB",
	// held keeps, in source order, the changes a peer sent to a stopped
	// table after it stopped; they are applied when it resumes.
	"held": "CREATE TABLE `" + Internal + "`.`held` (\n" +
		"  peer_id SMALLINT UNSIGNED NOT NULL,\n" +
		"  db VARCHAR(64) NOT NULL, tbl VARCHAR(64) NOT NULL,\n" +
		"  seq BIGINT UNSIGNED NOT NULL,\n" +
		"  gtid VARCHAR(1024) NOT NULL,\n" +
		"  source SMALLINT UNSIGNED NOT NULL,\n" +
		"  chg LONGBLOB NOT NULL,\n" +
		"  PRIMARY KEY (peer_id, db, tbl, seq)\n" +
		") ENGINE=InnoDB",
	// markers holds one row per parallel apply worker and peer: the loop
	// marker of that worker's transactions (a row of checkpoints would
	// make the workers wait for each other's commits).
	"markers": "CREATE TABLE `" + Internal + "`.`markers` (\n" +
		"  peer_id SMALLINT UNSIGNED NOT NULL,\n" +
		"  worker  SMALLINT UNSIGNED NOT NULL,\n" +
		"  batches BIGINT UNSIGNED NOT NULL DEFAULT 0,\n" +
		"  PRIMARY KEY (peer_id, worker)\n" +
		") ENGINE=InnoDB",
	// link_requests holds an operator's `mlproxy link skip|retry` for a
	// stopped link, until the applier acts on it.
	"link_requests": "CREATE TABLE `" + Internal + "`.`link_requests` (\n" +
		"  peer_id SMALLINT UNSIGNED NOT NULL,\n" +
		"  action VARCHAR(8) NOT NULL,\n" +
		"  gtid VARCHAR(1024) NOT NULL DEFAULT '',\n" +
		"  requested_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),\n" +
		"  requested_by VARCHAR(128) NOT NULL DEFAULT '',\n" +
		"  PRIMARY KEY (peer_id, action)\n" +
		") ENGINE=InnoDB",
	// traces carries a sampled write's trace context to the peers: the
	// trigger of the first row a traced statement changes inserts the
	// proxy's @_mlr_tp here, in the write's transaction, and the peers'
	// tailers read it from the binlog (package tracing). Rows are
	// region-local and dropped after five minutes (DeleteOldTraces): the
	// binlog keeps them for the peers.
	"traces": "CREATE TABLE `" + Internal + "`.`traces` (\n" +
		"  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,\n" +
		"  traceparent CHAR(55) CHARACTER SET ascii NOT NULL,\n" +
		"  at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),\n" +
		"  KEY (at)\n" +
		") ENGINE=InnoDB",
}

// DeleteOldTraces is the statement that drops mlr.traces rows older than
// five minutes, at most 10,000 at a time.
const DeleteOldTraces = "DELETE FROM `" + Internal + "`.`traces` WHERE at < NOW(6) - INTERVAL 5 MINUTE LIMIT 10000"

// internalOrder fixes the order InternalTables are created and reported in.
var internalOrder = []string{"checkpoints", "conflicts", "held", "hlc", "link_requests", "link_stops", "markers", "replicator", "strong_leaders", "table_stops", "traces"}

// internalColumn is a column an Internal table gained after its first
// release: schema apply adds it to an existing table that lacks it.
type internalColumn struct{ table, column, def string }

// internalColumns are the columns added since, in the order they are added.
// checkpoints.batches counts the applier's transactions from a peer: the
// applier increments it as the first write of each, so the checkpoint row
// (the loop marker) precedes every row event of the transaction.
var internalColumns = []internalColumn{
	{"checkpoints", "batches", "BIGINT UNSIGNED NOT NULL DEFAULT 0 AFTER txns"},
	// Both versions' vectors (change.Meta), so that a resolution can be
	// written causally after both.
	{"conflicts", "local_meta", "JSON NULL AFTER remote_row"},
	{"conflicts", "remote_meta", "JSON NULL AFTER local_meta"},
	// What a table's shadow rule would have done (config.Shadow).
	{"conflicts", "shadow_rule", "VARCHAR(32) NULL"},
	{"conflicts", "shadow_outcome", "VARCHAR(32) NULL"},
	{"conflicts", "shadow_row", "JSON NULL"},
	{"conflicts", "shadow_differs", "BOOLEAN NULL"},
}

// missingInternalColumns are the internalColumns that existing Internal
// tables lack (a missing table lacks none: its CREATE has them all).
func missingInternalColumns(ctx context.Context, db *sql.DB) ([]internalColumn, error) {
	var out []internalColumn
	for _, ic := range internalColumns {
		var tables, cols int
		if err := db.QueryRowContext(ctx, `SELECT COUNT(*), COALESCE(SUM(c.COLUMN_NAME IS NOT NULL), 0)
FROM information_schema.TABLES t LEFT JOIN information_schema.COLUMNS c
  ON c.TABLE_SCHEMA = t.TABLE_SCHEMA AND c.TABLE_NAME = t.TABLE_NAME AND c.COLUMN_NAME = ?
WHERE t.TABLE_SCHEMA = ? AND t.TABLE_NAME = ?`, ic.column, Internal, ic.table).Scan(&tables, &cols); err != nil {
			return nil, fmt.Errorf("look for column %s.%s.%s: %w", Internal, ic.table, ic.column, err)
		}
		if tables > 0 && cols == 0 {
			out = append(out, ic)
		}
	}
	return out, nil
}

// Metadata column definitions, as schema apply adds them to a replicated
// table. _mlr_vv is NULL in rows written before version vectors.
const (
	DefOrigin = "SMALLINT UNSIGNED NOT NULL DEFAULT 0 INVISIBLE"
	DefHLC    = "BIGINT UNSIGNED NOT NULL DEFAULT 0 INVISIBLE"
	DefMeta   = "TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL DEFAULT NULL INVISIBLE"
)

// DefTombstoneMeta is the definition of a tombstone table's _mlr_vv
// (visible; NULL in tombstones written before version vectors).
const DefTombstoneMeta = "TEXT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin NULL"

// Report lists what Apply changed, one human-readable line per change
// (no row values). Empty means the server already matched.
type Report struct {
	Changes []string
}

// Changed reports whether Apply changed anything.
func (r Report) Changed() bool { return len(r.Changes) > 0 }

// String is the changes, one per line, or "nothing to do".
func (r Report) String() string {
	if !r.Changed() {
		return "nothing to do"
	}
	return strings.Join(r.Changes, "\n")
}

// ErrNameTooLong is returned for a table whose tombstone table or trigger
// names would exceed 64 characters.
var ErrNameTooLong = errors.New("name too long for mlproxy's tombstone table (`<db>.<table>` ≤ 64 characters) or triggers (`_mlr_bi_<table>` ≤ 64): rename the table")

// ErrDotInSchema is returned for a schema name containing '.', which would
// make tombstone table names ambiguous.
var ErrDotInSchema = errors.New("schema name contains '.', which mlproxy's tombstone table names cannot represent: rename the schema")

// Apply installs mlproxy's metadata on the local server of region st.Region
// (st.Applier empty: the account db connects as is the applier's):
// the Internal schema and its tables, and for every table the invisible
// metadata columns, its tombstone table and its three triggers.
//
// Apply is idempotent: it changes only what differs from what it would
// create, and a second run reports no changes. Each table is re-read first,
// so its triggers match its current columns. A table that cannot be
// prepared (no primary key, a name too long, a failed DDL) does not stop
// the others; all errors are returned together, each naming schema.table.
// DDL is not transactional: a failure may leave a table half prepared, and
// running Apply again completes it.
func Apply(ctx context.Context, db *sql.DB, st Stamping, tables []*Table, log *zap.Logger) (Report, error) {
	if log == nil {
		log = zap.NewNop()
	}
	st, err := LocalStamping(ctx, db, st)
	if err != nil {
		return Report{}, fmt.Errorf("schema apply: %w", err)
	}
	a := &applier{db: db, stamping: st, log: log}
	var version string
	if err := db.QueryRowContext(ctx, "SELECT VERSION()").Scan(&version); err != nil {
		return Report{}, fmt.Errorf("schema apply: read server version: %w", err)
	}
	a.mariadb = strings.Contains(strings.ToLower(version), "mariadb")
	if err := a.internal(ctx); err != nil {
		return a.report, err
	}
	var errs []error
	for _, t := range tables {
		if err := a.table(ctx, t); err != nil {
			log.Warn("schema apply failed", zap.String("schema", t.Schema), zap.String("table", t.Name), redact.Err(err))
			errs = append(errs, err)
		}
		if ctx.Err() != nil {
			break
		}
	}
	return a.report, errors.Join(errs...)
}

type applier struct {
	db       *sql.DB
	stamping Stamping
	log      *zap.Logger
	mariadb  bool // CREATE OR REPLACE TRIGGER swaps a trigger atomically
	report   Report
}

func (a *applier) changed(t *Table, what string) {
	where := Internal
	if t != nil {
		where = t.String()
		a.log.Info("schema changed", zap.String("schema", t.Schema), zap.String("table", t.Name), zap.String("change", what))
	} else {
		a.log.Info("schema changed", zap.String("schema", Internal), zap.String("change", what))
	}
	a.report.Changes = append(a.report.Changes, where+": "+what)
}

// internal creates the Internal schema and its fixed tables when missing.
func (a *applier) internal(ctx context.Context) error {
	var n int
	if err := a.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = ?", Internal).Scan(&n); err != nil {
		return fmt.Errorf("schema apply: look for schema %s: %w", Internal, err)
	}
	if n == 0 {
		if _, err := a.db.ExecContext(ctx, "CREATE DATABASE IF NOT EXISTS "+Quote(Internal)+" DEFAULT CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"); err != nil {
			return fmt.Errorf("schema apply: create schema %s: %w", Internal, err)
		}
		a.changed(nil, "created schema "+Internal)
	}
	have, err := baseTables(ctx, a.db, Internal)
	if err != nil {
		return fmt.Errorf("schema apply: %w", err)
	}
	exists := map[string]bool{}
	for _, h := range have {
		exists[h[1]] = true
	}
	for _, name := range internalOrder {
		if exists[name] {
			continue
		}
		if _, err := a.db.ExecContext(ctx, InternalTables[name]); err != nil {
			return fmt.Errorf("schema apply: create %s.%s: %w", Internal, name, err)
		}
		a.changed(nil, "created table "+Internal+"."+name)
	}
	missing, err := missingInternalColumns(ctx, a.db)
	if err != nil {
		return fmt.Errorf("schema apply: %w", err)
	}
	for _, ic := range missing {
		if _, err := a.db.ExecContext(ctx, "ALTER TABLE "+Quote(Internal)+"."+Quote(ic.table)+" ADD COLUMN "+Quote(ic.column)+" "+ic.def); err != nil {
			return fmt.Errorf("schema apply: add column %s to %s.%s: %w", ic.column, Internal, ic.table, err)
		}
		a.changed(nil, "added column "+ic.column+" to table "+Internal+"."+ic.table)
	}
	return nil
}

// checkNames refuses a table whose derived names cannot be created.
func checkNames(t *Table) error {
	if strings.Contains(t.Schema, ".") {
		return fmt.Errorf("table %s: %w", t, ErrDotInSchema)
	}
	if len([]rune(TombstoneTable(t.Schema, t.Name))) > maxIdent || len([]rune(TriggerBeforeInsert+t.Name)) > maxIdent {
		return fmt.Errorf("table %s: %w", t, ErrNameTooLong)
	}
	return nil
}

func (a *applier) table(ctx context.Context, in *Table) error {
	if err := checkNames(in); err != nil {
		return err
	}
	t, err := ReadTable(ctx, a.db, in.Schema, in.Name)
	if err != nil {
		return fmt.Errorf("schema apply: %w", err)
	}
	t.Rule = in.Rule
	if len(t.PK) == 0 {
		return fmt.Errorf("schema apply %s: %w", t, ErrNoPrimaryKey)
	}
	if _, err := t.ruleColumns(); err != nil {
		return fmt.Errorf("schema apply %s: %w", t, err)
	}
	if _, err := t.homeMap(a.stamping); err != nil {
		return fmt.Errorf("schema apply %s: %w", t, err)
	}
	if err := a.columns(ctx, t); err != nil {
		return err
	}
	if err := a.tombstone(ctx, t); err != nil {
		return err
	}
	if err := a.legacyCounters(ctx, t); err != nil {
		return err
	}
	return a.triggers(ctx, t)
}

// legacyCounters gives the rows of a counter table written before version
// vectors (NULL _mlr_vv) metadata that attributes their whole value to the
// region that wrote them: without it, every region would count a legacy
// row's value as its own contribution and the totals would multiply. Every
// region holds the same legacy rows, so each attributes them the same
// way; rows this region wrote need nothing (its own contribution is what
// the others do not claim). Runs as the applier (the triggers leave the
// row alone) before the triggers are replaced, and only touches rows
// without metadata, so it is idempotent.
func (a *applier) legacyCounters(ctx context.Context, t *Table) error {
	if t.Rule.Rule != config.RuleCounter {
		return nil
	}
	cols, err := t.ruleColumns()
	if err != nil || len(cols) == 0 {
		return err
	}
	region := "CAST(" + Quote(ColOrigin) + " & 0xFFFF AS CHAR)"
	per := make([]string, 0, 2*len(cols))
	for _, c := range cols {
		per = append(per, sqlString(c.Name), "JSON_OBJECT("+region+", COALESCE("+Quote(c.Name)+", 0))")
	}
	stmt := "UPDATE " + t.QualifiedName() + " SET " + Quote(ColMeta) + " = JSON_COMPACT(JSON_OBJECT(" + region + ", " + Quote(ColHLC) +
		", 'c', JSON_OBJECT(" + strings.Join(per, ", ") + "))) WHERE " + Quote(ColMeta) + " IS NULL AND " + Quote(ColHLC) +
		" > 0 AND (" + Quote(ColOrigin) + " & 0xFFFF) <> ?"
	conn, err := a.db.Conn(ctx)
	if err != nil {
		return fmt.Errorf("schema apply %s: %w", t, err)
	}
	defer conn.Close()
	if _, err := conn.ExecContext(ctx, "SET @_mlr_apply = 1"); err != nil {
		return fmt.Errorf("schema apply %s: %w", t, err)
	}
	res, err := conn.ExecContext(ctx, stmt, a.stamping.Region)
	_, _ = conn.ExecContext(ctx, "SET @_mlr_apply = NULL")
	if err != nil {
		return fmt.Errorf("schema apply %s: attribute counter rows written before version vectors: %w", t, err)
	}
	if n, _ := res.RowsAffected(); n > 0 {
		a.changed(t, fmt.Sprintf("attributed %d counter rows written before version vectors to their origins", n))
	}
	return nil
}

// metadataOK reports whether an existing metadata column has the type,
// nullability and invisibility apply gives it.
func metadataOK(c Column) bool {
	if !c.Invisible || c.Generated {
		return false
	}
	switch c.Name {
	case ColMeta:
		return c.DataType == "text" && c.Nullable && c.Charset == "utf8mb4"
	case ColOrigin:
		return c.DataType == "smallint" && c.Unsigned && !c.Nullable
	}
	return c.DataType == "bigint" && c.Unsigned && !c.Nullable
}

// metadataColumns are the metadata columns of a replicated table with
// their definitions, in the order apply adds them.
var metadataColumns = []struct{ name, def string }{{ColOrigin, DefOrigin}, {ColHLC, DefHLC}, {ColMeta, DefMeta}}

// columns adds (or corrects) the three invisible metadata columns.
func (a *applier) columns(ctx context.Context, t *Table) error {
	var clauses []string
	instant := true
	for _, m := range metadataColumns {
		c, ok := t.Column(m.name)
		switch {
		case !ok:
			clauses = append(clauses, "ADD COLUMN "+Quote(m.name)+" "+m.def)
		case !metadataOK(c):
			clauses = append(clauses, "MODIFY COLUMN "+Quote(m.name)+" "+m.def)
			instant = false
		}
	}
	if len(clauses) == 0 {
		return nil
	}
	err := a.alter(ctx, t, "ALTER TABLE "+t.QualifiedName()+" "+strings.Join(clauses, ", "), instant)
	if err != nil {
		return fmt.Errorf("schema apply %s: add metadata columns: %w", t, err)
	}
	a.changed(t, "metadata columns: "+strings.Join(clauses, ", "))
	return nil
}

// alter runs an ALTER TABLE on t, first with ALGORITHM=INSTANT when
// instant, falling back to the default algorithm when the server refuses.
func (a *applier) alter(ctx context.Context, t *Table, stmt string, instant bool) error {
	if !instant {
		_, err := a.db.ExecContext(ctx, stmt)
		return err
	}
	_, err := a.db.ExecContext(ctx, stmt+", ALGORITHM=INSTANT")
	var me *mysql.MySQLError
	// 1845/1846: ALGORITHM=INSTANT not supported for this table.
	if errors.As(err, &me) && (me.Number == 1845 || me.Number == 1846) {
		a.log.Info("instant ADD COLUMN refused; altering with the default algorithm",
			zap.String("schema", t.Schema), zap.String("table", t.Name))
		_, err = a.db.ExecContext(ctx, stmt)
	}
	return err
}

// CreateTombstoneSQL is the CREATE TABLE of t's tombstone table: the
// primary key columns with their exact types (collation included), then
// _mlr_hlc, _mlr_origin and _mlr_vv; primary key = t's; a key on _mlr_hlc
// for GC.
func (t *Table) CreateTombstoneSQL() string {
	var b strings.Builder
	b.WriteString("CREATE TABLE " + t.TombstoneQualifiedName() + " (\n")
	for _, c := range t.PKColumns() {
		b.WriteString("  " + Quote(c.Name) + " " + c.Definition() + " NOT NULL,\n")
	}
	b.WriteString("  " + Quote(ColHLC) + " BIGINT UNSIGNED NOT NULL,\n")
	b.WriteString("  " + Quote(ColOrigin) + " SMALLINT UNSIGNED NOT NULL,\n")
	b.WriteString("  " + Quote(ColMeta) + " " + DefTombstoneMeta + ",\n")
	pk := make([]string, len(t.PK))
	for i, c := range t.PK {
		pk[i] = Quote(c)
	}
	b.WriteString("  PRIMARY KEY (" + strings.Join(pk, ", ") + "),\n")
	b.WriteString("  KEY " + Quote(ColHLC) + " (" + Quote(ColHLC) + ")\n")
	b.WriteString(") ENGINE=InnoDB")
	return b.String()
}

// tombstoneMismatch describes how an existing tombstone table differs from
// what CreateTombstoneSQL makes for t ("" when it matches). addMeta is set
// (with diff "") for a table of the shape before version vectors, which
// matches but for the missing _mlr_vv: apply adds the column and keeps the
// tombstones.
func tombstoneMismatch(t, tomb *Table) (diff string, addMeta bool) {
	want := t.PKColumns()
	n := len(want)
	switch len(tomb.Columns) {
	case n + 3:
	case n + 2:
		addMeta = true
	default:
		return "its columns differ from the table's primary key", false
	}
	for i, c := range want {
		got := tomb.Columns[i]
		if got.Name != c.Name || !strings.EqualFold(got.Definition(), c.Definition()) {
			return "column " + c.Name + " differs from the table's primary key column", false
		}
	}
	h, o := tomb.Columns[n], tomb.Columns[n+1]
	if h.Name != ColHLC || h.DataType != "bigint" || !h.Unsigned || o.Name != ColOrigin || o.DataType != "smallint" || !o.Unsigned {
		return "its stamp columns are not " + ColHLC + " BIGINT UNSIGNED, " + ColOrigin + " SMALLINT UNSIGNED", false
	}
	if !addMeta {
		if m := tomb.Columns[n+2]; m.Name != ColMeta || m.DataType != "text" || !m.Nullable || m.Generated {
			return "its last column is not " + ColMeta + " TEXT NULL", false
		}
	}
	if strings.Join(tomb.PK, ",") != strings.Join(t.PK, ",") {
		return "its primary key differs from the table's", false
	}
	return "", addMeta
}

// tombstone creates t's tombstone table, adds _mlr_vv to one made before
// version vectors, or recreates it when its shape no longer matches t's
// primary key and it holds no tombstones.
func (a *applier) tombstone(ctx context.Context, t *Table) error {
	name := TombstoneTable(t.Schema, t.Name)
	tomb, err := ReadTable(ctx, a.db, Internal, name)
	switch {
	case errors.Is(err, ErrNoTable):
	case err != nil:
		return fmt.Errorf("schema apply %s: read tombstone table: %w", t, err)
	default:
		diff, addMeta := tombstoneMismatch(t, tomb)
		if diff == "" && addMeta {
			stmt := "ALTER TABLE " + t.TombstoneQualifiedName() + " ADD COLUMN " + Quote(ColMeta) + " " + DefTombstoneMeta + " AFTER " + Quote(ColOrigin)
			if err := a.alter(ctx, t, stmt, true); err != nil {
				return fmt.Errorf("schema apply %s: add %s to tombstone table: %w", t, ColMeta, err)
			}
			a.changed(t, "tombstone table "+Internal+"."+name+": ADD COLUMN "+Quote(ColMeta)+" "+DefTombstoneMeta)
			return nil
		}
		if diff == "" {
			return nil
		}
		var rows int
		if err := a.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM "+t.TombstoneQualifiedName()).Scan(&rows); err != nil {
			return fmt.Errorf("schema apply %s: count tombstones: %w", t, err)
		}
		if rows > 0 {
			return fmt.Errorf("schema apply %s: tombstone table %s.%s is stale (%s) and holds %d tombstones: let peers catch up, then drop it and run schema apply again",
				t, Internal, name, diff, rows)
		}
		if _, err := a.db.ExecContext(ctx, "DROP TABLE "+t.TombstoneQualifiedName()); err != nil {
			return fmt.Errorf("schema apply %s: drop stale tombstone table: %w", t, err)
		}
		a.changed(t, "dropped empty stale tombstone table "+Internal+"."+name+" ("+diff+")")
	}
	if _, err := a.db.ExecContext(ctx, t.CreateTombstoneSQL()); err != nil {
		return fmt.Errorf("schema apply %s: create tombstone table: %w", t, err)
	}
	a.changed(t, "created tombstone table "+Internal+"."+name)
	return nil
}

// storedTrigger is one row of information_schema.TRIGGERS.
type storedTrigger struct {
	timing, event, table, body string
}

// readTriggers returns the triggers of schema by name.
func readTriggers(ctx context.Context, db *sql.DB, schema string, names []string) (map[string]storedTrigger, error) {
	args := []any{schema}
	for _, n := range names {
		args = append(args, n)
	}
	rows, err := db.QueryContext(ctx, `SELECT TRIGGER_NAME, ACTION_TIMING, EVENT_MANIPULATION, EVENT_OBJECT_TABLE, ACTION_STATEMENT
FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = ? AND TRIGGER_NAME IN (`+placeholders(len(names))+`)`, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := map[string]storedTrigger{}
	for rows.Next() {
		var n string
		var s storedTrigger
		if err := rows.Scan(&n, &s.timing, &s.event, &s.table, &s.body); err != nil {
			return nil, err
		}
		out[n] = s
	}
	return out, rows.Err()
}

// current reports whether a stored trigger is the one Apply would create.
func (s storedTrigger) current(t *Table, tr Trigger) bool {
	return s.table == t.Name && strings.EqualFold(s.timing, tr.Timing) && strings.EqualFold(s.event, tr.Event) && sameBody(s.body, tr.Body)
}

// triggers creates or replaces t's triggers where they differ.
func (a *applier) triggers(ctx context.Context, t *Table) error {
	want := triggers(t, a.stamping)
	names := make([]string, len(want))
	for i, tr := range want {
		names[i] = tr.Name
	}
	have, err := readTriggers(ctx, a.db, t.Schema, names)
	if err != nil {
		return fmt.Errorf("schema apply %s: read triggers: %w", t, err)
	}
	for _, tr := range want {
		s, exists := have[tr.Name]
		if exists && s.current(t, tr) {
			continue
		}
		create := tr.CreateSQL(t)
		if exists {
			if a.mariadb {
				// One statement: no moment without the trigger.
				create = "CREATE OR REPLACE" + strings.TrimPrefix(create, "CREATE")
			} else if _, err := a.db.ExecContext(ctx, "DROP TRIGGER IF EXISTS "+Quote(t.Schema)+"."+Quote(tr.Name)); err != nil {
				return fmt.Errorf("schema apply %s: drop stale trigger %s: %w", t, tr.Name, err)
			}
		}
		if _, err := a.db.ExecContext(ctx, create); err != nil {
			return fmt.Errorf("schema apply %s: create trigger %s: %w", t, tr.Name, err)
		}
		verb := "created"
		if exists {
			verb = "replaced stale"
		}
		a.changed(t, verb+" trigger "+tr.Name)
	}
	return nil
}
