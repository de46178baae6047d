package itest

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

func TestConvergeRing(t *testing.T) {
	c := startCluster(t, cluster.Options{Topology: "ring"})
	runConvergence(t, c, soak(30*time.Second)/3, 2)
}

func TestConvergeStar(t *testing.T) {
	c := startCluster(t, cluster.Options{Topology: "star", Hub: "eu"})
	runConvergence(t, c, soak(30*time.Second)/3, 2)
}

// TestPeerDown: one region's server is down for a while; the others keep
// accepting writes, and it catches up when it returns.
func TestPeerDown(t *testing.T) {
	c := startCluster(t, cluster.Options{})
	down := c.Regions[2]
	if err := down.Server.Stop(); err != nil {
		t.Fatal(err)
	}
	h := writeConcurrently(t, c.Regions[:2], 2, 50, soak(30*time.Second))
	if len(h.writes) < 100 {
		t.Fatalf("only %d writes acknowledged while region %s was down: a down peer blocks local writes", len(h.writes), down.Name)
	}
	// The live regions must already agree with each other.
	live := &cluster.Cluster{Opts: c.Opts, Regions: c.Regions[:2]}
	wctx, wcancel := context.WithTimeout(context.Background(), time.Minute)
	defer wcancel()
	if err := live.WaitConverged(wctx, map[string]string{"app.kv": "k"}, "k, v, n, _mlr_hlc, _mlr_origin"); err != nil {
		t.Fatalf("live regions while %s is down: %v", down.Name, err)
	}
	if err := down.Server.Restart(); err != nil {
		t.Fatal(err)
	}
	// Back after 30 s away: the live regions tail it again within 2 s (a
	// probe at least every ~1.3 s, not a breaker's fixed open period).
	// Timed from a write committed on its server the moment it is back.
	ddb := openDirect(t, down)
	if _, err := ddb.Exec("INSERT INTO app.events (id, region, seq, body) VALUES (999999, ?, 0, 'back')", down.Name); err != nil {
		t.Fatal(err)
	}
	back := time.Now()
	for _, r := range c.Regions[:2] {
		db := openDirect(t, r)
		for {
			var n int
			if err := db.QueryRow("SELECT COUNT(*) FROM app.events WHERE id = 999999").Scan(&n); err == nil && n == 1 {
				break
			}
			if time.Since(back) > time.Minute {
				t.Fatalf("region %s never applied %s's write after %s came back", r.Name, down.Name, down.Name)
			}
			time.Sleep(20 * time.Millisecond)
		}
		took := time.Since(back)
		t.Logf("region %s applied %s's first write %s after it was back", r.Name, down.Name, took.Round(time.Millisecond))
		if took > 2*time.Second {
			t.Errorf("region %s applied %s's first write only %s after it was back: links must reconnect within 2 s", r.Name, down.Name, took.Round(time.Millisecond))
		}
	}
	checkConverged(t, c, h)
}

// TestBadInput: a replicated table without a primary key and a peer whose
// binlog is in STATEMENT format each produce a clear message naming them.
func TestBadInput(t *testing.T) {
	ctx := context.Background()
	c := startCluster(t, cluster.Options{Names: []string{"eu", "us"}})
	eu, us := c.Regions[0], c.Regions[1]

	// schema check names the table without a primary key.
	if _, err := openDirect(t, eu).Exec("CREATE TABLE app.nopk (a INT, b INT)"); err != nil {
		t.Fatal(err)
	}
	bad := strings.Replace(mustRead(t, eu.ConfigPath), "tables:\n", "tables:\n  - schema: app\n    table: nopk\n", 1)
	badPath := eu.ConfigPath + ".nopk.yaml"
	mustWrite(t, badPath, bad)
	out, err := c.Command(ctx, "schema", "check", "-c", badPath)
	if err == nil {
		t.Fatalf("schema check passed a table without primary key:\n%s", out)
	}
	if !strings.Contains(string(out), "app.nopk") || !strings.Contains(strings.ToLower(string(out)), "primary key") {
		t.Errorf("schema check output does not name app.nopk and its missing primary key:\n%s", out)
	}

	// A peer switched to STATEMENT format: schema check says so, naming it.
	if _, err := openDirect(t, us).Exec("SET GLOBAL binlog_format = 'STATEMENT'"); err != nil {
		t.Fatal(err)
	}
	out, err = c.Command(ctx, "schema", "check", "-c", eu.ConfigPath)
	if err == nil || !strings.Contains(string(out), "us") || !strings.Contains(string(out), "binlog_format") {
		t.Errorf("schema check with peer us in STATEMENT format: err=%v, output:\n%s", err, out)
	}
	if _, err := openDirect(t, us).Exec("SET GLOBAL binlog_format = 'ROW'"); err != nil {
		t.Fatal(err)
	}
}

func mustRead(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func mustWrite(t *testing.T, path, s string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(s), 0o600); err != nil {
		t.Fatal(err)
	}
}
