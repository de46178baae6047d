package proxy

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestHugeLiteralPassesThrough: a 90-digit literal used to panic the SQL
// parser and take the whole process down; it now classifies and reaches
// the server unchanged (the answer is the server's, as direct).
func TestHugeLiteralPassesThrough(t *testing.T) {
	p := startProxy(t, nil)
	db := p.open(t, "app")
	lit := strings.Repeat("1234567890", 9)
	var got string
	if err := db.QueryRow("SELECT " + lit).Scan(&got); err != nil {
		t.Fatalf("SELECT a 90-digit literal: %v", err)
	}
	var direct string
	if err := directDB(t, "app").QueryRow("SELECT " + lit).Scan(&direct); err != nil {
		t.Fatal(err)
	}
	if got != direct {
		t.Fatalf("through the proxy %s, direct %s", got, direct)
	}
	if n := testutil.ToFloat64(p.m.panics.WithLabelValues("parser")); n < 1 {
		t.Errorf("parser panics counted: %v, want at least 1", n)
	}
	// Prepared, too.
	if err := db.QueryRow("SELECT ? + "+lit, 1).Scan(&got); err != nil {
		t.Fatalf("prepared with a 90-digit literal: %v", err)
	}
}

// TestPanicEndsOnlyItsConnection: a panic while handling one client's
// command gives that client an error and closes its connection; the
// proxy keeps serving every other connection.
func TestPanicEndsOnlyItsConnection(t *testing.T) {
	p := startProxy(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	victim := p.open(t, "app")
	victim.SetMaxIdleConns(0)
	other := p.open(t, "app")
	oc, err := other.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer oc.Close()
	var one int
	if err := oc.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}

	p.st.mu.Lock()
	p.st.panicNext = true // the stamp for the next write panics
	p.st.mu.Unlock()
	vc, err := victim.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = vc.ExecContext(ctx, "INSERT INTO rt (v) VALUES ('boom')")
	vc.Close()
	if err == nil {
		t.Fatal("the write whose handler panicked succeeded")
	}
	if n := testutil.ToFloat64(p.m.panics.WithLabelValues("connection")); n != 1 {
		t.Errorf("connection panics counted: %v, want 1", n)
	}
	// The other connection, opened before, and new ones still work.
	if err := oc.QueryRowContext(ctx, "SELECT 2").Scan(&one); err != nil || one != 2 {
		t.Fatalf("other connection after the panic: %v", err)
	}
	if _, err := victim.ExecContext(ctx, "INSERT INTO rt (v) VALUES ('after')"); err != nil {
		t.Fatalf("a new connection after the panic: %v", err)
	}
	if _, o := stampOfV(t, "rt", "after"); o != testRegion {
		t.Fatal("write after the panic not stamped")
	}
}

// guardTables blocks app.rt (as if its triggers had been dropped).
type guardTables struct{ tableSet }

func (guardTables) Blocked(schema, table string) string {
	if schema+"."+table == "app.rt" {
		return "writes to app.rt are refused: test damage"
	}
	return ""
}
func (guardTables) AnyBlocked() string {
	return "writes the proxy cannot name are refused: test damage"
}

// TestGuardRefusesDamagedTables: while the Guard blocks a table, writes to
// it (text and prepared) and writes the proxy cannot name are refused with
// the Guard's reason; reads and other tables go on.
func TestGuardRefusesDamagedTables(t *testing.T) {
	p := startProxy(t, nil)
	g, err := New(p.cfg, p.st, guardTables{replicated}, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	p.Server = g
	if err := g.Listen(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- g.Run(ctx) }()
	defer func() { cancel(); <-done }()
	db := p.open(t, "app")
	for _, q := range []string{"INSERT INTO rt (v) VALUES ('x')", "UPDATE app.rt SET v = 'y'", "CALL nothing()"} {
		_, err := db.Exec(q)
		if err == nil || !strings.Contains(err.Error(), "mlproxy: writes") {
			t.Errorf("%s: err %v, want the guard's refusal", q, err)
		}
	}
	if _, err := db.Exec("INSERT INTO rt (v) VALUES (?)", "prepared"); err == nil || !strings.Contains(err.Error(), "test damage") {
		t.Errorf("prepared write: err %v, want the guard's refusal", err)
	}
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM rt").Scan(&n); err != nil {
		t.Errorf("read of a blocked table: %v", err)
	}
	if _, err := db.Exec("INSERT INTO plain (v) VALUES ('ok')"); err != nil && strings.Contains(err.Error(), "mlproxy:") {
		t.Errorf("write to another table refused: %v", err)
	}
}

// TestReplicatedDDLRefused: DDL on a replicated table through the proxy is
// refused with an error that says how to run it; on other tables, and
// with AllowDDL, it passes.
func TestReplicatedDDLRefused(t *testing.T) {
	db := startProxy(t, nil).open(t, "app")
	_, err := db.Exec("ALTER TABLE rt ADD COLUMN extra INT NULL")
	if err == nil || !strings.Contains(err.Error(), "ALTER TABLE on replicated table app.rt is refused through the proxy") ||
		!strings.Contains(err.Error(), "mlproxy schema ddl") || strings.Contains(err.Error(), "mlproxy: mlproxy:") {
		t.Fatalf("ALTER TABLE on a replicated table: %v", err)
	}
	for _, q := range []string{"CREATE TABLE app.scratch_ddl (id INT PRIMARY KEY)", "DROP TABLE app.scratch_ddl"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatalf("%s on a table that is not replicated: %v", q, err)
		}
	}
	allow := startProxy(t, func(c *Config) { c.AllowDDL = true }).open(t, "app")
	if _, err := allow.Exec("ALTER TABLE rt COMMENT 'allowed'"); err != nil {
		t.Fatalf("ALTER TABLE with AllowDDL: %v", err)
	}
}

// TestReplicatedDDLBypassesRefused: the review's ways around the DDL
// refusal, each refused.
func TestReplicatedDDLBypassesRefused(t *testing.T) {
	p := startProxy(t, nil)
	db := p.open(t, "app")
	for _, q := range []string{
		"PREPARE s FROM 'DROP TABLE rt'",
		"PREPARE s FROM 'ALTER TABLE app.rt ADD COLUMN x INT'",
		"EXECUTE IMMEDIATE 'DROP TABLE rt'",
		"DROP DATABASE app",
		"CREATE OR REPLACE TABLE rt (id INT PRIMARY KEY)",
		"ALTER TABLE IF EXISTS rt ADD COLUMN x INT",
		"ALTER ONLINE TABLE rt ADD COLUMN x INT",
		"ALTER TABLE rt_twin RENAME TO app.rt",
		"CREATE TRIGGER sneaky BEFORE INSERT ON rt FOR EACH ROW SET NEW.v = 'x'",
		// Executable comments are code to the server, with MariaDB-only
		// clauses the parser cannot read.
		"/*! TRUNCATE TABLE rt NOWAIT */",
		"/*M! DROP TABLE rt WAIT 1 */",
		"/* plain */ /*!50000 ALTER TABLE rt NOWAIT ADD COLUMN z INT */",
		"/*! CREATE OR REPLACE TABLE rt (id INT PRIMARY KEY) */",
		"/*M!100000 RENAME TABLE rt TO rt_old */",
		"PREPARE s FROM '/*! TRUNCATE TABLE rt NOWAIT */'",
		"PREPARE s FROM '/*M! DROP TABLE rt */'",
		"EXECUTE IMMEDIATE '/*M! DROP TABLE rt WAIT 1 */'",
		"/*!*/ TRUNCATE TABLE rt NOWAIT",
		"/*!999999 x */ TRUNCATE TABLE rt NOWAIT",
		"PREPARE s FROM '/*!*/ TRUNCATE TABLE rt NOWAIT'",
		"ALTER TABLE rt_twin ADD COLUMN y INT; PREPARE s FROM '/*! TRUNCATE TABLE rt NOWAIT */'",
	} {
		_, err := db.Exec(q)
		if err == nil || !strings.Contains(err.Error(), "refused") || !strings.Contains(err.Error(), "mlproxy schema ddl") {
			t.Errorf("%s: %v; want the DDL refusal", q, err)
		}
	}
	// Temporary tables are the session's own.
	if _, err := db.Exec("CREATE TEMPORARY TABLE rt (id INT)"); err != nil {
		t.Errorf("CREATE TEMPORARY TABLE shadowing a replicated name: %v", err)
	}
	if _, err := db.Exec("DROP TEMPORARY TABLE rt"); err != nil {
		t.Errorf("DROP TEMPORARY TABLE: %v", err)
	}
}
