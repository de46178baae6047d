package itest

import (
	"context"
	"fmt"
	"math/rand/v2"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// TestChecksum: on converged regions, under a write load that keeps
// hitting the chunks being compared, `mlproxy checksum` reports no
// difference; after an administrator changes rows on one region's server
// with sql_log_bin=0, it names exactly those rows and exits non-zero.
func TestChecksum(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := startCluster(t, cluster.Options{})
	eu, us := c.Regions[0], c.Regions[1]
	const rows = 20000
	var b strings.Builder
	for i := 1; i <= rows; i++ {
		if b.Len() > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "(%d, 'v%d', %d)", i, i, i)
		if i%1000 == 0 {
			if _, err := openProxy(t, eu, 1).ExecContext(ctx, "INSERT INTO kv VALUES "+b.String()); err != nil {
				t.Fatal(err)
			}
			b.Reset()
		}
	}
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	defer wcancel()
	if err := c.WaitApplied(wctx); err != nil {
		t.Fatal(err)
	}

	// Writers in every region, on random rows of every chunk.
	lctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var writes [3]int
	for i, r := range c.Regions {
		db := openProxy(t, r, 2)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for lctx.Err() == nil {
				k := 1 + rand.IntN(rows)
				if _, err := db.ExecContext(lctx, "UPDATE kv SET n = n + 1, v = ? WHERE k = ?", fmt.Sprintf("%s-%d", r.Name, writes[i]), k); err == nil {
					writes[i]++
				}
				time.Sleep(2 * time.Millisecond)
			}
		}()
	}
	out, err := c.Command(ctx, "checksum", "-c", eu.ConfigPath, "--table", "app.kv", "--chunk", "250")
	stop()
	wg.Wait()
	t.Logf("checksum under load (%v writes):\n%s", writes, out)
	if err != nil {
		t.Fatalf("checksum under write load reported a difference (or failed): %v\n%s", err, out)
	}
	if !strings.Contains(string(out), fmt.Sprintf("app.kv  %d ", rows)) {
		t.Errorf("checksum did not cover the %d rows of app.kv:\n%s", rows, out)
	}

	if err := c.WaitApplied(wctx); err != nil {
		t.Fatal(err)
	}
	// Speed at rest, beside the server's own CHECKSUM TABLE of the same rows
	// in the same regions (logged, not asserted: the machine is shared).
	cs := time.Now()
	if out, err := c.Command(ctx, "checksum", "-c", eu.ConfigPath, "--table", "app.kv"); err != nil {
		t.Fatalf("checksum at rest: %v\n%s", err, out)
	}
	csTook := time.Since(cs)
	ct := time.Now()
	for _, r := range c.Regions {
		if _, err := openDirect(t, r).ExecContext(ctx, "CHECKSUM TABLE app.kv"); err != nil {
			t.Fatal(err)
		}
	}
	ctTook := time.Since(ct)
	t.Logf("at rest, %d rows x 3 regions: mlproxy checksum %v (%.0f rows/s per region), CHECKSUM TABLE %v (%.0f rows/s per region); ratio %.1fx",
		rows, csTook.Round(time.Millisecond), float64(rows)/csTook.Seconds(), ctTook.Round(time.Millisecond), float64(rows)/ctTook.Seconds(), csTook.Seconds()/ctTook.Seconds())

	// An administrator edits us's server without the binlog.
	if err := execAll(ctx, openDirect(t, us), "SET SESSION sql_log_bin = 0", "UPDATE kv SET v = 'tampered' WHERE k IN (17, 2042)", "DELETE FROM kv WHERE k = 999"); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	out, err = c.Command(ctx, "checksum", "-c", eu.ConfigPath, "--chunk", "250", "--recheck", "2")
	took := time.Since(start)
	t.Logf("checksum after tampering:\n%s", out)
	if err == nil {
		t.Fatalf("checksum exited 0 after rows were changed on us without the binlog:\n%s", out)
	}
	var lines []string
	for _, l := range strings.Split(string(out), "\n") {
		if strings.HasPrefix(l, "DIFFERS") {
			lines = append(lines, l)
		}
	}
	want := map[string]string{"(17)": "columns v", "(2042)": "columns v", "(999)": "us: absent"}
	if len(lines) != len(want) {
		t.Errorf("checksum named %d differing rows, want exactly %d (keys 17, 2042, 999):\n%s", len(lines), len(want), out)
	}
	for key, detail := range want {
		found := false
		for _, l := range lines {
			if strings.Contains(l, "app.kv key "+key) && strings.Contains(l, detail) {
				found = true
			}
		}
		if !found {
			t.Errorf("checksum did not name app.kv key %s (%s):\n%s", key, detail, out)
		}
	}

	t.Logf("checksum with three differing rows took %v (two re-reads a second apart)", took)
}
