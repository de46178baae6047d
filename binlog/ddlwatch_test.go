package binlog

import (
	"context"
	"database/sql"
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
	ctx := context.Background()
	want, stop := startWatch(t, db, 4000000077)
	defer stop()
	time.Sleep(500 * time.Millisecond) // the watch starts at the binlog's end

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

// startWatch runs WatchDDL on the peer server as serverID; want waits for
// a reported DDL statement of verb containing contains, stop ends the watch.
func startWatch(t *testing.T, db *sql.DB, serverID uint32) (want func(verb, contains string), stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	got := make(chan DDLEvent, 16)
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = WatchDDL(ctx, config.Server{Addr: peerSrv.Addr(), User: "root"}, db, serverID,
			func(e DDLEvent) { got <- e }, zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)))
	}()
	want = func(verb, contains string) {
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
	return want, func() { cancel(); <-done }
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
	want, stop := startWatch(t, db, 4000000078)
	defer stop()
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

	// A long ALTER (it waits for a metadata lock a reader holds), in an
	// executable comment with a version (no word boundary before it), counts
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
	go func() {
		_, err := db.ExecContext(ctx, "/*!50000ALTER TABLE ddlg.t ADD COLUMN late INT NULL*/")
		altered <- err
	}()
	time.Sleep(3 * ddlQuiet) // the counters stand still while it waits
	if _, err := reader.ExecContext(ctx, "COMMIT"); err != nil {
		t.Fatal(err)
	}
	if err := <-altered; err != nil {
		t.Fatal(err)
	}
	want("ALTER TABLE", "ADD COLUMN late")
}

// TestDDLGateNeedsOwnProcess: the gate needs PROCESS granted to the
// watch's own account (another account's PROCESS, which USER_PRIVILEGES
// may list, does not let it see every session): without, it is off and
// the watch reads every event.
func TestDDLGateNeedsOwnProcess(t *testing.T) {
	root := openPeer(t)
	ctx := context.Background()
	for _, q := range []string{
		"DROP USER IF EXISTS 'gatewatch'@'%'",
		"CREATE USER 'gatewatch'@'%' IDENTIFIED BY 'pw'",
		"GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'gatewatch'@'%'",
		"GRANT SELECT ON mysql.* TO 'gatewatch'@'%'", // lets it list every account's privileges
	} {
		if _, err := root.ExecContext(ctx, q); err != nil {
			t.Fatal(err)
		}
	}
	defer root.ExecContext(ctx, "DROP USER IF EXISTS 'gatewatch'@'%'")
	db, err := sql.Open("mysql", "gatewatch:pw@tcp("+peerSrv.Addr()+")/")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	log := zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel))
	if g := newDDLGate(ctx, db, log); g != nil {
		t.Fatal("the gate is on for an account without PROCESS")
	}
	if g := newDDLGate(ctx, root, log); g == nil {
		t.Fatal("the gate is off for an account with PROCESS")
	}
}

func TestReachedBinlogEnd(t *testing.T) {
	for _, c := range []struct {
		file   string
		pos    uint32
		end    string
		endPos uint32
		want   bool
	}{
		{"bin.000001", 10, "bin.000001", 10, true},
		{"bin.000001", 9, "bin.000001", 10, false},
		{"bin.000002", 4, "bin.000001", 900, true},
		{"bin.000001", 900, "bin.000002", 4, false},
		{"bin.1000000", 4, "bin.999999", 900, true},
		{"bin.999999", 900, "bin.1000000", 4, false},
	} {
		if got := reached(c.file, c.pos, c.end, c.endPos); got != c.want {
			t.Errorf("reached(%s:%d, %s:%d) = %v, want %v", c.file, c.pos, c.end, c.endPos, got, c.want)
		}
	}
}
