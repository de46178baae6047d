package itest

import (
	"context"
	"database/sql"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// appGrants are the grants the README gives an application account.
const appGrants = `GRANT SELECT, INSERT, UPDATE, DELETE, CREATE TEMPORARY TABLES,
      LOCK TABLES, EXECUTE, CREATE ROUTINE, ALTER ROUTINE, CREATE VIEW,
      SHOW VIEW ON app.* TO 'app'@'127.0.0.1'`

// ddlGrants add what the README tells an application account not to hold
// (schema check warns about it): DDL rights on a replicated schema.
const ddlGrants = `GRANT CREATE, ALTER, INDEX, DROP ON app.* TO 'ddl'@'127.0.0.1'`

// TestHostileAppAccount: an application account with exactly the README's
// grants tries, through eu's proxy, every way to skip replication or forge
// a stamp, an origin or a vector, in forms the proxy can read and in forms
// it cannot (a statement prepared from an expression, a procedure). Every
// attempt is refused or has no effect: each row reaches us with origin eu
// and a stamp from eu's clock, the triggers are still there, the regions
// end identical, and a 90-digit literal answers while another connection
// keeps working.
func TestHostileAppAccount(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := startCluster(t, cluster.Options{Names: []string{"eu", "us"},
		Setup:  appSetup + "CREATE TABLE app.users (id INT PRIMARY KEY, email VARCHAR(64) NOT NULL UNIQUE);",
		Tables: appTables + "\n  - schema: app\n    table: users\n    rule: lww"})
	eu, us := c.Regions[0], c.Regions[1]
	for _, r := range c.Regions {
		if _, err := openDirect(t, r).Exec("CREATE USER 'app'@'127.0.0.1' IDENTIFIED BY 'app-pw'; " + appGrants + "; " +
			"CREATE USER 'ddl'@'127.0.0.1' IDENTIFIED BY 'ddl-pw'; " + strings.ReplaceAll(appGrants, "'app'@", "'ddl'@") + "; " + ddlGrants); err != nil {
			t.Fatal(err)
		}
	}
	session := func(user, pw string) *sql.DB {
		cfg, err := mysql.ParseDSN(eu.DSN("app"))
		if err != nil {
			t.Fatal(err)
		}
		cfg.User, cfg.Passwd = user, pw
		cfg.MultiStatements = true
		db, err := sql.Open("mysql", cfg.FormatDSN())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { db.Close() })
		db.SetMaxOpenConns(1) // one session: what one statement sets, the next sees
		return db
	}
	app := session("app", "app-pw")

	// Another client that must keep being served throughout.
	bystander := openProxy(t, eu, 1)

	start := time.Now()
	far := uint64(time.Now().Add(24*time.Hour).UnixMilli()) << 16
	type attempt struct {
		name string
		sql  []string
		key  int // the row whose stamp and origin are checked at us (0 = none)
	}
	// refused holds the rows whose write (an attempt's last statement) failed.
	refused := map[int]bool{}
	attempts := []attempt{
		{"MariaDB executable comment skips stamping", []string{"/*M! SET @_mlr_apply = 1 */", "INSERT INTO kv VALUES (1, 'm-comment', 1)"}, 1},
		{"MySQL versioned comment skips stamping", []string{"/*!50000 SET @_mlr_apply = 1 */", "INSERT INTO kv VALUES (2, 'v-comment', 1)"}, 2},
		{"session variables choose stamp and origin", []string{fmt.Sprintf("SET @_mlr_hlc = %d, @_mlr_origin = 2", far), "INSERT INTO kv VALUES (3, 'forged', 1)"}, 3},
		{"prepared from an expression skips stamping", []string{
			"SET @s = CONCAT('SET @_mlr', '_apply = 1, @_mlr', '_origin = 2')", "PREPARE p FROM @s", "EXECUTE p",
			"INSERT INTO kv VALUES (4, 'prepared', 1)"}, 4},
		{"procedure skips stamping and forges the stamp", []string{
			fmt.Sprintf("CREATE PROCEDURE sneak() BEGIN SET @_mlr_apply = 1; SET @_mlr_hlc = %d; SET @_mlr_origin = 2; INSERT INTO kv VALUES (5, 'procedure', 1); END", far),
			"CALL sneak()"}, 5},
		{"direct write of the stamp", []string{"INSERT INTO kv VALUES (6, 'plain', 1)", fmt.Sprintf("UPDATE kv SET _mlr_hlc = %d WHERE k = 6", far)}, 6},
		{"stamp and origin written by a prepared expression", []string{
			"INSERT INTO kv VALUES (7, 'plain', 1)",
			fmt.Sprintf("SET @s = CONCAT('UPDATE kv SET v = ''hacked'', _mlr', '_hlc = %d, _mlr', '_origin = 2, _mlr', '_vv = ''{}'' WHERE k = 7')", far),
			"PREPARE p FROM @s", "EXECUTE p"}, 7},
		{"stamp written inside a procedure", []string{
			"INSERT INTO kv VALUES (8, 'plain', 1)",
			fmt.Sprintf("CREATE PROCEDURE restamp() UPDATE kv SET v = 'restamped', _mlr_hlc = %d, _mlr_origin = 2 WHERE k = 8", far),
			"CALL restamp()"}, 8},
		{"trigger dropped by a prepared expression", []string{"SET @s = CONCAT('DROP TRIGGER app._mlr', '_bi_kv')", "PREPARE p FROM @s", "EXECUTE p"}, 0},
		{"trigger dropped inside a procedure", []string{"CREATE PROCEDURE untrigger() DROP TRIGGER app._mlr_bu_kv", "CALL untrigger()"}, 0},
		{"binlog switched off by a prepared expression", []string{"SET @s = CONCAT('SET sql_', 'log_bin = 0')", "PREPARE p FROM @s", "EXECUTE p",
			"INSERT INTO kv VALUES (9, 'unlogged?', 1)"}, 9},
		{"the mlr schema written", []string{"UPDATE mlr.checkpoints SET gtid = ''"}, 0},
		{"the session's clock moved ahead for the triggers' bound and bypass stamp", []string{
			fmt.Sprintf("SET timestamp = UNIX_TIMESTAMP() + 2*86400; SET @s = CONCAT('SET @_mlr', '_hlc = NULL'); PREPARE n FROM @s; EXECUTE n; INSERT INTO kv VALUES (10, 'timestamp', 1)"),
		}, 10},
		{"the session's clock moved ahead with a forged stamp, in a procedure", []string{
			fmt.Sprintf("CREATE PROCEDURE later() BEGIN SET timestamp = UNIX_TIMESTAMP() + 2*86400; SET @_mlr_hlc = %d; INSERT INTO kv VALUES (11, 'later', 1); SET timestamp = DEFAULT; END", far),
			"CALL later()"}, 11},
		{"DDL in executable comments the parser cannot read", []string{"/*! TRUNCATE TABLE kv NOWAIT */"}, 0},
		{"DDL in a MariaDB executable comment, prepared", []string{"PREPARE d FROM '/*M! DROP TABLE kv WAIT 1 */'", "EXECUTE d"}, 0},
		{"a RENAME swap to write past the triggers, in one packet", []string{
			"SET @a = 'CREATE TABLE kv_x LIKE kv'; PREPARE a FROM @a; " +
				"SET @b = 'RENAME TABLE kv TO kv_o, kv_x TO kv'; PREPARE b FROM @b; " +
				fmt.Sprintf("SET @c = CONCAT('INSERT INTO kv (k, v, n, _mlr', '_hlc, _mlr', '_origin, _mlr', '_vv) VALUES (12, ''swapped'', 1, %d, 2, ''{\\\"2\\\":%d}'')'); PREPARE c FROM @c; ", far, far) +
				"SET @d = 'RENAME TABLE kv TO kv_x, kv_o TO kv'; PREPARE d FROM @d; " +
				"EXECUTE a; EXECUTE b; EXECUTE c; EXECUTE d",
			"INSERT INTO kv VALUES (12, 'after the swap', 1) ON DUPLICATE KEY UPDATE v = 'after the swap'"}, 12},
	}
	for _, a := range attempts {
		var errs []string
		for i, q := range a.sql {
			if _, err := app.ExecContext(ctx, q); err != nil {
				errs = append(errs, fmt.Sprintf("%s: %v", q, err))
				if i == len(a.sql)-1 && a.key != 0 {
					refused[a.key] = true // the write itself failed: no row anywhere
				}
			}
		}
		t.Logf("%s: %d of %d statements refused: %s", a.name, len(errs), len(a.sql), strings.Join(errs, "; "))
		// Whatever was or was not refused, the session goes on clean.
		_, _ = app.ExecContext(ctx, "SET @_mlr_apply = NULL, @_mlr_hlc = NULL, @_mlr_origin = NULL, timestamp = DEFAULT")
		var one int
		if err := bystander.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("after %q the proxy stopped serving another client: %v", a.name, err)
		}
	}

	lit := strings.Repeat("1234567890", 9)
	var got, direct string
	if err := app.QueryRowContext(ctx, "SELECT "+lit).Scan(&got); err != nil {
		t.Errorf("SELECT a 90-digit literal through the proxy: %v", err)
	}
	if err := openDirect(t, eu).QueryRowContext(ctx, "SELECT "+lit).Scan(&direct); err != nil || got != direct {
		t.Errorf("SELECT a 90-digit literal: %q through the proxy, %q direct (%v)", got, direct, err)
	}

	wctx, wcancel := context.WithTimeout(ctx, 45*time.Second)
	defer wcancel()
	if err := c.WaitApplied(wctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitConverged(wctx, map[string]string{"app.kv": "k"}, "k, v, n, _mlr_hlc, _mlr_origin, _mlr_vv"); err != nil {
		t.Fatal(err)
	}
	limit := uint64(time.Now().Add(2*time.Second).UnixMilli()) << 16
	floor := uint64(start.Add(-2*time.Second).UnixMilli()) << 16
	for _, a := range attempts {
		if a.key == 0 {
			continue
		}
		var stamp uint64
		var origin int
		err := openDirect(t, us).QueryRowContext(ctx, "SELECT _mlr_hlc, _mlr_origin FROM kv WHERE k = ?", a.key).Scan(&stamp, &origin)
		switch {
		case refused[a.key] && err == sql.ErrNoRows:
		case err == sql.ErrNoRows:
			t.Errorf("%s: row %d did not reach us (the write skipped replication)", a.name, a.key)
		case err != nil:
			t.Fatal(err)
		case origin != int(eu.ID):
			t.Errorf("%s: row %d reached us with origin %d; want eu (%d)", a.name, a.key, origin, eu.ID)
		case stamp > limit || stamp < floor:
			t.Errorf("%s: row %d reached us stamped %d (%s); want a stamp from eu's clock during the test", a.name, a.key, stamp, time.UnixMilli(int64(stamp>>16)))
		}
	}

	// The triggers are all still there, in every region.
	for _, r := range c.Regions {
		var n int
		if err := openDirect(t, r).QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA = 'app' AND EVENT_OBJECT_TABLE = 'kv' AND TRIGGER_NAME LIKE '\\_mlr\\_%'").Scan(&n); err != nil || n != 3 {
			t.Errorf("region %s: %d stamping triggers on app.kv (%v); want 3", r.Name, n, err)
		}
	}

	// Damage the proxy cannot see, by an account holding what the README
	// says an application account must not (DDL rights; schema check
	// warns about it), in a statement prepared from an expression: it is
	// found within seconds, the table's writes are refused with a reason,
	// and `schema apply` repairs.
	ddl := session("ddl", "ddl-pw")
	for _, q := range []string{"SET @s = CONCAT('ALTER TABLE kv DROP COLUMN _mlr', '_hlc')", "PREPARE p FROM @s", "EXECUTE p"} {
		if _, err := ddl.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	// The stamping trigger itself fails at once (it names the missing
	// column); the guard's refusal, which says what to do, follows.
	const guardSays = "replication metadata was changed outside the proxy (missing column _mlr_hlc)"
	var refusal error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		_, refusal = app.ExecContext(ctx, "INSERT INTO kv VALUES (20, 'after damage', 1)")
		if refusal == nil {
			t.Fatal("a write to app.kv succeeded after its _mlr_hlc column was dropped")
		}
		if strings.Contains(refusal.Error(), guardSays) {
			break
		}
	}
	if !strings.Contains(refusal.Error(), guardSays) {
		t.Fatalf("writes to app.kv after its _mlr_hlc column was dropped: %v; want the proxy's refusal %q", refusal, guardSays)
	}
	t.Logf("after the damage: %v", refusal)
	if out, err := c.Command(ctx, "schema", "apply", "-c", eu.ConfigPath); err != nil {
		t.Fatalf("schema apply on eu: %v\n%s", err, out)
	}
	var werr error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(250 * time.Millisecond) {
		if _, werr = app.ExecContext(ctx, "INSERT INTO kv VALUES (21, 'repaired', 1)"); werr == nil {
			break
		}
	}
	if werr != nil {
		t.Fatalf("writes to app.kv after schema apply repaired it: %v", werr)
	}
	wctx2, wcancel2 := context.WithTimeout(ctx, 45*time.Second)
	defer wcancel2()
	if err := c.WaitConverged(wctx2, map[string]string{"app.kv": "k"}, "k, v, n, _mlr_origin"); err != nil {
		t.Fatal(err)
	}

	// TRUNCATE the proxy cannot see (prepared from an expression, by the
	// account with DROP): no row events, so nothing of it replicates; the
	// region's own binlog shows it, and it is reported as an error.
	for _, q := range []string{"SET @s = CONCAT('TRUNCATE TABLE ', 'events')", "PREPARE p FROM @s", "EXECUTE p"} {
		if _, err := ddl.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	const truncSays = "rows of a replicated schema were removed without row events"
	found := false
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline) && !found; time.Sleep(200 * time.Millisecond) {
		found = strings.Contains(mustRead(t, eu.LogPath), truncSays)
	}
	if !found {
		t.Errorf("eu did not report the TRUNCATE it could not see (%q):\n%s", truncSays, cluster.Tail(eu.LogPath, 10))
	}

	// A duplicate key in a secondary unique index: each region's applier
	// fails on the other's row, and says so, without the row's values.
	const secret = "alice.secret@example.com"
	if err := c.StopProxy(us, false); err != nil { // both inserts before either arrives
		t.Fatal(err)
	}
	if _, err := openProxy(t, eu, 1).ExecContext(ctx, "INSERT INTO users VALUES (100, ?)", secret); err != nil {
		t.Fatal(err)
	}
	if _, err := openDirect(t, us).ExecContext(ctx, "INSERT INTO users VALUES (200, ?)", secret); err != nil {
		t.Fatal(err)
	}
	if err := c.StartProxy(us); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitProxy(ctx, us); err != nil {
		t.Fatal(err)
	}
	var status string
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		status = httpGet(t, "http://"+us.Metrics+"/status")
		if strings.Contains(status, "1062") {
			break
		}
	}
	if !strings.Contains(status, "1062") {
		t.Errorf("us's /status does not report the duplicate key (1062):\n%s", status)
	}
	for _, r := range c.Regions {
		if log := mustRead(t, r.LogPath); strings.Contains(log, secret) || strings.Contains(log, "alice") {
			t.Errorf("region %s's log carries the row's value", r.Name)
		}
		if st := httpGet(t, "http://"+r.Metrics+"/status"); strings.Contains(st, "alice") {
			t.Errorf("region %s's /status carries the row's value:\n%s", r.Name, st)
		}
		if m := httpGet(t, "http://"+r.Metrics+"/metrics"); strings.Contains(m, "alice") {
			t.Errorf("region %s's /metrics carries the row's value", r.Name)
		}
	}

	for _, r := range c.Regions {
		var n int
		if err := openDirect(t, r).QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA = 'app' AND EVENT_OBJECT_TABLE = 'kv' AND TRIGGER_NAME LIKE '\\_mlr\\_%'").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != 3 {
			t.Errorf("region %s: %d of app.kv's 3 stamping triggers left", r.Name, n)
		}
		var cols int
		if err := openDirect(t, r).QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'app' AND TABLE_NAME = 'kv' AND COLUMN_NAME = '_mlr_hlc'").Scan(&cols); err != nil {
			t.Fatal(err)
		}
		if cols != 1 {
			t.Errorf("region %s: app.kv lost its _mlr_hlc column", r.Name)
		}
	}
}
