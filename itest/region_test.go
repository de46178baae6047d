package itest

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// TestRegionAdd: eu and us take writes (rows that exist before, and a
// continuous load of random writes and inserts at both); ap, an empty
// region, joins (the others' files name it, schema apply, SIGHUP) and is
// seeded from eu with `region add` while the load goes on. The load sees
// no error; once ap runs and everyone caught up, checksum finds the three
// identical, last-writer-wins left every region the same rows, and every
// acknowledged insert is present once in every region.
func TestRegionAdd(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	c := startCluster(t, cluster.Options{Later: []string{"ap"}})
	eu, us, ap := c.Regions[0], c.Regions[1], c.Regions[2]

	// Rows that exist before ap is thought of: 3,000 events from each.
	for _, r := range []*cluster.Region{eu, us} {
		db := openProxy(t, r, 1)
		for b := range 30 {
			vals := make([]string, 100)
			for i := range vals {
				vals[i] = fmt.Sprintf("(%d, '%s', %d, 'before')", int(r.ID)*10_000_000+b*100+i, r.Name, b*100+i)
			}
			if err := execRetry(ctx, db, "INSERT INTO events (id, region, seq, body) VALUES "+strings.Join(vals, ", ")); err != nil {
				t.Fatal(err)
			}
		}
	}
	waitApplied(ctx, t, c)

	// The load: random writes to kv, and inserts into events whose
	// acknowledgement is recorded, at eu and us, until stopped.
	loadCtx, stopLoad := context.WithCancel(ctx)
	var h *history
	var wg sync.WaitGroup
	var mu sync.Mutex
	acked := map[int64]bool{}
	var insertErrs []string
	var increments atomic.Int64
	// longest is the slowest insert while a seed reads eu (seeding): the
	// write stall a user sees, measured from outside.
	var seeding bool
	var longest time.Duration
	wg.Add(1)
	go func() {
		defer wg.Done()
		h = writeConcurrently(t, []*cluster.Region{eu, us}, 2, 200, 25*time.Second)
	}()
	for _, r := range []*cluster.Region{eu, us} {
		db := openProxy(t, r, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; loadCtx.Err() == nil; i++ {
				id := int64(r.ID)*10_000_000 + 5_000_000 + int64(i)
				// Not cancelled mid-statement: a write either is
				// acknowledged or failed with an error the test sees.
				began := time.Now()
				_, err := db.ExecContext(ctx, "INSERT INTO events (id, region, seq, body) VALUES (?, ?, ?, 'during')", id, r.Name, i)
				took := time.Since(began)
				mu.Lock()
				if seeding {
					longest = max(longest, took)
				}
				if err == nil {
					acked[id] = true
				} else {
					insertErrs = append(insertErrs, err.Error())
				}
				mu.Unlock()
				// A counter every region increments (the counter rule: its
				// copy must keep each region's share apart).
				if i%4 == 0 {
					if err := execRetry(ctx, db, "INSERT INTO counters (id, hits) VALUES (1, 1) ON DUPLICATE KEY UPDATE hits = hits + 1"); err != nil {
						mu.Lock()
						insertErrs = append(insertErrs, err.Error())
						mu.Unlock()
					} else {
						increments.Add(1)
					}
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}
	time.Sleep(3 * time.Second)

	if err := c.Join(ctx, ap); err != nil {
		t.Fatal(err)
	}
	// A seed killed half-way (SIGKILL) leaves ap half-seeded: mlproxy run
	// refuses it, and the next region add starts over.
	slow := exec.CommandContext(ctx, c.Bin, "region", "add", "-c", ap.ConfigPath, "--from", eu.Name, "--chunk", "100", "--rows-per-second", "1500")
	if err := slow.Start(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	_ = slow.Process.Kill()
	_ = slow.Wait()
	var state string
	if err := openDirect(t, ap).QueryRowContext(ctx, "SELECT state FROM mlr.seed").Scan(&state); err != nil || state != "seeding" {
		t.Fatalf("after a seed killed half-way, mlr.seed says %q (%v); want seeding", state, err)
	}
	rctx, rcancel := context.WithTimeout(ctx, 20*time.Second)
	refused, err := c.Command(rctx, "run", "-c", ap.ConfigPath)
	rcancel()
	if err == nil || !strings.Contains(string(refused), "did not finish") {
		t.Errorf("mlproxy run on a half-seeded region: err %v, output:\n%s", err, cluster.Tail(ap.LogPath, 5)+string(refused))
	}

	mu.Lock()
	seeding = true
	mu.Unlock()
	out, err := c.Command(ctx, "region", "add", "-c", ap.ConfigPath, "--from", eu.Name, "--chunk", "250")
	mu.Lock()
	seeding = false
	t.Logf("longest insert at eu or us while region add read eu: %s", longest.Round(time.Millisecond))
	mu.Unlock()
	t.Logf("region add:\n%s", out)
	if err != nil {
		t.Fatalf("region add: %v", err)
	}
	for _, want := range []string{"did not finish; emptying its copy and starting over", "seeded region ap from eu", "write stall at eu: none"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("region add's report lacks %q", want)
		}
	}
	// Seeding again is refused: ap is seeded.
	if again, err := c.Command(ctx, "region", "add", "-c", ap.ConfigPath, "--from", eu.Name); err == nil || !strings.Contains(string(again), "already seeded") {
		t.Errorf("a second region add: err %v, output:\n%s", err, again)
	}
	if err := c.StartProxy(ap); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitProxy(ctx, ap); err != nil {
		t.Fatal(err)
	}
	time.Sleep(5 * time.Second) // ap takes writes too
	if err := execRetry(ctx, openProxy(t, ap, 1), "INSERT INTO events (id, region, seq, body) VALUES (39999999, 'ap', 0, 'from ap')"); err != nil {
		t.Fatal(err)
	}
	for range 5 {
		if err := execRetry(ctx, openProxy(t, ap, 1), "INSERT INTO counters (id, hits) VALUES (1, 1) ON DUPLICATE KEY UPDATE hits = hits + 1"); err != nil {
			t.Fatal(err)
		}
		increments.Add(1)
	}
	stopLoad()
	wg.Wait()

	// Random writes to 200 hot keys meet the appliers' row locks: a
	// deadlock or lock wait there is contention any multi-leader client
	// sees (the application retries), not the seed's doing; any other
	// error, and any error of the inserts, is.
	if len(h.other) > 0 || len(insertErrs) > 0 {
		t.Errorf("the load saw errors while ap was added: random writes: %v; inserts: %v", h.other, insertErrs)
	}
	t.Logf("random writes that met a deadlock or lock wait (retryable): %d", h.errs)
	waitApplied(ctx, t, c)
	if out, err := c.Command(ctx, "checksum", "-c", ap.ConfigPath); err != nil {
		t.Errorf("checksum from ap after the seed: %v\n%s", err, out)
	}
	checkConverged(t, c, h)
	for _, r := range c.Regions {
		var n, during int
		if err := openDirect(t, r).QueryRowContext(ctx, "SELECT COUNT(*), COUNT(CASE WHEN body = 'during' THEN 1 END) FROM events").Scan(&n, &during); err != nil {
			t.Fatal(err)
		}
		if want := 6000 + len(acked) + 1; n != want || during != len(acked) {
			t.Errorf("region %s holds %d events (%d written during the seed); want %d (%d acknowledged during it)", r.Name, n, during, want, len(acked))
		}
	}
	// Every increment counted once in every region, ap's included: the
	// seed gave eu's share of the counter to eu, not to ap.
	if err := execRetry(ctx, openProxy(t, eu, 1), "INSERT INTO counters (id, hits) VALUES (1, 1) ON DUPLICATE KEY UPDATE hits = hits + 1"); err != nil {
		t.Fatal(err)
	}
	increments.Add(1)
	waitApplied(ctx, t, c)
	for _, r := range c.Regions {
		var hits int64
		if err := openDirect(t, r).QueryRowContext(ctx, "SELECT hits FROM counters WHERE id = 1").Scan(&hits); err != nil {
			t.Fatal(err)
		}
		if hits != increments.Load() {
			t.Errorf("region %s counts %d hits; %d increments were acknowledged", r.Name, hits, increments.Load())
		}
	}
	t.Logf("%d random writes, %d inserts and %d increments acknowledged while ap was added", len(h.writes), len(acked), increments.Load())

	// Then ap leaves: its mlproxy stops, region remove checks that eu and
	// us hold all ap wrote; they drop it (file, SIGHUP), and checksum
	// stays clean.
	if err := c.StopProxy(ap, false); err != nil {
		t.Fatal(err)
	}
	out, err = c.Command(ctx, "region", "remove", "ap", "-c", eu.ConfigPath)
	t.Logf("region remove ap:\n%s", out)
	if err != nil {
		t.Fatalf("region remove ap: %v", err)
	}
	for _, want := range []string{"eu has applied everything ap wrote", "us has applied everything ap wrote", "next: stop every mlproxy of ap"} {
		if !strings.Contains(string(out), want) {
			t.Errorf("region remove's report lacks %q", want)
		}
	}
	if err := c.Leave(ctx, ap); err != nil {
		t.Fatal(err)
	}
	if err := execRetry(ctx, openProxy(t, eu, 1), "DELETE FROM events WHERE id = 39999999"); err != nil {
		t.Fatal(err)
	}
	waitApplied(ctx, t, c)
	if out, err := c.Command(ctx, "checksum", "-c", eu.ConfigPath); err != nil {
		t.Errorf("checksum from eu after ap left: %v\n%s", err, out)
	}
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		out, _ = c.Command(ctx, "status", "-c", eu.ConfigPath)
		if !strings.Contains(string(out), "\nap ") || time.Now().After(deadline) {
			break
		}
	}
	if strings.Contains(string(out), "\nap ") {
		t.Errorf("eu's status still lists a link to ap after the reload:\n%s", out)
	}
	// remove only checks: for us, caught up, it succeeds and changes nothing.
	if out, err := c.Command(ctx, "region", "remove", "us", "-c", eu.ConfigPath); err != nil {
		t.Errorf("region remove us (a check only) while both run: %v\n%s", err, out)
	}
}

// TestRegionReseed: us is stopped while eu writes and purges its binlogs
// past us's checkpoint; back, us's link says it needs a re-seed (status,
// metric); `region reseed --from eu` copies us again, after which checksum
// is clean and every acknowledged write is in both regions.
func TestRegionReseed(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := startCluster(t, cluster.Options{Names: []string{"eu", "us"}})
	eu, us := c.Regions[0], c.Regions[1]
	acked := 0
	write := func(r *cluster.Region, n int) {
		t.Helper()
		db := openProxy(t, r, 1)
		for range n {
			acked++
			if err := execRetry(ctx, db, "INSERT INTO events (id, region, seq, body) VALUES (?, ?, ?, 'x')", acked, r.Name, acked); err != nil {
				t.Fatal(err)
			}
		}
	}
	write(eu, 200)
	write(us, 200)
	waitApplied(ctx, t, c)

	if err := c.StopProxy(us, false); err != nil {
		t.Fatal(err)
	}
	write(eu, 300)
	d := openDirect(t, eu)
	if _, err := d.ExecContext(ctx, "FLUSH BINARY LOGS"); err != nil {
		t.Fatal(err)
	}
	var file string
	var pos int64
	var x1, x2 any
	if err := d.QueryRowContext(ctx, "SHOW MASTER STATUS").Scan(&file, &pos, &x1, &x2); err != nil {
		t.Fatal(err)
	}
	write(eu, 10)
	// A file a dump thread still reads (eu's own DDL watch) is kept by
	// PURGE with a warning: purge until the first file is gone.
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if _, err := d.ExecContext(ctx, "PURGE BINARY LOGS TO '"+file+"'"); err != nil {
			t.Fatal(err)
		}
		var first string
		var size any
		if err := d.QueryRowContext(ctx, "SHOW BINARY LOGS").Scan(&first, &size); err != nil {
			t.Fatal(err)
		}
		if first == file {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("eu still has %s after PURGE BINARY LOGS TO '%s'", first, file)
		}
	}

	if err := c.StartProxy(us); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitProxy(ctx, us); err != nil {
		t.Fatal(err)
	}
	var out []byte
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		out, _ = c.Command(ctx, "status", "-c", us.ConfigPath)
		if strings.Contains(string(out), "needs_reseed") || time.Now().After(deadline) {
			break
		}
	}
	if !strings.Contains(string(out), "needs_reseed") || !strings.Contains(string(out), "region reseed --from eu") {
		t.Fatalf("mlproxy status on us after eu purged past its checkpoint does not say it needs a re-seed:\n%s", out)
	}
	if m := scrape(t, us, "mlproxy_link_needs_reseed"); !strings.Contains(m, `mlproxy_link_needs_reseed{peer="eu"} 1`) {
		t.Errorf("us's metrics: want mlproxy_link_needs_reseed{peer=\"eu\"} 1, got:\n%s", m)
	}

	// Reseeding while us runs is refused; stopped, it goes.
	if o, err := c.Command(ctx, "region", "reseed", "-c", us.ConfigPath, "--from", eu.Name); err == nil || !strings.Contains(string(o), "is running") {
		t.Errorf("region reseed while us runs: err %v:\n%s", err, o)
	}
	if err := c.StopProxy(us, false); err != nil {
		t.Fatal(err)
	}
	o, err := c.Command(ctx, "region", "reseed", "-c", us.ConfigPath, "--from", eu.Name)
	t.Logf("region reseed:\n%s", o)
	if err != nil {
		t.Fatalf("region reseed: %v", err)
	}
	if err := c.StartProxy(us); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitProxy(ctx, us); err != nil {
		t.Fatal(err)
	}
	write(us, 20)
	write(eu, 20)
	waitApplied(ctx, t, c)
	if out, err := c.Command(ctx, "checksum", "-c", us.ConfigPath); err != nil {
		t.Errorf("checksum after the reseed: %v\n%s", err, out)
	}
	for _, r := range c.Regions {
		var n int
		if err := openDirect(t, r).QueryRowContext(ctx, "SELECT COUNT(*) FROM events").Scan(&n); err != nil {
			t.Fatal(err)
		}
		if n != acked {
			t.Errorf("region %s holds %d events; %d were acknowledged", r.Name, n, acked)
		}
	}
	if out, _ := c.Command(ctx, "status", "-c", us.ConfigPath); strings.Contains(string(out), "needs_reseed") {
		t.Errorf("status after the reseed still says needs_reseed:\n%s", out)
	}
}

// scrape returns the lines of region r's /metrics that start with name.
func scrape(t *testing.T, r *cluster.Region, name string) string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(httpGet(t, "http://"+r.Metrics+"/metrics"), "\n") {
		if strings.HasPrefix(l, name) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
