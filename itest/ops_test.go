package itest

import (
	"context"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// TestOperations covers what an operator sees around the data path: writes
// that bypass the proxy still replicate (with a server-made stamp), `mlproxy
// status` reports the links, a peer unreachable at start is named in a
// warning without stopping the region, and SIGTERM exits 0.
func TestOperations(t *testing.T) {
	ctx := context.Background()
	c := startCluster(t, cluster.Options{Names: []string{"eu", "us"}})
	eu, us := c.Regions[0], c.Regions[1]

	// A DBA writes straight into eu's server.
	if _, err := openDirect(t, eu).Exec("INSERT INTO kv (k, v, n) VALUES (1000, 'dba', 1)"); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	if err := c.WaitConverged(wctx, map[string]string{"app.kv": "k"}, "k, v, n, _mlr_hlc, _mlr_origin"); err != nil {
		t.Fatal(err)
	}
	var stamp uint64
	var origin int
	if err := openDirect(t, us).QueryRow("SELECT _mlr_hlc, _mlr_origin FROM kv WHERE k = 1000").Scan(&stamp, &origin); err != nil {
		t.Fatalf("bypass write did not replicate to us: %v", err)
	}
	if stamp&0x8000 == 0 || origin != int(eu.ID) {
		t.Errorf("bypass write arrived with stamp %#x origin %d; want the bypass bit 0x8000 and origin %d", stamp, origin, eu.ID)
	}
	if n := metric(t, us, "mlproxy_binlog_bypass_rows_total"); n < 1 {
		t.Errorf("us counted %v rows that bypassed eu's proxy; want at least 1", n)
	}
	if !strings.Contains(mustRead(t, us.LogPath), "rows written around the proxy") {
		t.Errorf("us did not log the rows that bypassed eu's proxy:\n%s", cluster.Tail(us.LogPath, 10))
	}

	// status: the link to eu is up, nothing behind.
	out, err := c.Command(ctx, "status", "-c", us.ConfigPath)
	if err != nil {
		t.Fatalf("mlproxy status: %v\n%s", err, out)
	}
	// The links table, then (after a blank line) the instance running the
	// replicator, and the clock against peers.
	links, clock, _ := strings.Cut(strings.TrimSpace(string(out)), "\n\n")
	if !strings.Contains(clock, "replicator: active on ") || !strings.Contains(clock, us.ProxyAddr) || !strings.Contains(clock, "this instance: active") {
		t.Errorf("mlproxy status on us: want the replicator line naming us's instance, got:\n%s", out)
	}
	lines := strings.Split(links, "\n")
	if !strings.Contains(clock, "clock fenced (max_offset 500ms): no") || !regexp.MustCompile(`(?m)^eu\s+[+-]\d+\.\d`).MatchString(clock) {
		t.Errorf("mlproxy status on us: want the clock section with eu's offset and no fence, got:\n%s", out)
	}
	if len(lines) != 2 || !strings.HasPrefix(lines[1], "eu") || !strings.Contains(lines[1], "running") {
		t.Errorf("mlproxy status on us: want a header and one running line for peer eu, got:\n%s", out)
	}
	if f := strings.Fields(lines[len(lines)-1]); len(f) < 6 || f[4] != "0" || f[5] != "0" {
		t.Errorf("mlproxy status on us after convergence: want lag 0 s and 0 txns, got:\n%s", out)
	}

	// Metrics and health for alerting.
	for path, want := range map[string]string{
		"/metrics": "mlproxy_applier_txns_total",
		"/healthz": "ok",
	} {
		body := httpGet(t, "http://"+us.Metrics+path)
		if !strings.Contains(body, want) {
			t.Errorf("GET %s on us: no %q in:\n%.500s", path, want, body)
		}
	}
	if body := httpGet(t, "http://"+eu.Metrics+"/metrics"); !strings.Contains(body, `mlproxy_proxy_stamped_total`) {
		t.Errorf("eu's /metrics lacks mlproxy_proxy_stamped_total")
	}

	// SIGTERM: clean exit, logged.
	if err := c.StopProxy(eu, false); err != nil {
		t.Fatalf("mlproxy exited with %v on SIGTERM; want exit status 0", err)
	}
	if log := mustRead(t, eu.LogPath); !strings.Contains(log, `"msg":"mlproxy stopped cleanly"`) {
		t.Errorf("no clean-stop line in eu's JSON log:\n%s", cluster.Tail(eu.LogPath, 10))
	}

	// A peer that cannot be reached at start: eu still serves, and says
	// which peer is down.
	orig := mustRead(t, eu.ConfigPath)
	ghost := strings.Replace(orig, "peers:\n", "peers:\n  - name: ghost\n    id: 9\n    server:\n      addr: \"127.0.0.1:1\"\n      user: root\n      insecure: true\n", 1)
	mustWrite(t, eu.ConfigPath, ghost)
	defer os.WriteFile(eu.ConfigPath, []byte(orig), 0o600)
	if err := c.StartProxy(eu); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitProxy(ctx, eu); err != nil {
		t.Fatal(err)
	}
	if _, err := openProxy(t, eu, 1).Exec("UPDATE kv SET v = 'after' WHERE k = 1000"); err != nil {
		t.Fatalf("write through eu with peer ghost down: %v", err)
	}
	deadline := time.Now().Add(20 * time.Second)
	for {
		log := mustRead(t, eu.LogPath)
		if strings.Contains(log, `"peer":"ghost"`) && strings.Contains(log, `"level":"warn"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no warning naming peer ghost in eu's log:\n%s", cluster.Tail(eu.LogPath, 15))
		}
		time.Sleep(200 * time.Millisecond)
	}
	out, _ = c.Command(ctx, "status", "-c", eu.ConfigPath)
	if !strings.Contains(string(out), "ghost") || !strings.Contains(string(out), "127.0.0.1:1") {
		t.Errorf("mlproxy status does not show peer ghost and why it is down:\n%s", out)
	}
	wctx2, cancel2 := context.WithTimeout(ctx, 30*time.Second)
	defer cancel2()
	if err := c.WaitConverged(wctx2, map[string]string{"app.kv": "k"}, "k, v, n, _mlr_hlc, _mlr_origin"); err != nil {
		t.Fatalf("with peer ghost down, eu and us stop converging: %v", err)
	}
}

func httpGet(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}
