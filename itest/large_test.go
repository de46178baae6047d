package itest

import (
	"context"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// TestLargeTransactionAndDDL: a 30,000-row insert and a 30,000-row delete,
// each one transaction, replicate whole although the relay is bounded far
// below their size (they travel in pieces); then a column added in every
// region keeps the table replicating with the new column.
func TestLargeTransactionAndDDL(t *testing.T) {
	ctx := context.Background()
	c := startCluster(t, cluster.Options{
		Names: []string{"eu", "us"},
		Extra: "apply:\n  relay_bytes: 1048576\n",
	})
	eu, us := c.Regions[0], c.Regions[1]
	db := openProxy(t, eu, 1)
	if _, err := db.Exec("INSERT INTO kv (k, v, n) SELECT seq, 'bulk', seq FROM seq_1_to_30000"); err != nil {
		t.Fatal(err)
	}
	wait := func(what string) {
		t.Helper()
		wctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		if err := c.WaitConverged(wctx, map[string]string{"app.kv": "k"}, "*, _mlr_hlc, _mlr_origin"); err != nil {
			t.Fatalf("%s: %v", what, err)
		}
	}
	wait("after the 30,000-row insert")
	if _, err := db.Exec("DELETE FROM kv WHERE k <= 30000"); err != nil {
		t.Fatal(err)
	}
	wait("after the 30,000-row delete")
	var rows, tombs int
	direct := openDirect(t, us)
	if err := direct.QueryRow("SELECT COUNT(*) FROM kv").Scan(&rows); err != nil {
		t.Fatal(err)
	}
	if err := direct.QueryRow("SELECT COUNT(*) FROM mlr.`app.kv`").Scan(&tombs); err != nil {
		t.Fatal(err)
	}
	if rows != 0 || tombs != 30000 {
		t.Errorf("us after the bulk delete: %d rows and %d tombstones; want 0 and 30000", rows, tombs)
	}
	if n := metric(t, us, "mlproxy_binlog_txn_pieces_total"); n < 4 {
		t.Errorf("us received the 30,000-row transactions in %v pieces; with relay_bytes 1 MiB they must be split", n)
	}

	// DDL: the operator adds a column in every region and re-runs schema
	// apply (the update trigger must learn the column).
	for _, r := range c.Regions {
		if _, err := openDirect(t, r).Exec("ALTER TABLE kv ADD COLUMN note VARCHAR(32) NULL"); err != nil {
			t.Fatal(err)
		}
		if out, err := c.Command(ctx, "schema", "apply", "-c", r.ConfigPath); err != nil {
			t.Fatalf("schema apply after ALTER on %s: %v\n%s", r.Name, err, out)
		}
	}
	if _, err := db.Exec("INSERT INTO kv (k, v, n, note) VALUES (1, 'after-ddl', 1, 'new column')"); err != nil {
		t.Fatal(err)
	}
	wait("after an insert naming the new column")
	res, err := openProxy(t, us, 1).Exec("UPDATE kv SET note = 'changed in us' WHERE k = 1")
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		t.Fatalf("update in us changed %d rows; want 1", n)
	}
	wait("after ALTER TABLE")
	var note string
	if err := openDirect(t, eu).QueryRow("SELECT note FROM kv WHERE k = 1").Scan(&note); err != nil {
		t.Fatal(err)
	}
	if note != "changed in us" {
		t.Errorf("eu: note = %q after us changed only the new column; want %q", note, "changed in us")
	}
}

var metricLine = regexp.MustCompile(`(?m)^([a-z_]+)(\{[^}]*\})? ([0-9.e+]+)$`)

// metric sums a metric's samples from region r's /metrics.
func metric(t *testing.T, r *cluster.Region, name string) float64 {
	t.Helper()
	var sum float64
	found := false
	for _, m := range metricLine.FindAllStringSubmatch(httpGet(t, "http://"+r.Metrics+"/metrics"), -1) {
		if m[1] == name {
			v, _ := strconv.ParseFloat(m[3], 64)
			sum += v
			found = true
		}
	}
	if !found {
		t.Fatalf("region %s exports no metric %s", r.Name, name)
	}
	return sum
}

// TestLargeTransactionRetriedWhole: a 200,000-row transaction travels in
// pieces; at one peer its apply fails mid-way (the applier's connection is
// killed while it holds all the rows, waiting for a lock at the
// transaction's last change). It is retried as a whole from the checkpoint
// and applied exactly once; a reader at that peer never sees part of it;
// the peer that saw no fault applies it once too.
func TestLargeTransactionRetriedWhole(t *testing.T) {
	const rows = 200000
	ctx, cancel := context.WithTimeout(context.Background(), 8*time.Minute)
	defer cancel()
	c := startCluster(t, cluster.Options{Extra: "apply:\n  relay_bytes: 1048576\n"})
	eu, us := c.Regions[0], c.Regions[1]
	usDB := openDirect(t, us)

	// At us, a client holds the counter row's lock: the applier streams
	// all 200,000 rows into its local transaction and then waits for that
	// lock at the transaction's last change. Its connection is killed
	// there, mid-transaction, and the lock released: the link must retry
	// the whole transaction from the checkpoint. A reader watches that no
	// count other than 0 or all of them is ever visible at us.
	holder, err := usDB.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer holder.Close()
	seen := make(chan string, 1)
	go func() {
		for ctx.Err() == nil {
			var n int
			if err := usDB.QueryRowContext(ctx, "SELECT COUNT(*) FROM kv").Scan(&n); err == nil && n != 0 && n != rows {
				seen <- "a reader at us saw " + strconv.Itoa(n) + " rows"
				return
			}
			if n == rows {
				return
			}
			time.Sleep(50 * time.Millisecond)
		}
	}()

	euDB := openProxy(t, eu, 1)
	if _, err := euDB.ExecContext(ctx, "INSERT INTO counters (id, hits) VALUES (1, 0)"); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitConverged(ctx, map[string]string{"app.counters": "id"}, "id, hits"); err != nil {
		t.Fatal(err)
	}
	if _, err := holder.ExecContext(ctx, "BEGIN"); err != nil {
		t.Fatal(err)
	}
	var h int
	if err := holder.QueryRowContext(ctx, "SELECT hits FROM counters WHERE id = 1 FOR UPDATE").Scan(&h); err != nil {
		t.Fatal(err)
	}
	tx, err := euDB.BeginTx(ctx, nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "INSERT INTO kv (k, v, n) SELECT seq, 'bulk', seq FROM seq_1_to_"+strconv.Itoa(rows)); err != nil {
		t.Fatal(err)
	}
	if _, err := tx.ExecContext(ctx, "UPDATE counters SET hits = hits + 1 WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	if err := tx.Commit(); err != nil {
		t.Fatal(err)
	}
	// The applier waits for the lock with all the rows in its transaction.
	var victim int64
	var info string
	for deadline := time.Now().Add(4 * time.Minute); victim == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("us's applier never reached the locked counter row: nothing was injected")
		}
		_ = usDB.QueryRowContext(ctx, "SELECT ID, INFO FROM information_schema.PROCESSLIST WHERE ID <> CONNECTION_ID() AND INFO LIKE '%counters%' AND TIME >= 1 LIMIT 1").Scan(&victim, &info)
	}
	if _, err := usDB.ExecContext(ctx, "KILL CONNECTION "+strconv.FormatInt(victim, 10)); err != nil {
		t.Fatal(err)
	}
	if _, err := holder.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	t.Logf("killed us's applier connection waiting at the transaction's last change (%.60s)", info)
	wctx, wcancel := context.WithTimeout(ctx, 3*time.Minute)
	defer wcancel()
	if err := c.WaitConverged(wctx, map[string]string{"app.kv": "k"}, "*, _mlr_hlc, _mlr_origin"); err != nil {
		t.Fatal(err)
	}
	select {
	case s := <-seen:
		t.Errorf("the transaction was not atomic at us: %s", s)
	default:
	}
	for _, r := range c.Regions {
		var n, sum int64
		if err := openDirect(t, r).QueryRowContext(ctx, "SELECT COUNT(*), COALESCE(SUM(n), 0) FROM kv").Scan(&n, &sum); err != nil {
			t.Fatal(err)
		}
		if n != rows || sum != int64(rows)*(rows+1)/2 {
			t.Errorf("region %s holds %d rows summing to %d; want %d rows summing to %d", r.Name, n, sum, rows, int64(rows)*(rows+1)/2)
		}
	}
	if !strings.Contains(mustRead(t, us.LogPath), "streamed in pieces failed part way") {
		t.Errorf("us's log does not show the streamed transaction failing part way and being retried:\n%s", cluster.Tail(us.LogPath, 20))
	}
	// Exactly once: the counter incremented in the same transaction.
	for _, r := range c.Regions {
		var hits int64
		if err := openDirect(t, r).QueryRowContext(ctx, "SELECT hits FROM counters WHERE id = 1").Scan(&hits); err != nil {
			t.Fatal(err)
		}
		if hits != 1 {
			t.Errorf("region %s: the counter incremented once in the large transaction is %d", r.Name, hits)
		}
	}
}
