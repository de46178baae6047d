package proxy

import (
	"bytes"
	"context"
	"crypto/sha256"
	"database/sql"
	"errors"
	"fmt"
	"io"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
)

func TestTextAndPreparedRoundTrip(t *testing.T) {
	p := startProxy(t, nil)
	db := p.open(t, "app")
	mustExec(t, db, "DELETE FROM plain")
	// Text protocol (no args), then prepared (args).
	mustExec(t, db, "INSERT INTO plain (v, n) VALUES ('text', 1), ('null', NULL)")
	mustExec(t, db, "INSERT INTO plain (v, n, b) VALUES (?, ?, ?)", "prep", nil, []byte{0, 1, 2, 0xff})
	rows, err := db.Query("SELECT v, n, b FROM plain WHERE v IN (?, ?, ?) ORDER BY v", "null", "prep", "text")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	var got []string
	for rows.Next() {
		var v string
		var n sql.NullInt64
		var b []byte
		if err := rows.Scan(&v, &n, &b); err != nil {
			t.Fatal(err)
		}
		got = append(got, fmt.Sprintf("%s:%v:%d:%x", v, n.Valid, n.Int64, b))
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	want := []string{"null:false:0:", "prep:false:0:000102ff", "text:true:1:"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("rows = %v, want %v", got, want)
	}
	// Text protocol SELECT with a NULL column.
	var n sql.NullInt64
	if err := db.QueryRow("SELECT n FROM plain WHERE v = 'null'").Scan(&n); err != nil || n.Valid {
		t.Fatalf("text NULL: %v %v", n, err)
	}
}

// TestStampEveryWriteKind runs each kind of write to a replicated table
// through the proxy and reads the row's stamp straight from the server:
// origin is the region, and every stamp is fresh (greater than the last).
func TestStampEveryWriteKind(t *testing.T) {
	p := startProxy(t, nil)
	db := p.open(t, "app")
	db.SetMaxOpenConns(1)
	mustExec(t, direct, "DELETE FROM app.rt")
	mustExec(t, direct, "DELETE FROM app.rt2")
	mustExec(t, direct, "DELETE FROM mlr.tomb_rt")
	mustExec(t, direct, "INSERT INTO app.plain (v) VALUES (NULL)") // joined by the multi-table writes

	var last uint64
	check := func(name, table string, id int64) {
		t.Helper()
		h, o := stampOf(t, table, id)
		if o != testRegion {
			t.Fatalf("%s: origin %d, want %d (stamp %d)", name, o, testRegion, h)
		}
		if h <= last {
			t.Fatalf("%s: stamp %d not after previous %d", name, h, last)
		}
		last = h
	}
	id := func(v string) int64 {
		t.Helper()
		var id int64
		if err := direct.QueryRow("SELECT id FROM app.rt WHERE v = ?", v).Scan(&id); err != nil {
			t.Fatalf("id of %q: %v", v, err)
		}
		return id
	}

	mustExec(t, db, "INSERT INTO rt (v) VALUES ('a')")
	check("insert", "rt", id("a"))
	mustExec(t, db, "INSERT INTO rt (v) VALUES ('b'), ('c')")
	check("multi-row insert", "rt", id("c"))
	mustExec(t, db, "INSERT INTO app.rt (v, n) VALUES (?, ?)", "d", 1)
	check("prepared insert", "rt", id("d"))
	mustExec(t, db, "INSERT INTO rt2 (v) SELECT CONCAT(v, '2') FROM rt WHERE v = 'a'")
	var id2 int64
	if err := direct.QueryRow("SELECT id FROM app.rt2 WHERE v = 'a2'").Scan(&id2); err != nil {
		t.Fatal(err)
	}
	check("insert select", "rt2", id2)
	mustExec(t, db, "INSERT INTO rt (v, n) VALUES ('a', 5) ON DUPLICATE KEY UPDATE n = VALUES(n)")
	check("on duplicate key update", "rt", id("a"))
	mustExec(t, db, "REPLACE INTO rt (id, v, n) VALUES (?, 'b', 9)", id("b"))
	check("replace", "rt", id("b"))
	mustExec(t, db, "UPDATE rt SET n = 10 WHERE v = 'c'")
	check("update", "rt", id("c"))
	mustExec(t, db, "UPDATE rt SET n = ? WHERE v = ?", 11, "c")
	check("prepared update", "rt", id("c"))
	mustExec(t, db, "UPDATE plain p JOIN rt r ON r.v = 'd' SET r.n = 12")
	check("multi-table update", "rt", id("d"))
	mustExec(t, db, "CALL p_ins('e')")
	check("call", "rt", id("e"))
	// MariaDB-only syntax the parser cannot read: stamped, not refused.
	var rid int64
	if err := db.QueryRow("INSERT INTO rt (v) VALUES ('f') RETURNING id").Scan(&rid); err != nil {
		t.Fatal(err)
	}
	check("insert returning", "rt", rid)

	// LOAD DATA LOCAL INFILE relays the file from the client.
	mysql.RegisterReaderHandler("rows", func() io.Reader { return strings.NewReader("g\t20\nh\t21\n") })
	defer mysql.DeregisterReaderHandler("rows")
	ldb, err := sql.Open("mysql", p.dsn("root", "", "app", func(c *mysql.Config) { c.AllowAllFiles = true }))
	if err != nil {
		t.Fatal(err)
	}
	defer ldb.Close()
	res := mustExec(t, ldb, "LOAD DATA LOCAL INFILE 'Reader::rows' INTO TABLE rt (v, n)")
	if n, _ := res.RowsAffected(); n != 2 {
		t.Fatalf("load data affected %d rows, want 2", n)
	}
	check("load data", "rt", id("h"))

	// Deletes: the tombstone carries the stamp.
	del := id("a")
	mustExec(t, db, "DELETE FROM rt WHERE v = 'a'")
	var th uint64
	var to int
	if err := direct.QueryRow("SELECT _mlr_hlc, _mlr_origin FROM mlr.tomb_rt WHERE id = ?", del).Scan(&th, &to); err != nil {
		t.Fatal(err)
	}
	if to != testRegion || th <= last {
		t.Fatalf("delete tombstone stamp %d origin %d, want > %d origin %d", th, to, last, testRegion)
	}
	last = th
	del = id("b")
	mustExec(t, db, "DELETE r FROM rt r JOIN plain p ON 1=1 WHERE r.v = 'b'")
	if err := direct.QueryRow("SELECT _mlr_hlc, _mlr_origin FROM mlr.tomb_rt WHERE id = ?", del).Scan(&th, &to); err != nil {
		t.Fatal(err)
	}
	if to != testRegion || th <= last {
		t.Fatalf("multi-table delete tombstone stamp %d origin %d, want > %d", th, to, last)
	}
}

// TestReadsAndOtherTablesNotStamped checks that reads, session statements
// and writes to non-replicated tables get no SET.
func TestReadsAndOtherTablesNotStamped(t *testing.T) {
	p := startProxy(t, nil)
	db := p.open(t, "app")
	db.SetMaxOpenConns(1)
	for _, q := range []string{
		"SELECT * FROM rt", "SELECT 1", "SHOW TABLES", "EXPLAIN SELECT * FROM rt",
		"SET @x = 1", "BEGIN", "COMMIT", "SELECT * FROM rt FOR UPDATE",
		"INSERT INTO plain (v) VALUES ('not stamped')", "UPDATE plain SET n = 3 WHERE v = 'not stamped'",
	} {
		mustExec(t, db, q)
	}
	var id int64
	if err := db.QueryRow("SELECT id FROM plain WHERE v = ?", "not stamped").Scan(&id); err != nil {
		t.Fatal(err)
	}
	if n := p.st.count(); n != 0 {
		t.Fatalf("%d stamps taken for reads, session statements and non-replicated writes", n)
	}
	if h, _ := stampOf(t, "plain", id); h != 1 {
		t.Fatalf("non-replicated row stamp = %d, want the trigger's bypass value 1", h)
	}
	mustExec(t, db, "INSERT INTO rt (v) VALUES ('stamped once')")
	if n := p.st.count(); n != 1 {
		t.Fatalf("%d stamps after one replicated write, want 1", n)
	}
}

// TestAffectedRowsMatchDirect runs the same operations on app.rt through
// the proxy and on its twin directly and compares what the driver reports.
func TestAffectedRowsMatchDirect(t *testing.T) {
	p := startProxy(t, nil)
	viaProxy := p.open(t, "app")
	viaDirect := directDB(t, "app")
	ctx := context.Background()
	pc, err := viaProxy.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	dc, err := viaDirect.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer dc.Close()
	for _, c := range []*sql.Conn{pc, dc} {
		if _, err := c.ExecContext(ctx, "SET @twin = 1"); err != nil {
			t.Fatal(err)
		}
	}
	mustExec(t, direct, "TRUNCATE app.rt_twin")
	mustExec(t, direct, "DELETE FROM app.rt2")
	mustExec(t, direct, "ALTER TABLE app.rt2 AUTO_INCREMENT = 1")
	ops := []struct {
		q    string
		args []any
	}{
		{"INSERT INTO %s (v, n) VALUES ('x', 1)", nil},
		{"INSERT INTO %s (v, n) VALUES ('y', 1), ('z', 2)", nil},
		{"INSERT INTO %s (v, n) VALUES (?, ?)", []any{"w", 3}},
		{"INSERT INTO %s (v, n) VALUES ('x', 5) ON DUPLICATE KEY UPDATE n = VALUES(n)", nil},
		{"INSERT INTO %s (v, n) VALUES ('x', 5) ON DUPLICATE KEY UPDATE n = VALUES(n)", nil},
		{"INSERT IGNORE INTO %s (v, n) VALUES ('x', 6)", nil},
		{"REPLACE INTO %s (v, n) VALUES ('y', 7)", nil},
		{"UPDATE %s SET n = n + 1 WHERE n < 5", nil},
		{"UPDATE %s SET n = n WHERE v = 'x'", nil},
		{"UPDATE %s SET n = ? WHERE v = ?", []any{42, "z"}},
		{"DELETE FROM %s WHERE v = 'w'", nil},
		{"DELETE FROM %s WHERE v = ?", []any{"nothing"}},
	}
	for _, op := range ops {
		rp, err := pc.ExecContext(ctx, fmt.Sprintf(op.q, "rt2"), op.args...)
		if err != nil {
			t.Fatalf("proxy %s: %v", op.q, err)
		}
		rd, err := dc.ExecContext(ctx, fmt.Sprintf(op.q, "rt_twin"), op.args...)
		if err != nil {
			t.Fatalf("direct %s: %v", op.q, err)
		}
		ap, _ := rp.RowsAffected()
		ad, _ := rd.RowsAffected()
		lp, _ := rp.LastInsertId()
		ld, _ := rd.LastInsertId()
		if ap != ad || lp != ld {
			t.Errorf("%s: proxy affected=%d last_id=%d, direct affected=%d last_id=%d", op.q, ap, lp, ad, ld)
		}
	}
	// Warnings and LAST_INSERT_ID() on the session match too.
	var wp, wd int64
	if err := pc.QueryRowContext(ctx, "SELECT LAST_INSERT_ID()").Scan(&wp); err != nil {
		t.Fatal(err)
	}
	if err := dc.QueryRowContext(ctx, "SELECT LAST_INSERT_ID()").Scan(&wd); err != nil {
		t.Fatal(err)
	}
	if wp != wd {
		t.Fatalf("LAST_INSERT_ID() proxy %d, direct %d", wp, wd)
	}
}

func TestTransactions(t *testing.T) {
	p := startProxy(t, nil)
	db := p.open(t, "app")
	mustExec(t, direct, "DELETE FROM app.rt WHERE v LIKE 'tx%'")
	tx, err := db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, tx, "INSERT INTO rt (v) VALUES (?)", "tx-rollback")
	if err := tx.Rollback(); err != nil {
		t.Fatal(err)
	}
	tx, err = db.Begin()
	if err != nil {
		t.Fatal(err)
	}
	mustExec(t, tx, "INSERT INTO rt (v) VALUES (?)", "tx-commit")
	mustExec(t, tx, "UPDATE rt SET n = 1 WHERE v = 'tx-commit'")
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := direct.QueryRow("SELECT COUNT(*) FROM app.rt WHERE v LIKE 'tx%'").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("%d rows after rollback + commit, want 1", n)
	}
	var o int
	if err := direct.QueryRow("SELECT _mlr_origin FROM app.rt WHERE v = 'tx-commit'").Scan(&o); err != nil || o != testRegion {
		t.Fatalf("committed row origin %d (%v)", o, err)
	}
}

func TestMultiStatementsAndResults(t *testing.T) {
	p := startProxy(t, nil)
	db := p.open(t, "")
	ctx := context.Background()
	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	// USE inside a multi-statement switches the database for the rest of
	// the packet and for the connection.
	if _, err := c.ExecContext(ctx, "USE app; INSERT INTO rt (v) VALUES ('multi1'); INSERT INTO plain (v) VALUES ('multi1')"); err != nil {
		t.Fatal(err)
	}
	h, o := stampOfV(t, "rt", "multi1")
	if o != testRegion || h <= 1 {
		t.Fatalf("multi-statement write after USE not stamped: %d/%d", h, o)
	}
	if _, err := c.ExecContext(ctx, "INSERT INTO rt (v) VALUES ('multi2')"); err != nil {
		t.Fatal(err)
	}
	if _, o := stampOfV(t, "rt", "multi2"); o != testRegion {
		t.Fatalf("write after USE in multi-statement not stamped (db not tracked)")
	}
	rows, err := c.QueryContext(ctx, "SELECT 1; SELECT 'a', 'b' UNION ALL SELECT 'c', NULL; DO 1; SELECT 3")
	if err != nil {
		t.Fatal(err)
	}
	var sets [][]string
	for {
		cols, _ := rows.Columns()
		var set []string
		for rows.Next() {
			vals := make([]sql.NullString, len(cols))
			ptrs := make([]any, len(cols))
			for i := range vals {
				ptrs[i] = &vals[i]
			}
			if err := rows.Scan(ptrs...); err != nil {
				t.Fatal(err)
			}
			for _, v := range vals {
				set = append(set, fmt.Sprintf("%v:%s", v.Valid, v.String))
			}
		}
		sets = append(sets, set)
		if !rows.NextResultSet() {
			break
		}
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	rows.Close()
	got := fmt.Sprint(sets)
	want := "[[true:1] [true:a true:b true:c false:] [true:3]]"
	if got != want {
		t.Fatalf("result sets %s, want %s", got, want)
	}
	// An error in the middle of a multi-statement ends it; the connection
	// stays usable.
	_, err = c.ExecContext(ctx, "SELECT 1; SELECT * FROM no_such_table; SELECT 2")
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1146 {
		t.Fatalf("error in multi-statement: %v", err)
	}
	var one int
	if err := c.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}
}

func stampOfV(tb testing.TB, table, v string) (uint64, int) {
	tb.Helper()
	var id int64
	if err := direct.QueryRow(fmt.Sprintf("SELECT id FROM app.%s WHERE v = ?", table), v).Scan(&id); err != nil {
		tb.Fatalf("row %q: %v", v, err)
	}
	return stampOf(tb, table, id)
}

// TestLargeBlob moves a value over 16 MiB (split packets) both ways, with
// prepared statements and with the text protocol.
func TestLargeBlob(t *testing.T) {
	p := startProxy(t, nil)
	db := p.open(t, "app")
	big := bytes.Repeat([]byte("0123456789abcdefghij"), 20<<20/20+7) // > 20 MiB
	sum := sha256.Sum256(big)
	mustExec(t, direct, "DELETE FROM app.rt WHERE v LIKE 'big%'")
	mustExec(t, db, "INSERT INTO rt (v, b) VALUES (?, ?)", "big-prepared", big)
	mustExec(t, db, "INSERT INTO rt (v, b) VALUES ('big-text', '"+string(big)+"')")
	for _, v := range []string{"big-prepared", "big-text"} {
		var got []byte
		if err := db.QueryRow("SELECT b FROM rt WHERE v = ?", v).Scan(&got); err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(got) != sum {
			t.Fatalf("%s: read %d bytes back, want %d identical", v, len(got), len(big))
		}
		var text []byte
		if err := db.QueryRow("SELECT b FROM rt WHERE v = '" + v + "'").Scan(&text); err != nil {
			t.Fatal(err)
		}
		if sha256.Sum256(text) != sum {
			t.Fatalf("%s (text protocol): read %d bytes back", v, len(text))
		}
		if _, o := stampOfV(t, "rt", v); o != testRegion {
			t.Fatalf("%s not stamped", v)
		}
	}
}

// TestLongData sends a parameter with COM_STMT_SEND_LONG_DATA (the driver
// does so for values above max_allowed_packet/(params+1)).
func TestLongData(t *testing.T) {
	p := startProxy(t, nil)
	db, err := sql.Open("mysql", p.dsn("root", "", "app", func(c *mysql.Config) { c.MaxAllowedPacket = 4 << 20 }))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	val := bytes.Repeat([]byte{0, 1, 2, 0xfe, 0xff}, 3<<20/5) // 3 MiB > 4 MiB/3
	v := fmt.Sprintf("long-data-%d", time.Now().UnixNano())
	mustExec(t, db, "INSERT INTO rt (v, b) VALUES (?, ?)", v, val)
	var got []byte
	if err := direct.QueryRow("SELECT b FROM app.rt WHERE v = ?", v).Scan(&got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, val) {
		t.Fatalf("long data: stored %d bytes, sent %d", len(got), len(val))
	}
	if _, o := stampOfV(t, "rt", v); o != testRegion {
		t.Fatal("insert with long data not stamped")
	}
}

func TestErrorsMatchDirect(t *testing.T) {
	p := startProxy(t, nil)
	db := p.open(t, "app")
	mustExec(t, direct, "INSERT IGNORE INTO app.rt (v) VALUES ('dup')")
	mustExec(t, direct, "INSERT IGNORE INTO app.rt_twin (v) VALUES ('dup')")
	_, perr := db.Exec("INSERT INTO rt (v) VALUES ('dup')")
	_, derr := directDB(t, "app").Exec("INSERT INTO rt (v) VALUES ('dup')")
	var pe, de *mysql.MySQLError
	if !errors.As(perr, &pe) || !errors.As(derr, &de) {
		t.Fatalf("want MySQL errors, got %v and %v", perr, derr)
	}
	if pe.Number != 1062 || *pe != *de {
		t.Fatalf("duplicate key via proxy %+v, direct %+v", pe, de)
	}
	_, perr = db.Exec("INSERT INTO rt (v) VALUES (?)", "dup")
	if !errors.As(perr, &pe) || pe.Number != 1062 || pe.Message != de.Message {
		t.Fatalf("prepared duplicate key via proxy: %v", perr)
	}
	_, perr = db.Exec("SELEC 1")
	if !errors.As(perr, &pe) || pe.Number != 1064 {
		t.Fatalf("syntax error via proxy: %v", perr)
	}
}

func TestAuthErrors(t *testing.T) {
	p := startProxy(t, nil)
	for _, tc := range []struct {
		user, pass, db string
		code           uint16
		state          string
	}{
		{"pw", "wrong", "", 1045, "28000"},
		{"nobody", "", "", 1045, "28000"},
		{"pw", "secret", "no_such_db", 1049, "42000"},
	} {
		d, err := sql.Open("mysql", p.dsn(tc.user, tc.pass, tc.db, nil))
		if err != nil {
			t.Fatal(err)
		}
		err = d.Ping()
		d.Close()
		var me *mysql.MySQLError
		if !errors.As(err, &me) || me.Number != tc.code || string(me.SQLState[:]) != tc.state {
			t.Fatalf("%s/%s: got %v, want %d (%s)", tc.user, tc.db, err, tc.code, tc.state)
		}
	}
	// Right password works, with and without a database.
	for _, db := range []string{"", "app"} {
		d, err := sql.Open("mysql", p.dsn("pw", "secret", db, nil))
		if err != nil {
			t.Fatal(err)
		}
		if err := d.Ping(); err != nil {
			t.Fatalf("pw@%q: %v", db, err)
		}
		d.Close()
	}
}

// TestRefused checks each refused statement gets the mlproxy error and
// leaves the connection usable.
func TestRefused(t *testing.T) {
	p := startProxy(t, nil)
	db := p.open(t, "app")
	ctx := context.Background()
	c, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	for _, q := range []string{
		"INSERT INTO mlr.checkpoints VALUES (1, 'x')",
		"UPDATE mlr.checkpoints SET gtid = ''",
		"DELETE FROM mlr.tomb_rt",
		"SET @_mlr_hlc = 5",
		"SET @_MLR_ORIGIN = NULL",
		"SET @x = 1, @_mlr_apply = 1",
		"SELECT @_mlr_hlc := 1",
		"SELECT 1 INTO @_mlr_hlc",
		"DROP TRIGGER _mlr_bi_rt",
		"DROP TRIGGER IF EXISTS app._mlr_bu_rt",
		"SET sql_log_bin = 0",
		"SET SESSION sql_log_bin = OFF",
		"SET @@session.sql_log_bin = 0",
		"SET STATEMENT sql_log_bin = 0 FOR INSERT INTO rt (v) VALUES ('x')",
		"ALTER TABLE rt DROP COLUMN _mlr_hlc",
		"DROP TABLE mlr.checkpoints",
		"INSERT INTO mlr.checkpoints VALUES (2, 'y') RETURNING peer_id",
		"SELECT 1; INSERT INTO mlr.checkpoints VALUES (3, 'z')",
	} {
		_, err := c.ExecContext(ctx, q)
		var me *mysql.MySQLError
		if !errors.As(err, &me) || me.Number != 1105 || string(me.SQLState[:]) != "HY000" ||
			!strings.HasPrefix(me.Message, "mlproxy: ") {
			t.Fatalf("%s: got %v, want ERROR 1105 (HY000) mlproxy: ...", q, err)
		}
		// Prepared too (where the server could prepare it).
		var one int
		if err := c.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("connection unusable after refusing %q: %v", q, err)
		}
	}
	_, err = c.ExecContext(ctx, "INSERT INTO mlr.checkpoints VALUES (?, ?)", 4, "p")
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1105 {
		t.Fatalf("prepared write to mlr: %v", err)
	}
	var n int
	if err := direct.QueryRow("SELECT COUNT(*) FROM mlr.checkpoints").Scan(&n); err != nil || n != 0 {
		t.Fatalf("mlr.checkpoints has %d rows (%v), want 0", n, err)
	}
	// Allowed: reading mlr, SET sql_log_bin = 1, reading the stamp.
	for _, q := range []string{"SELECT * FROM mlr.checkpoints", "SET sql_log_bin = 1", "SELECT @_mlr_hlc"} {
		if _, err := c.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
}

// TestOneStampPerTransaction: inside a transaction, the first write's
// stamp serves the writes after it (one SET, one clock reading); reads keep
// it; a statement the proxy cannot see into, an error, or the end of the
// transaction makes the next write take a fresh stamp. Autocommit writes
// are stamped one by one.
func TestOneStampPerTransaction(t *testing.T) {
	p := startProxy(t, nil)
	ctx := context.Background()
	c, err := p.open(t, "app").Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	exec := func(q string) {
		t.Helper()
		if _, err := c.ExecContext(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	stamps := func(what string, want int, stmts ...string) {
		t.Helper()
		before := p.st.count()
		for _, q := range stmts {
			if strings.HasPrefix(q, "!") { // expected to fail
				if _, err := c.ExecContext(ctx, q[1:]); err == nil {
					t.Fatalf("%s: no error", q[1:])
				}
				continue
			}
			exec(q)
		}
		if got := p.st.count() - before; got != want {
			t.Errorf("%s: %d stamps taken, want %d", what, got, want)
		}
	}
	exec("DELETE FROM rt")
	stamps("a transaction of four writes and a read", 1,
		"BEGIN", "INSERT INTO rt (v) VALUES ('a')", "UPDATE rt SET n = 1 WHERE v = 'a'",
		"SELECT COUNT(*) FROM rt", "INSERT INTO rt (v) VALUES ('b')", "DELETE FROM rt WHERE v = 'b'", "COMMIT")
	stamps("three autocommit writes", 3,
		"INSERT INTO rt (v) VALUES ('c')", "UPDATE rt SET n = 2 WHERE v = 'c'", "DELETE FROM rt WHERE v = 'c'")
	stamps("a write after an error in the transaction", 2,
		"BEGIN", "INSERT INTO rt (v) VALUES ('d')", "!INSERT INTO rt (v) VALUES ('d')", "INSERT INTO rt (v) VALUES ('e')", "COMMIT")
	stamps("a write after a statement the proxy cannot see into", 3,
		"BEGIN", "INSERT INTO rt (v) VALUES ('f')", "DO 1", "INSERT INTO rt (v) VALUES ('g')", "COMMIT")
	stamps("a packet that commits and writes in a new transaction", 2,
		"BEGIN", "INSERT INTO rt (v) VALUES ('m')", "COMMIT; BEGIN; INSERT INTO rt (v) VALUES ('n')", "COMMIT")
	stamps("a packet that switches to autocommit before a write", 2,
		"BEGIN", "INSERT INTO rt (v) VALUES ('o')", "SET autocommit = 1; INSERT INTO rt (v) VALUES ('p')")
	stamps("two transactions", 2,
		"BEGIN", "INSERT INTO rt (v) VALUES ('h')", "COMMIT", "BEGIN", "INSERT INTO rt (v) VALUES ('i')", "COMMIT")
	// The rows of one transaction carry its one stamp.
	exec("BEGIN")
	exec("INSERT INTO rt (v) VALUES ('j')")
	exec("INSERT INTO rt (v) VALUES ('k')")
	exec("COMMIT")
	var distinct int
	if err := c.QueryRowContext(ctx, "SELECT COUNT(DISTINCT _mlr_hlc) FROM rt WHERE v IN ('j', 'k')").Scan(&distinct); err != nil {
		t.Fatal(err)
	}
	if distinct != 1 {
		t.Errorf("the two rows of one transaction carry %d different stamps; want 1", distinct)
	}
}
