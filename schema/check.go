package schema

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"strconv"
	"strings"

	"github.com/mlproxy/mlproxy/config"
)

// Severity says whether a Problem stops replication from being correct.
type Severity int

const (
	// Error: replication would be wrong or would not start; fix it first.
	Error Severity = iota
	// Warning: works, but risky or confusing; fix it when you can.
	Warning
)

func (s Severity) String() string {
	if s == Warning {
		return "warning"
	}
	return "error"
}

// Problem is one thing Check found wrong.
type Problem struct {
	Severity Severity
	// Where is "local", a peer's name, or schema.table.
	Where string
	// Message says what is wrong, why it matters and how to fix it.
	Message string
}

func (p Problem) String() string { return p.Severity.String() + ": " + p.Where + ": " + p.Message }

// Local is the Where of problems found on the local server.
const Local = "local"

// whereError is an error that belongs to one place (a rule's table).
type whereError struct {
	where string
	err   error
}

func (e *whereError) Error() string { return e.err.Error() }
func (e *whereError) Unwrap() error { return e.err }

// Check reports every problem it finds, at once, in this order: server
// settings of the local server and of each peer (by name), settings that
// must differ between servers, then the local replicated tables selected by
// rules (primary key, metadata columns, tombstone table, triggers for st)
// and the Internal schema. A peer whose server is nil (no
// connection could be made) or does not answer is a Problem naming it;
// so is an unreachable local server. The error is only for a cancelled ctx.
func Check(ctx context.Context, local *sql.DB, peers map[string]*sql.DB, rules []config.TableRule, st Stamping) ([]Problem, error) {
	if resolved, err := LocalStamping(ctx, local, st); err == nil {
		st = resolved // an unreachable local server is reported below
	}
	var ps []Problem
	add := func(sev Severity, where, format string, args ...any) {
		ps = append(ps, Problem{Severity: sev, Where: where, Message: fmt.Sprintf(format, args...)})
	}

	names := make([]string, 0, len(peers))
	for n := range peers {
		names = append(names, n)
	}
	sort.Strings(names)
	regions := 1 + len(peers)

	var servers []serverVars
	localOK := false
	for i, name := range append([]string{Local}, names...) {
		db := local
		if i > 0 {
			db = peers[name]
		}
		if db == nil {
			add(Error, name, "no connection to this server: check its address and credentials in the configuration")
			continue
		}
		v, err := readVars(ctx, db)
		if ctx.Err() != nil {
			return ps, ctx.Err()
		}
		if err != nil {
			add(Error, name, "cannot read server settings (%v): check that the server is up, reachable, and that the configured user may connect", err)
			continue
		}
		v.name = name
		if i == 0 {
			localOK = true
		}
		servers = append(servers, v)
		ps = append(ps, v.problems(regions)...)
	}
	ps = append(ps, crossProblems(servers, regions)...)

	if !localOK {
		return ps, nil
	}
	tables, errs := inspect(ctx, local, rules)
	if ctx.Err() != nil {
		return ps, ctx.Err()
	}
	for _, err := range errs {
		where := Local
		var we *whereError
		if errors.As(err, &we) {
			where = we.where
		}
		add(Error, where, "%v", err)
	}
	for _, t := range tables {
		p, err := checkTable(ctx, local, t, st)
		if err != nil {
			if ctx.Err() != nil {
				return ps, ctx.Err()
			}
			add(Error, t.String(), "cannot inspect the table (%v)", err)
		}
		ps = append(ps, p...)
	}
	ps = append(ps, checkAccounts(ctx, local, tables, st)...)
	uk, err := checkUniqueKeys(ctx, local, tables)
	if err != nil {
		if ctx.Err() != nil {
			return ps, ctx.Err()
		}
		add(Error, Local, "cannot read the tables' unique keys (%v)", err)
	}
	ps = append(ps, uk...)
	p, err := checkInternal(ctx, local)
	if err != nil {
		if ctx.Err() != nil {
			return ps, ctx.Err()
		}
		add(Error, Internal, "cannot inspect the internal schema (%v)", err)
	}
	return append(ps, p...), nil
}

// serverVars are the global settings Check reads from one server.
type serverVars struct {
	name string
	vars map[string]string // lower-case variable name -> value
}

func readVars(ctx context.Context, db *sql.DB) (serverVars, error) {
	rows, err := db.QueryContext(ctx, `SHOW GLOBAL VARIABLES WHERE Variable_name IN
('log_bin', 'binlog_format', 'binlog_row_image', 'binlog_row_metadata', 'server_id',
 'auto_increment_increment', 'auto_increment_offset', 'gtid_domain_id')`)
	if err != nil {
		return serverVars{}, err
	}
	defer rows.Close()
	v := serverVars{vars: map[string]string{}}
	for rows.Next() {
		var k, val string
		if err := rows.Scan(&k, &val); err != nil {
			return serverVars{}, err
		}
		v.vars[strings.ToLower(k)] = val
	}
	return v, rows.Err()
}

func (v serverVars) num(name string) (uint64, bool) {
	s, ok := v.vars[name]
	if !ok {
		return 0, false
	}
	n, err := strconv.ParseUint(s, 10, 64)
	return n, err == nil
}

// autoIncOK reports whether the server's increment leaves room for every
// region's own sequence.
func (v serverVars) autoIncOK(regions int) bool {
	inc, _ := v.num("auto_increment_increment")
	return inc >= uint64(regions)
}

// problems are the settings one server must have on its own.
func (v serverVars) problems(regions int) []Problem {
	var ps []Problem
	add := func(sev Severity, msg string) { ps = append(ps, Problem{Severity: sev, Where: v.name, Message: msg}) }
	if !strings.EqualFold(v.vars["log_bin"], "ON") {
		add(Error, "log_bin is OFF: the binary log is what peers replicate from; start the server with --log-bin")
	}
	if f := v.vars["binlog_format"]; !strings.EqualFold(f, "ROW") {
		add(Error, "binlog_format is "+f+", must be ROW: mlproxy replicates row images; set binlog_format=ROW in the server configuration (SET GLOBAL affects new sessions only)")
	}
	if f := v.vars["binlog_row_image"]; !strings.EqualFold(f, "FULL") {
		add(Error, "binlog_row_image is "+f+", must be FULL: conflict detection needs every column of the before image; set binlog_row_image=FULL")
	}
	if f, ok := v.vars["binlog_row_metadata"]; !ok {
		add(Error, "the server has no binlog_row_metadata setting: mlproxy needs column names in the binlog (MariaDB >= 10.5 or MySQL >= 8.0.1); upgrade the server")
	} else if !strings.EqualFold(f, "FULL") {
		add(Error, "binlog_row_metadata is "+f+", must be FULL: the binlog must carry column names; set binlog_row_metadata=FULL")
	}
	if regions > 1 && !v.autoIncOK(regions) {
		add(Error, fmt.Sprintf("auto_increment_increment is %s but there are %d regions: two regions would generate the same AUTO_INCREMENT ids; set auto_increment_increment >= %d on every server and a distinct auto_increment_offset per region",
			v.vars["auto_increment_increment"], regions, regions))
	}
	return ps
}

func gcd(a, b uint64) uint64 {
	for b != 0 {
		a, b = b, a%b
	}
	return a
}

// crossProblems are settings that must differ between any two servers of
// a deployment of regions regions.
func crossProblems(servers []serverVars, regions int) []Problem {
	var ps []Problem
	for i := 0; i < len(servers); i++ {
		for j := i + 1; j < len(servers); j++ {
			a, b := servers[i], servers[j]
			if ida, ok := a.num("server_id"); ok {
				if idb, ok := b.num("server_id"); ok && ida == idb {
					ps = append(ps, Problem{Severity: Error, Where: a.name, Message: fmt.Sprintf(
						"server_id %d is also the server_id of %s: binlog events would be taken for the server's own and skipped; give every server a unique server_id", ida, b.name)})
				}
			}
			if da, ok := a.num("gtid_domain_id"); ok {
				if db, ok := b.num("gtid_domain_id"); ok && da == db {
					ps = append(ps, Problem{Severity: Warning, Where: a.name, Message: fmt.Sprintf(
						"gtid_domain_id %d is also the gtid_domain_id of %s: their GTID positions mix in one domain; give every region its own gtid_domain_id", da, b.name)})
				}
			}
			ia, _ := a.num("auto_increment_increment")
			ib, _ := b.num("auto_increment_increment")
			oa, _ := a.num("auto_increment_offset")
			ob, _ := b.num("auto_increment_offset")
			if ia == 0 || ib == 0 || !a.autoIncOK(regions) || !b.autoIncOK(regions) {
				continue // the per-server problem already says it
			}
			// offset+k*ia meets offset'+m*ib iff the offsets agree modulo gcd.
			g := gcd(ia, ib)
			if oa%g == ob%g {
				ps = append(ps, Problem{Severity: Error, Where: a.name, Message: fmt.Sprintf(
					"auto_increment_offset %d (increment %d) and %s's offset %d (increment %d) generate the same ids: give each region a distinct auto_increment_offset below a common auto_increment_increment",
					oa, ia, b.name, ob, ib)})
			}
		}
	}
	return ps
}

// checkTable reports what schema apply would change on t, and a missing
// primary key.
func checkTable(ctx context.Context, db *sql.DB, t *Table, st Stamping) ([]Problem, error) {
	var ps []Problem
	add := func(format string, args ...any) {
		ps = append(ps, Problem{Severity: Error, Where: t.String(), Message: fmt.Sprintf(format, args...)})
	}
	if err := checkNames(t); err != nil {
		add("%v", err)
		return ps, nil
	}
	if len(t.PK) == 0 {
		add("%v", ErrNoPrimaryKey)
	}
	for _, m := range metadataColumns {
		c, ok := t.Column(m.name)
		switch {
		case !ok:
			add("metadata column %s is missing: run `mlproxy schema apply`", m.name)
		case !c.Invisible:
			add("metadata column %s is visible: SELECT * and INSERT without a column list would see it; run `mlproxy schema apply` to make it INVISIBLE", m.name)
		case !metadataOK(c):
			add("metadata column %s is %s, not %s: run `mlproxy schema apply`", m.name, c.ColumnType, m.def)
		}
	}
	if _, err := t.ruleColumns(); err != nil {
		add("%v: fix the columns of the rule in the configuration", err)
		return ps, nil // the triggers cannot be generated
	}
	if _, err := t.homeMap(st); err != nil {
		add("%v: fix the table's home mapping in the configuration", err)
		return ps, nil
	}
	if len(t.PK) == 0 {
		return ps, nil // tombstones and triggers need the key
	}
	name := TombstoneTable(t.Schema, t.Name)
	tomb, err := ReadTable(ctx, db, Internal, name)
	switch {
	case errors.Is(err, ErrNoTable):
		add("tombstone table %s.%s is missing: run `mlproxy schema apply`", Internal, name)
	case err != nil:
		return ps, err
	default:
		diff, addMeta := tombstoneMismatch(t, tomb)
		switch {
		case diff != "":
			add("tombstone table %s.%s is stale (%s): run `mlproxy schema apply`", Internal, name, diff)
		case addMeta:
			add("tombstone table %s.%s has no %s column (made before version vectors): run `mlproxy schema apply` to add it", Internal, name, ColMeta)
		}
	}
	want := triggers(t, st)
	names := make([]string, len(want))
	for i, tr := range want {
		names[i] = tr.Name
	}
	have, err := readTriggers(ctx, db, t.Schema, names)
	if err != nil {
		return ps, err
	}
	for _, tr := range want {
		s, ok := have[tr.Name]
		switch {
		case !ok:
			add("trigger %s (%s %s) is missing: writes are not stamped; run `mlproxy schema apply`", tr.Name, tr.Timing, tr.Event)
		case !s.current(t, tr):
			add("trigger %s is stale (the table's columns or the region id changed since schema apply): run `mlproxy schema apply`", tr.Name)
		}
	}
	return ps, nil
}

// checkInternal reports missing tables and columns of the Internal schema.
func checkInternal(ctx context.Context, db *sql.DB) ([]Problem, error) {
	have, err := baseTables(ctx, db, Internal)
	if err != nil {
		return nil, err
	}
	exists := map[string]bool{}
	for _, h := range have {
		exists[h[1]] = true
	}
	var ps []Problem
	for _, name := range internalOrder {
		if !exists[name] {
			ps = append(ps, Problem{Severity: Error, Where: Internal + "." + name,
				Message: "internal table is missing: run `mlproxy schema apply`"})
		}
	}
	missing, err := missingInternalColumns(ctx, db)
	if err != nil {
		return ps, err
	}
	for _, ic := range missing {
		ps = append(ps, Problem{Severity: Error, Where: Internal + "." + ic.table,
			Message: "internal table has no column " + ic.column + " (made by an older mlproxy): run `mlproxy schema apply`"})
	}
	return ps, nil
}

// Privileges an application account must not hold: with them it could
// make writes skip replication or stamping whatever the proxy refuses
// (drop the triggers, switch binary logging off, change mlproxy's state).
var riskyGlobal = map[string]string{
	"SUPER":        "it can switch binary logging off and bypass every check",
	"BINLOG ADMIN": "it can switch binary logging off for its writes",
	"TRIGGER":      "it can drop or replace the stamping triggers of every table",
	"CREATE USER":  "it can create an account with mlproxy's own user name, whose sessions the triggers let write any stamp, origin and vector",
	"DROP":         "it can TRUNCATE or RENAME a replicated table where the proxy cannot see it (a statement prepared from an expression, a procedure): a RENAME swap writes rows past the stamping triggers",
	"ALTER":        "it can ALTER or RENAME a replicated table where the proxy cannot see it, past the stamping triggers",
}

// riskyOnReplicated are the schema- and table-level privileges an
// application account must not hold on a replicated schema: DDL runs
// through `mlproxy schema ddl`, which the proxy's refusal names.
var riskyOnReplicated = map[string]string{
	"TRIGGER": "it can drop the stamping triggers, and its writes would then replicate unstamped",
	"DROP":    riskyGlobal["DROP"],
	"ALTER":   riskyGlobal["ALTER"],
}

// checkAccounts reports accounts other than mlproxy's own (st.Applier) that
// hold privileges letting them escape replication: SUPER, BINLOG ADMIN or
// TRIGGER globally, TRIGGER on a replicated schema, or anything on the
// Internal schema. Operator accounts (root) are reported too: they are
// meant for maintenance, not for applications.
func checkAccounts(ctx context.Context, db *sql.DB, tables []*Table, st Stamping) []Problem {
	var ps []Problem
	self := func(grantee string) bool {
		user, _, _ := strings.Cut(strings.Trim(grantee, "'"), "'@'")
		return user == st.Applier || user == "mariadb.sys" || user == "mysql"
	}
	fix := func(grantee, priv, on string) string {
		return fmt.Sprintf("REVOKE %s ON %s FROM %s", priv, on, grantee)
	}
	rows, err := db.QueryContext(ctx, "SELECT GRANTEE, PRIVILEGE_TYPE FROM information_schema.USER_PRIVILEGES WHERE PRIVILEGE_TYPE IN ('SUPER', 'BINLOG ADMIN', 'TRIGGER', 'CREATE USER', 'DROP', 'ALTER') ORDER BY GRANTEE, PRIVILEGE_TYPE")
	if err == nil {
		for rows.Next() {
			var g, priv string
			if rows.Scan(&g, &priv) == nil && !self(g) {
				ps = append(ps, Problem{Severity: Warning, Where: "account " + g, Message: fmt.Sprintf(
					"has %s on *.*: %s; application accounts need only SELECT, INSERT, UPDATE, DELETE (and the DDL they use) on their own schemas (%s)",
					priv, riskyGlobal[priv], fix(g, priv, "*.*"))})
			}
		}
		rows.Close()
	}
	replicated := map[string]bool{}
	for _, t := range tables {
		replicated[strings.ToLower(t.Schema)] = true
	}
	rows, err = db.QueryContext(ctx, "SELECT GRANTEE, TABLE_SCHEMA, PRIVILEGE_TYPE FROM information_schema.SCHEMA_PRIVILEGES")
	if err == nil {
		for rows.Next() {
			var g, schemaName, priv string
			if rows.Scan(&g, &schemaName, &priv) != nil || self(g) {
				continue
			}
			on := Quote(schemaName) + ".*"
			switch {
			case strings.EqualFold(schemaName, Internal):
				ps = append(ps, Problem{Severity: Warning, Where: "account " + g, Message: fmt.Sprintf(
					"has %s on the internal schema %s: it holds replication state only mlproxy may change (%s)", priv, Internal, fix(g, priv, on))})
			case riskyOnReplicated[priv] != "" && grantCovers(schemaName, replicated):
				ps = append(ps, Problem{Severity: Warning, Where: "account " + g, Message: fmt.Sprintf(
					"has %s on replicated schema %s: %s (%s)", priv, schemaName, riskyOnReplicated[priv], fix(g, priv, on))})
			}
		}
		rows.Close()
	}
	rows, err = db.QueryContext(ctx, "SELECT GRANTEE, TABLE_SCHEMA, TABLE_NAME, PRIVILEGE_TYPE FROM information_schema.TABLE_PRIVILEGES ORDER BY GRANTEE, TABLE_SCHEMA, TABLE_NAME, PRIVILEGE_TYPE")
	if err == nil {
		for rows.Next() {
			var g, schemaName, table, priv string
			if rows.Scan(&g, &schemaName, &table, &priv) != nil || self(g) {
				continue
			}
			on := Quote(schemaName) + "." + Quote(table)
			if riskyOnReplicated[priv] != "" && replicated[strings.ToLower(schemaName)] { // a table grant names its database, no pattern
				ps = append(ps, Problem{Severity: Warning, Where: "account " + g, Message: fmt.Sprintf(
					"has %s on table %s.%s of a replicated schema: %s (%s)", priv, schemaName, table, riskyOnReplicated[priv], fix(g, priv, on))})
			}
		}
		rows.Close()
	}
	// An anonymous account lets a client log in under any user name that
	// has no account of its own from the client's host, mlproxy's included:
	// USER() then carries the name the client gave.
	rows, err = db.QueryContext(ctx, "SELECT DISTINCT GRANTEE FROM information_schema.USER_PRIVILEGES WHERE GRANTEE LIKE ?", "''@%")
	if err == nil {
		for rows.Next() {
			var g string
			if rows.Scan(&g) == nil {
				ps = append(ps, Problem{Severity: Warning, Where: "account " + g, Message: fmt.Sprintf(
					"is an anonymous account: a client can log in through it under any user name, mlproxy's own included, and the triggers trust that name (DROP USER %s)", g)})
			}
		}
		rows.Close()
	}
	return ps
}

// grantCovers reports whether a schema-level grant's database (a pattern:
// % and _ are wildcards, \_ and \% literal, as in GRANT ... ON `app%`.*)
// covers one of the replicated schemas (lower-case keys).
func grantCovers(pattern string, replicated map[string]bool) bool {
	pattern = strings.ToLower(pattern)
	if replicated[pattern] {
		return true
	}
	var re strings.Builder
	re.WriteString("^")
	for i := 0; i < len(pattern); i++ {
		switch c := pattern[i]; {
		case c == '\\' && i+1 < len(pattern):
			i++
			re.WriteString(regexp.QuoteMeta(string(pattern[i])))
		case c == '%':
			re.WriteString(".*")
		case c == '_':
			re.WriteString(".")
		default:
			re.WriteString(regexp.QuoteMeta(string(c)))
		}
	}
	re.WriteString("$")
	rx, err := regexp.Compile(re.String())
	if err != nil {
		return false
	}
	for name := range replicated {
		if rx.MatchString(name) {
			return true
		}
	}
	return false
}

// checkUniqueKeys warns about replicated tables with a unique key besides
// the primary key: two regions inserting the same value each commit, and
// no conflict rule can place the second row (rules merge versions of one
// primary key). The table's on_constraint says what the applier does then.
func checkUniqueKeys(ctx context.Context, db *sql.DB, tables []*Table) ([]Problem, error) {
	if len(tables) == 0 {
		return nil, nil
	}
	rows, err := db.QueryContext(ctx, `SELECT TABLE_SCHEMA, TABLE_NAME, INDEX_NAME, GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX)
FROM information_schema.STATISTICS WHERE NON_UNIQUE = 0 AND INDEX_NAME <> 'PRIMARY'
GROUP BY TABLE_SCHEMA, TABLE_NAME, INDEX_NAME ORDER BY TABLE_SCHEMA, TABLE_NAME, INDEX_NAME`)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	byName := map[string]*Table{}
	for _, t := range tables {
		byName[strings.ToLower(t.Schema+"."+t.Name)] = t
	}
	var ps []Problem
	for rows.Next() {
		var sch, tbl, idx, cols string
		if err := rows.Scan(&sch, &tbl, &idx, &cols); err != nil {
			return nil, err
		}
		t, ok := byName[strings.ToLower(sch+"."+tbl)]
		if !ok {
			continue
		}
		policy := t.Rule.OnConstraint
		if policy == "" {
			policy = config.OnConstraintStop
		}
		ps = append(ps, Problem{Severity: Warning, Where: t.String(), Message: fmt.Sprintf(
			"unique key %s (%s) can collide across regions: two regions inserting the same value both commit, and no conflict rule can place the second row; "+
				"on_constraint is %s (stop: the link stops at the refused row until `mlproxy link skip|retry`; log: it is recorded in the conflict log and skipped). "+
				"Write such keys in one region (home them) or derive them from the primary key", idx, cols, policy)})
	}
	return ps, rows.Err()
}
