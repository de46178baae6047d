package itest

import (
	"context"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// TestDDL: DDL on a replicated table through the proxy is refused with an
// error naming `mlproxy schema ddl`; that command creates a table and
// then adds a column in every region while writes to that table and to
// another one go on (the other table's replication never stops), and the
// new table replicates with its new column everywhere.
func TestDDL(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startCluster(t, cluster.Options{Tables: appTables + "\n  - {schema: app, table: \"*\", rule: lww}"})
	eu, us, ap := c.Regions[0], c.Regions[1], c.Regions[2]

	_, err := openProxy(t, eu, 1).ExecContext(ctx, "ALTER TABLE kv ADD COLUMN note VARCHAR(10) NULL")
	if err == nil || !strings.Contains(err.Error(), "mlproxy schema ddl") {
		t.Fatalf("ALTER TABLE on a replicated table through the proxy: %v; want a refusal naming `mlproxy schema ddl`", err)
	}

	// Writes to kv in every region for the whole test.
	lctx, stop := context.WithCancel(ctx)
	var wg sync.WaitGroup
	var writes, failures, deadlocks atomic.Int64
	var firstErr atomic.Value
	for i, r := range c.Regions {
		db := openProxy(t, r, 1)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for n := 0; lctx.Err() == nil; n++ {
				k := (i+1)*100000 + n
				_, err := db.ExecContext(lctx, "INSERT INTO kv VALUES (?, 'w', 1)", k)
				for tries := 0; isDeadlock(err) && tries < 5; tries++ { // as a client retries 1213 (known: the faults issue)
					deadlocks.Add(1)
					_, err = db.ExecContext(lctx, "INSERT INTO kv VALUES (?, 'w', 1)", k)
				}
				if err == nil {
					writes.Add(1)
				} else if lctx.Err() == nil {
					failures.Add(1)
					firstErr.CompareAndSwap(nil, err.Error())
				}
				time.Sleep(5 * time.Millisecond)
			}
		}()
	}

	configs := []string{"schema", "ddl", "-c", eu.ConfigPath, "-c", us.ConfigPath, "-c", ap.ConfigPath}
	ddl := func(stmt string) {
		t.Helper()
		out, err := c.Command(ctx, append(configs, stmt)...)
		if err != nil {
			t.Fatalf("mlproxy schema ddl %q: %v\n%s", stmt, err, out)
		}
		t.Logf("schema ddl %q:\n%s", stmt, out)
	}
	ddl("CREATE TABLE app.orders (id INT PRIMARY KEY, total INT NOT NULL)")
	if _, err := openProxy(t, eu, 1).ExecContext(ctx, "INSERT INTO orders VALUES (1, 10)"); err != nil {
		t.Fatal(err)
	}
	// While the column is added region by region: orders keeps being
	// written at eu (rows without the column, then with it), and a kv row
	// written at eu every 100 ms must reach us; how long each took shows
	// whether other tables' replication stopped meanwhile.
	octx, ostop := context.WithCancel(ctx)
	var owg sync.WaitGroup
	var orderWrites, inDoubt atomic.Int64
	var maxKVLag atomic.Int64
	var lost atomic.Value
	owg.Add(2)
	go func() {
		defer owg.Done()
		db := openProxy(t, eu, 1)
		for n := 1000; octx.Err() == nil; n++ {
			if _, err := db.ExecContext(octx, "INSERT INTO orders (id, total) VALUES (?, ?)", n, n); err == nil {
				orderWrites.Add(1)
			} else if octx.Err() != nil {
				inDoubt.Add(1) // cancelled in flight: it may have committed
			}
			time.Sleep(20 * time.Millisecond)
		}
	}()
	go func() {
		defer owg.Done()
		src, dst := openProxy(t, eu, 1), openDirect(t, us)
		for n := 0; octx.Err() == nil; n++ {
			k := 900000 + n
			if _, err := src.ExecContext(octx, "INSERT INTO kv VALUES (?, 'marker', 1)", k); err != nil {
				continue
			}
			start := time.Now()
			for {
				var one int
				if dst.QueryRowContext(ctx, "SELECT 1 FROM kv WHERE k = ?", k).Scan(&one) == nil {
					break
				}
				if time.Since(start) > 30*time.Second {
					lost.CompareAndSwap(nil, k)
					return
				}
				time.Sleep(20 * time.Millisecond)
			}
			if d := int64(time.Since(start)); d > maxKVLag.Load() {
				maxKVLag.Store(d)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}()
	ddl("ALTER TABLE app.orders ADD COLUMN note VARCHAR(32) NULL")
	time.Sleep(500 * time.Millisecond)
	ostop()
	owg.Wait()
	if k := lost.Load(); k != nil {
		t.Fatalf("kv row %v, written at eu during the ALTER of app.orders, did not reach us within 30 s: replication of other tables stopped", k)
	}
	t.Logf("during the ALTER: %d orders rows written at eu; a kv row written at eu reached us within %v at most",
		orderWrites.Load(), time.Duration(maxKVLag.Load()).Round(time.Millisecond))
	if orderWrites.Load() == 0 {
		t.Error("no orders row could be written during the ALTER")
	}
	if _, err := openProxy(t, us, 1).ExecContext(ctx, "INSERT INTO orders VALUES (2, 20, 'from us')"); err != nil {
		t.Fatal(err)
	}
	if _, err := openProxy(t, ap, 1).ExecContext(ctx, "UPDATE orders SET note = 'from ap' WHERE id = 1"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second)
	stop()
	wg.Wait()
	wctx, wcancel := context.WithTimeout(ctx, 60*time.Second)
	defer wcancel()
	if err := c.WaitConverged(wctx, map[string]string{"app.orders": "id", "app.kv": "k"}, "*"); err != nil {
		t.Fatal(err)
	}
	rows, err := eu.Dump(ctx, "app.orders", "id, total, COALESCE(note, 'NULL')", "id")
	if err != nil {
		t.Fatal(err)
	}
	if len(rows) < 2 || strings.Join(rows[:2], ",") != "1|10|from ap,2|20|from us" {
		t.Errorf("app.orders everywhere starts %v; want 1|10|from ap,2|20|from us", rows[:min(2, len(rows))])
	}
	if want := 2 + int(orderWrites.Load()); len(rows) < want || len(rows) > want+int(inDoubt.Load()) {
		t.Errorf("app.orders has %d rows everywhere; want %d (2 + every row written during the ALTER), plus at most %d cancelled in flight", len(rows), want, inDoubt.Load())
	}
	if failures.Load() > 0 || writes.Load() == 0 {
		t.Errorf("writes to app.kv during the DDL: %d succeeded, %d failed (%v); want none to fail", writes.Load(), failures.Load(), firstErr.Load())
	}
	t.Logf("%d writes to app.kv during the DDL (%d deadlocks with the applier, retried)", writes.Load(), deadlocks.Load())
}
