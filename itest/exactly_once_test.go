package itest

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// appender inserts rows with unique ids into app.events and increments the
// shared counter through one region's proxy until ctx is done, recording
// which writes were acknowledged and how many were in doubt (an error where
// the commit may or may not have happened).
type appender struct {
	region  *cluster.Region
	acked   sync.Map // id -> true
	nAcked  atomic.Int64
	hits    atomic.Int64 // acknowledged counter increments
	inDoubt atomic.Int64 // failed increments that may have committed
}

func (a *appender) run(ctx context.Context, t *testing.T, worker int) {
	db, err := sql.Open("mysql", a.region.DSN("app"))
	if err != nil {
		t.Error(err)
		return
	}
	defer db.Close()
	db.SetMaxOpenConns(1)
	for seq := 0; ctx.Err() == nil; seq++ {
		id := int64(a.region.ID)*100_000_000 + int64(worker)*1_000_000 + int64(seq)
		err := func() error {
			tx, err := db.BeginTx(ctx, nil)
			if err != nil {
				return err
			}
			defer tx.Rollback()
			if _, err := tx.ExecContext(ctx, "INSERT INTO events (id, region, seq, body) VALUES (?, ?, ?, ?)", id, a.region.Name, seq, "x"); err != nil {
				return err
			}
			if _, err := tx.ExecContext(ctx, "UPDATE counters SET hits = hits + 1 WHERE id = 1"); err != nil {
				return err
			}
			return tx.Commit()
		}()
		if err == nil {
			a.acked.Store(id, true)
			a.nAcked.Add(1)
			a.hits.Add(1)
			continue
		}
		if ctx.Err() != nil {
			a.inDoubt.Add(1)
			return
		}
		a.inDoubt.Add(1)
		time.Sleep(100 * time.Millisecond) // the region is down: try again shortly
	}
}

// TestExactlyOnceAcrossCrashes writes an append-only table and a merged
// counter at all regions while one region's mlproxy is SIGKILLed and
// restarted, then another region's mariadbd is SIGKILLed and restarted, and
// then a third region's mlproxy is stopped with SIGTERM and started again.
// Every region must end with exactly the same rows: every acknowledged row,
// none twice, and a counter equal to the acknowledged increments (plus at
// most the writes whose outcome the client could not know).
func TestExactlyOnceAcrossCrashes(t *testing.T) {
	c := startCluster(t, cluster.Options{Extra: "apply:\n  workers: 4\n"}) // parallel apply across crashes
	for _, r := range c.Regions {
		// The regions replicate each other's insert meanwhile (an insert
		// that finds the row is a no-op): the applier's locks can deadlock
		// a client insert, which a client retries.
		var err error
		for try := 0; try < 10; try++ {
			if _, err = openDirect(t, r).Exec("INSERT INTO counters (id, hits) VALUES (1, 0) ON DUPLICATE KEY UPDATE hits = hits"); !isDeadlock(err) {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	apps := make([]*appender, len(c.Regions))
	for i, r := range c.Regions {
		apps[i] = &appender{region: r}
		for w := 0; w < 2; w++ {
			wg.Add(1)
			go func(a *appender, w int) { defer wg.Done(); a.run(ctx, t, w) }(apps[i], w)
		}
	}
	phase := soak(30*time.Second) / 4
	time.Sleep(phase)

	us, ap := c.Regions[1], c.Regions[2]
	t.Logf("SIGKILL mlproxy of region %s", us.Name)
	_ = c.StopProxy(us, true)
	time.Sleep(phase)
	if err := c.StartProxy(us); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitProxy(ctx, us); err != nil {
		t.Fatal(err)
	}
	time.Sleep(phase)

	t.Logf("SIGKILL mariadbd of region %s", ap.Name)
	if err := ap.Server.Kill(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(phase / 2)
	if err := ap.Server.Restart(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(phase)

	// A graceful restart under load: SIGTERM exits cleanly within
	// proxy.shutdown_timeout (5s here) plus a few seconds, and no client
	// had a write acknowledged that was rolled back (checked below).
	eu := c.Regions[0]
	t.Logf("SIGTERM mlproxy of region %s under load", eu.Name)
	began := time.Now()
	if err := c.StopProxy(eu, false); err != nil {
		t.Errorf("mlproxy of region %s on SIGTERM under load: %v; log:\n%s", eu.Name, err, cluster.Tail(eu.LogPath, 20))
	}
	took := time.Since(began)
	t.Logf("mlproxy of region %s exited %s after SIGTERM", eu.Name, took.Round(time.Millisecond))
	if took > 5*time.Second+3*time.Second {
		t.Errorf("mlproxy of region %s took %s to exit after SIGTERM; bound: shutdown_timeout 5s + 3s", eu.Name, took.Round(time.Millisecond))
	}
	if !strings.Contains(cluster.Tail(eu.LogPath, 5), "mlproxy stopped cleanly") {
		t.Errorf("mlproxy of region %s did not log a clean stop:\n%s", eu.Name, cluster.Tail(eu.LogPath, 10))
	}
	if err := c.StartProxy(eu); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitProxy(ctx, eu); err != nil {
		t.Fatal(err)
	}
	time.Sleep(phase)
	cancel()
	wg.Wait()

	var acked, hits, doubt int64
	for _, a := range apps {
		acked += a.nAcked.Load()
		hits += a.hits.Load()
		doubt += a.inDoubt.Load()
	}
	t.Logf("%d acknowledged appends, %d writes in doubt", acked, doubt)
	if acked < 50 {
		t.Fatalf("only %d acknowledged appends: the regions are not taking writes", acked)
	}

	wctx, wcancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer wcancel()
	if err := c.WaitConverged(wctx, map[string]string{"app.events": "id", "app.counters": "id"}, "*"); err != nil {
		t.Fatal(err)
	}
	for _, r := range c.Regions {
		db := openDirect(t, r)
		ids := map[int64]bool{}
		rows, err := db.Query("SELECT id FROM events")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				t.Fatal(err)
			}
			ids[id] = true
		}
		rows.Close()
		missing := 0
		for _, a := range apps {
			a.acked.Range(func(k, _ any) bool {
				if !ids[k.(int64)] {
					missing++
				}
				return true
			})
		}
		if missing > 0 {
			t.Errorf("region %s: %d acknowledged rows missing", r.Name, missing)
		}
		if extra := int64(len(ids)) - acked; extra < 0 || extra > doubt {
			t.Errorf("region %s: %d rows, %d acknowledged, %d in doubt: rows were lost or invented", r.Name, len(ids), acked, doubt)
		}
		var got int64
		if err := db.QueryRow("SELECT hits FROM counters WHERE id = 1").Scan(&got); err != nil {
			t.Fatal(err)
		}
		// The counter merges by delta: an increment applied twice or
		// skipped shows here even though the rows above are keyed.
		if got != int64(len(ids)) {
			t.Errorf("region %s: counter = %d, but %d append transactions committed (each incremented it once): an increment was applied twice or lost", r.Name, got, len(ids))
		}
		if got < hits {
			t.Errorf("region %s: counter = %d < %d acknowledged increments", r.Name, got, hits)
		}
		var conflicts int
		if err := db.QueryRow("SELECT COUNT(*) FROM mlr.conflicts WHERE db = 'app' AND tbl = 'events'").Scan(&conflicts); err != nil {
			t.Fatal(err)
		}
		if conflicts > 0 {
			t.Errorf("region %s: %d conflicts logged on append-only table events: a row arrived twice", r.Name, conflicts)
		}
	}
}

// isDeadlock reports a server deadlock (1213), which a client retries.
func isDeadlock(err error) bool {
	var me *mysql.MySQLError
	return errors.As(err, &me) && me.Number == 1213
}
