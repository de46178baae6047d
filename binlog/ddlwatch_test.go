package binlog

import (
	"context"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/mlproxy/mlproxy/config"
)

// TestWatchDDL: the own-binlog watch reports DDL from the server's binlog,
// row events around it ignored, including a long statement that MariaDB
// logs as a compressed query event (log_bin_compress), which must not
// hide it.
func TestWatchDDL(t *testing.T) {
	db := openPeer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	got := make(chan DDLEvent, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = WatchDDL(ctx, config.Server{Addr: peerSrv.Addr(), User: "root"}, db, 4000000077,
			func(e DDLEvent) { got <- e }, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	}()
	defer func() { cancel(); <-done }()
	time.Sleep(500 * time.Millisecond) // the watch starts at the binlog's end

	want := func(verb, contains string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case e := <-got:
				if e.Verb == verb && strings.Contains(e.Statement, contains) {
					return
				}
			case <-deadline:
				t.Fatalf("the watch did not report %s ... %s", verb, contains)
			}
		}
	}
	for _, q := range []string{
		"CREATE DATABASE IF NOT EXISTS ddlw",
		"CREATE TABLE ddlw.t (id INT PRIMARY KEY, v INT)",
		"INSERT INTO ddlw.t VALUES (1, 1), (2, 2)",
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	want("CREATE TABLE", "ddlw.t")

	if _, err := db.ExecContext(ctx, "SET GLOBAL log_bin_compress = ON"); err != nil {
		t.Fatal(err)
	}
	defer db.Exec("SET GLOBAL log_bin_compress = OFF")
	// A new session logs with the new setting; the padding takes the
	// statement past log_bin_compress_min_len (256 bytes).
	conn, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	pad := "/* " + strings.Repeat("padding ", 80) + " */"
	if _, err := conn.ExecContext(ctx, "ALTER TABLE ddlw.t ADD COLUMN w INT NULL "+pad); err != nil {
		t.Fatal(err)
	}
	want("ALTER TABLE", "ADD COLUMN w")
	if _, err := conn.ExecContext(ctx, "TRUNCATE TABLE ddlw.t "+pad); err != nil {
		t.Fatal(err)
	}
	want("TRUNCATE TABLE", "ddlw.t")
	// The server did log them compressed (else this test proves nothing).
	file, _, err := MasterStatus(ctx, db)
	if err != nil {
		t.Fatal(err)
	}
	rows, err := db.QueryContext(ctx, "SHOW BINLOG EVENTS IN '"+file+"'")
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	compressed := 0
	for rows.Next() {
		var name, typ, info string
		var pos, sid, end int64
		if err := rows.Scan(&name, &pos, &typ, &sid, &end, &info); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(strings.ToLower(typ), "compressed") {
			compressed++
		}
	}
	if compressed < 2 {
		t.Fatalf("the server logged %d compressed query events; the test needs the ALTER and the TRUNCATE compressed", compressed)
	}
}

// TestWatchDDLGate: once no DDL ran for a while, the watch stops reading
// the binlog (no dump thread on the server) and rows written meanwhile
// are never read; DDL run inside a procedure moves the server's counters
// and is reported, and so is a long ALTER that started before the watch
// went quiet and was logged after.
func TestWatchDDLGate(t *testing.T) {
	defer func(p, q time.Duration) { ddlPoll, ddlQuiet = p, q }(ddlPoll, ddlQuiet)
	ddlPoll, ddlQuiet = 50*time.Millisecond, 300*time.Millisecond
	db := openPeer(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	for _, q := range []string{
		"CREATE DATABASE IF NOT EXISTS ddlg",
		"CREATE OR REPLACE TABLE ddlg.t (id INT PRIMARY KEY, v INT)",
		"CREATE OR REPLACE PROCEDURE ddlg.p() ALTER TABLE ddlg.t ADD COLUMN IF NOT EXISTS w INT NULL",
	} {
		if _, err := db.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	const sid = 4000000078
	got := make(chan DDLEvent, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = WatchDDL(ctx, config.Server{Addr: peerSrv.Addr(), User: "root"}, db, sid,
			func(e DDLEvent) { got <- e }, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	}()
	defer func() { cancel(); <-done }()
	// idle waits until the watch has read no event for a while.
	waitIdle := func() {
		t.Helper()
		last, still := watchEvents.Load(), 0
		for deadline := time.Now().Add(10 * time.Second); still < 20; time.Sleep(ddlPoll) {
			if n := watchEvents.Load(); n != last {
				last, still = n, 0
			} else {
				still++
			}
			if time.Now().After(deadline) {
				t.Fatal("the watch keeps reading the binlog although no DDL ran")
			}
		}
	}
	want := func(verb, contains string) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case e := <-got:
				if e.Verb == verb && strings.Contains(e.Statement, contains) {
					return
				}
			case <-deadline:
				t.Fatalf("the watch did not report %s ... %s", verb, contains)
			}
		}
	}
	waitIdle()
	before := watchEvents.Load()
	for i := 0; i < 50; i++ {
		if _, err := db.ExecContext(ctx, "INSERT INTO ddlg.t (id, v) VALUES (?, 1)", i); err != nil {
			t.Fatal(err)
		}
	}
	time.Sleep(5 * ddlPoll)
	if n := watchEvents.Load() - before; n != 0 {
		t.Fatalf("rows alone made the watch read %d binlog events", n)
	}
	if _, err := db.ExecContext(ctx, "CALL ddlg.p()"); err != nil {
		t.Fatal(err)
	}
	want("ALTER TABLE", "ADD COLUMN IF NOT EXISTS w")

	// A long ALTER (it waits for a metadata lock a reader holds) counts
	// when it starts and is logged when it ends.
	waitIdle()
	reader, err := db.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer reader.Close()
	if _, err := reader.ExecContext(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	if _, err := reader.ExecContext(ctx, "SELECT * FROM ddlg.t LIMIT 1"); err != nil {
		t.Fatal(err)
	}
	altered := make(chan error, 1)
	go func() { _, err := db.ExecContext(ctx, "ALTER TABLE ddlg.t ADD COLUMN late INT NULL"); altered <- err }()
	time.Sleep(3 * ddlQuiet) // the counters stand still while it waits
	if _, err := reader.ExecContext(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
	if err := <-altered; err != nil {
		t.Fatal(err)
	}
	want("ALTER TABLE", "ADD COLUMN late")
}
