package proxy

import (
	"context"
	"database/sql"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestIdleBackendKilled: the server kills an idle client's backend
// connection; the proxy closes the client connection at once, so the Go
// driver's pool sees a dead connection and its next use succeeds on a new
// one, without an error reaching the application.
func TestIdleBackendKilled(t *testing.T) {
	p := startProxy(t, nil)
	db := p.open(t, "app")
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var id int64
	if err := db.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * idleWatchDelay) // the connection is idle and watched
	if _, err := directDB(t, "app").ExecContext(ctx, "KILL ?", id); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(p.m.backendIdleClosed) < 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := testutil.ToFloat64(p.m.backendIdleClosed); n < 1 {
		t.Fatalf("the proxy did not notice the killed backend of an idle client (backend_idle_closed_total %v)", n)
	}
	var again int64
	if err := db.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&again); err != nil {
		t.Fatalf("the pool's next use after the backend was killed: %v; want a fresh connection and no error", err)
	}
	if again == id {
		t.Fatalf("the next use ran on the killed backend %d", id)
	}

	// A busy connection is never interrupted by the watch.
	for i := 0; i < 200; i++ {
		if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&again); err != nil {
			t.Fatalf("statement %d on a busy connection: %v", i, err)
		}
		if i%50 == 0 {
			time.Sleep(idleWatchDelay + 50*time.Millisecond) // idle long enough to be watched, then used
		}
	}
}

// TestCompressedProtocol: a client that asks for the compressed protocol
// gets it (zlib on the client leg), small and large results and a large
// statement round-trip, and prepared statements work.
func TestCompressedProtocol(t *testing.T) {
	p := startProxy(t, nil)
	db, err := sql.Open("mysql", p.dsn("root", "", "app", func(c *mysql.Config) { c.Apply(mysql.EnableCompression(true)) }))
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var one int
	if err := db.QueryRow("SELECT 1").Scan(&one); err != nil || one != 1 {
		t.Fatalf("SELECT 1 over the compressed protocol: %d, %v", one, err)
	}
	if n := testutil.ToFloat64(p.m.compressed); n < 1 {
		t.Fatalf("the driver asked for compression but the proxy counts %v compressed connections", n)
	}
	big := strings.Repeat("compressible ", 200000) // 2.6 MB, several frames
	var got string
	if err := db.QueryRow("SELECT ?", big).Scan(&got); err != nil || got != big {
		t.Fatalf("2.6 MB round trip: %d bytes back, %v", len(got), err)
	}
	var n int
	if err := db.QueryRow("SELECT COUNT(*) FROM information_schema.COLUMNS").Scan(&n); err != nil || n == 0 {
		t.Fatalf("a many-row result: %d, %v", n, err)
	}
	var compressed string
	if err := db.QueryRow("SELECT VARIABLE_VALUE FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME = 'Compression'").Scan(&compressed); err != nil {
		t.Fatal(err)
	}
	t.Logf("backend leg compression: %s (the proxy compresses the client leg itself)", compressed)

	// The mariadb command-line client, too.
	_, port, _ := strings.Cut(p.Addr().String(), ":")
	before := testutil.ToFloat64(p.m.compressed)
	out, err := exec.Command("mariadb", "--no-defaults", "--compress", "-h", "127.0.0.1", "-P", port, "-u", "root", "-N",
		"-e", "SELECT LENGTH(REPEAT('ab', 100000)), 'done'").CombinedOutput()
	if err != nil || !strings.Contains(string(out), "200000\tdone") {
		t.Fatalf("mariadb --compress through the proxy: %v\n%s", err, out)
	}
	if n := testutil.ToFloat64(p.m.compressed); n <= before {
		t.Errorf("mariadb --compress did not use the compressed protocol (compressed connections %v before, %v after)", before, n)
	}
}
