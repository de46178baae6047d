package itest

import (
	"context"
	"regexp"
	"strconv"
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
