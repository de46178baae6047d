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
// then adds a column in every region while writes to another table go on,
// and the new table replicates with its new column everywhere.
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
	ddl("ALTER TABLE app.orders ADD COLUMN note VARCHAR(32) NULL")
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
	if got := strings.Join(rows, ","); got != "1|10|from ap,2|20|from us" {
		t.Errorf("app.orders everywhere: %s; want 1|10|from ap,2|20|from us", got)
	}
	if failures.Load() > 0 || writes.Load() == 0 {
		t.Errorf("writes to app.kv during the DDL: %d succeeded, %d failed (%v); want none to fail", writes.Load(), failures.Load(), firstErr.Load())
	}
	t.Logf("%d writes to app.kv during the DDL (%d deadlocks with the applier, retried)", writes.Load(), deadlocks.Load())
}
