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
