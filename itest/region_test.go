package itest

import (
	"context"
	"fmt"
	"os/exec"
	"strings"
	"sync"
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
			// The applier inserts the other region's rows meanwhile: a
			// deadlock is retried, as an application would.
			for try := 0; ; try++ {
				_, err := db.ExecContext(ctx, "INSERT INTO events (id, region, seq, body) VALUES "+strings.Join(vals, ", "))
				if err == nil {
					break
				}
				if try == 5 || !strings.Contains(err.Error(), "Deadlock") {
					t.Fatal(err)
				}
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
				_, err := db.ExecContext(ctx, "INSERT INTO events (id, region, seq, body) VALUES (?, ?, ?, 'during')", id, r.Name, i)
				mu.Lock()
				if err == nil {
					acked[id] = true
				} else {
					insertErrs = append(insertErrs, err.Error())
				}
				mu.Unlock()
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

	out, err := c.Command(ctx, "region", "add", "-c", ap.ConfigPath, "--from", eu.Name, "--chunk", "250")
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
	if _, err := openProxy(t, ap, 1).ExecContext(ctx, "INSERT INTO events (id, region, seq, body) VALUES (39999999, 'ap', 0, 'from ap')"); err != nil {
		t.Fatal(err)
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
	t.Logf("%d random writes and %d inserts acknowledged while ap was added", len(h.writes), len(acked))
}
