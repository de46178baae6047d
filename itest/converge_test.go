package itest

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// write is one acknowledged write the test made, with the stamp the server
// gave it (read back in the same transaction).
type write struct {
	key    int
	del    bool
	v      string
	n      int
	stamp  uint64
	origin uint16
}

// history collects acknowledged writes from all writers.
type history struct {
	mu     sync.Mutex
	writes []write
	errs   int
	// other are the failed writes' errors other than a deadlock or lock
	// wait timeout (which contention with the appliers gives any client).
	other []string
}

func (h *history) add(w write) { h.mu.Lock(); h.writes = append(h.writes, w); h.mu.Unlock() }

// winners computes, per key, the write with the highest (stamp, origin):
// what last-writer-wins must leave in every region.
func (h *history) winners() map[int]write {
	win := map[int]write{}
	for _, w := range h.writes {
		cur, ok := win[w.key]
		if !ok || w.stamp > cur.stamp || (w.stamp == cur.stamp && w.origin > cur.origin) {
			win[w.key] = w
		}
	}
	return win
}

// randomWriter issues random INSERT/UPDATE/DELETE on keys [1, keys] through
// one proxy until ctx is done, each in its own transaction that also reads
// back the stamp the write got.
func randomWriter(ctx context.Context, db *sql.DB, region uint16, keys int, seed int64, h *history) {
	rng := rand.New(rand.NewSource(seed))
	for i := 0; ctx.Err() == nil; i++ {
		k := 1 + rng.Intn(keys)
		v := fmt.Sprintf("r%d-%d", region, i)
		n := rng.Intn(1000)
		var w write
		var err error
		switch op := rng.Intn(10); {
		case op < 4:
			w, err = stampedWrite(ctx, db, k, false, "INSERT INTO kv (k, v, n) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE v = VALUES(v), n = VALUES(n)", k, v, n)
		case op < 8:
			w, err = stampedWrite(ctx, db, k, false, "UPDATE kv SET v = ?, n = ? WHERE k = ?", v, n, k)
		default:
			w, err = stampedWrite(ctx, db, k, true, "DELETE FROM kv WHERE k = ?", k)
		}
		if err != nil {
			if !errors.Is(err, errNoChange) && ctx.Err() == nil {
				h.mu.Lock()
				h.errs++
				if m := err.Error(); !strings.Contains(m, "Deadlock") && !strings.Contains(m, "Lock wait timeout") {
					h.other = append(h.other, m)
				}
				h.mu.Unlock()
			}
			continue
		}
		w.v, w.n, w.origin = v, n, region
		h.add(w)
	}
}

var errNoChange = errors.New("no row changed")

func stampedWrite(ctx context.Context, db *sql.DB, k int, del bool, query string, args ...any) (write, error) {
	w := write{key: k, del: del}
	tx, err := db.BeginTx(ctx, nil)
	if err != nil {
		return w, err
	}
	defer tx.Rollback()
	res, err := tx.ExecContext(ctx, query, args...)
	if err != nil {
		return w, err
	}
	if n, _ := res.RowsAffected(); n == 0 {
		return w, errNoChange
	}
	if del {
		err = tx.QueryRowContext(ctx, "SELECT _mlr_hlc FROM mlr.`app.kv` WHERE k = ?", k).Scan(&w.stamp)
	} else {
		err = tx.QueryRowContext(ctx, "SELECT _mlr_hlc FROM kv WHERE k = ?", k).Scan(&w.stamp)
	}
	if err != nil {
		return w, fmt.Errorf("read back stamp: %w", err)
	}
	return w, tx.Commit()
}

// TestConvergeAllToAll: three regions, concurrent random writes on a small
// shared key space through all three proxies; afterwards every region holds
// the same rows, each the highest-stamped write to its key, and the binlogs
// stop growing (no change loops between regions).
func TestConvergeAllToAll(t *testing.T) {
	c := startCluster(t, cluster.Options{Extra: "apply:\n  workers: 4\n"}) // parallel apply
	runConvergence(t, c, soak(30*time.Second), 3)
}

func runConvergence(t *testing.T, c *cluster.Cluster, dur time.Duration, connsPerRegion int) {
	h := writeConcurrently(t, c.Regions, connsPerRegion, 20, dur)
	t.Logf("%d acknowledged writes, %d failed writes", len(h.writes), h.errs)
	if len(h.writes) < 100 {
		t.Fatalf("only %d writes were acknowledged in %v; the proxies are not taking writes", len(h.writes), dur)
	}
	checkConverged(t, c, h)
}

// writeConcurrently runs randomWriter on conns connections of every region
// in regions, over keys [1, keys], for dur, and returns what was written.
func writeConcurrently(t *testing.T, regions []*cluster.Region, conns, keys int, dur time.Duration) *history {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), dur)
	defer cancel()
	var h history
	var wg sync.WaitGroup
	for _, r := range regions {
		db := openProxy(t, r, conns)
		for j := 0; j < conns; j++ {
			wg.Add(1)
			go func(r *cluster.Region, seed int64) {
				defer wg.Done()
				randomWriter(ctx, db, r.ID, keys, seed, &h)
			}(r, int64(r.ID)*100+int64(j))
		}
	}
	wg.Wait()
	return &h
}

func checkConverged(t *testing.T, c *cluster.Cluster, h *history) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := c.WaitConverged(ctx, map[string]string{"app.kv": "k"}, "k, v, n, _mlr_hlc, _mlr_origin"); err != nil {
		t.Fatal(err)
	}
	want := h.winners()
	for _, r := range c.Regions {
		db := openDirect(t, r)
		got := map[int]write{}
		rows, err := db.QueryContext(ctx, "SELECT k, v, n, _mlr_hlc, _mlr_origin FROM kv")
		if err != nil {
			t.Fatal(err)
		}
		for rows.Next() {
			var w write
			if err := rows.Scan(&w.key, &w.v, &w.n, &w.stamp, &w.origin); err != nil {
				t.Fatal(err)
			}
			got[w.key] = w
		}
		rows.Close()
		for k, w := range want {
			g, ok := got[k]
			switch {
			case w.del && ok:
				t.Errorf("region %s: key %d should be deleted (delete stamped %d by region %d wins) but holds stamp %d from region %d", r.Name, k, w.stamp, w.origin, g.stamp, g.origin)
			case !w.del && !ok:
				t.Errorf("region %s: key %d missing; want the write stamped %d by region %d", r.Name, k, w.stamp, w.origin)
			case !w.del && (g.v != w.v || g.n != w.n || g.stamp != w.stamp || g.origin != w.origin):
				t.Errorf("region %s: key %d = (%s, %d, stamp %d, origin %d); want (%s, %d, stamp %d, origin %d)", r.Name, k, g.v, g.n, g.stamp, g.origin, w.v, w.n, w.stamp, w.origin)
			}
		}
		for k := range got {
			if _, ok := want[k]; !ok {
				t.Errorf("region %s: key %d present but no acknowledged write made it", r.Name, k)
			}
		}
	}
	checkNoLoops(t, c)
}

// checkNoLoops: once converged, each region's binlog must stop growing.
func checkNoLoops(t *testing.T, c *cluster.Cluster) {
	t.Helper()
	ctx := context.Background()
	pos := func() []string {
		var out []string
		for _, r := range c.Regions {
			p, err := binlogPos(ctx, openDirect(t, r))
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, p)
		}
		return out
	}
	// The last applied transactions may still be committing checkpoint
	// rows; give the regions a moment, then require a quiet period.
	time.Sleep(2 * time.Second)
	before := pos()
	time.Sleep(3 * time.Second)
	after := pos()
	for i, r := range c.Regions {
		if before[i] != after[i] {
			t.Errorf("region %s: binlog still growing with no client writes (%s -> %s): changes are looping", r.Name, before[i], after[i])
		}
	}
}
