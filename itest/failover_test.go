package itest

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// replicatorOf reads from instance r's /status whether it runs its
// region's replicator ("active") or stands by.
func replicatorOf(ctx context.Context, r *cluster.Region) (string, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+r.Metrics+"/status", nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	var page struct {
		Replicator string `json:"replicator"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&page); err != nil {
		return "", err
	}
	return page.Replicator, nil
}

// holderOf is the instance mlr.replicator names at region r, and the epoch.
func holderOf(ctx context.Context, db *sql.DB) (string, uint64, error) {
	var holder string
	var epoch uint64
	err := db.QueryRowContext(ctx, "SELECT holder, epoch FROM mlr.replicator WHERE id = 1").Scan(&holder, &epoch)
	return holder, epoch, err
}

// loadWriter inserts rows with ids unique to it into app.events through db
// until stop, recording which the proxy acknowledged and which were in
// flight when an error came back (they may or may not have committed).
type loadWriter struct {
	name    string
	db      *sql.DB
	base    int64
	acked   map[int64]bool
	unknown map[int64]bool
	errs    int
}

func (w *loadWriter) run(ctx context.Context, stop *atomic.Bool) {
	for seq := int64(1); !stop.Load() && ctx.Err() == nil; seq++ {
		id := w.base + seq
		_, err := w.db.ExecContext(ctx, "INSERT INTO events (id, region, seq, body) VALUES (?, ?, ?, 'load')", id, w.name, seq)
		if err != nil {
			w.unknown[id] = true
			w.errs++
			time.Sleep(20 * time.Millisecond)
			continue
		}
		w.acked[id] = true
	}
}

// TestReplicatorFailover: region eu runs two mlproxy instances, clients
// write through both (and through us and ap). Exactly one eu instance runs
// the replicator. SIGKILL of it under load: the other takes over within
// 5 s, and every region ends with exactly the acknowledged rows (a row
// whose acknowledgement the kill lost may be there too, once). Then the
// new holder's lock session alone is killed: afterwards exactly one
// instance replicates, and writes still reach every region.
func TestReplicatorFailover(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	c := startCluster(t, cluster.Options{})
	eu := c.Regions[0]
	eu2, err := c.AddInstance(ctx, eu, "b")
	if err != nil {
		t.Fatal(err)
	}
	euDirect := openDirect(t, eu)
	instances := []*cluster.Region{eu, eu2}

	active := func() (on, off *cluster.Region) {
		t.Helper()
		var act []*cluster.Region
		for _, in := range instances {
			st, err := replicatorOf(ctx, in)
			if err != nil {
				continue // killed
			}
			if st == "active" {
				act = append(act, in)
			}
		}
		if len(act) != 1 {
			return nil, nil
		}
		if act[0] == eu {
			return eu, eu2
		}
		return eu2, eu
	}
	waitOne := func(what string) (*cluster.Region, *cluster.Region) {
		t.Helper()
		deadline := time.Now().Add(15 * time.Second)
		for time.Now().Before(deadline) {
			if on, off := active(); on != nil {
				return on, off
			}
			time.Sleep(100 * time.Millisecond)
		}
		t.Fatalf("%s: not exactly one eu instance runs the replicator", what)
		return nil, nil
	}
	holder, epoch, err := holderOf(ctx, euDirect)
	if err != nil {
		t.Fatal(err)
	}
	on, off := waitOne("at start")
	if !strings.Contains(holder, on.ProxyAddr) {
		t.Fatalf("mlr.replicator names %q, /status says %s is active", holder, on.ProxyAddr)
	}

	var stop atomic.Bool
	var writers []*loadWriter
	for i, r := range append([]*cluster.Region{eu, eu2}, c.Regions[1:]...) {
		w := &loadWriter{name: fmt.Sprintf("%s-%d", r.Name, i), db: openProxy(t, r, 2), base: int64(i+1) * 1_000_000,
			acked: map[int64]bool{}, unknown: map[int64]bool{}}
		writers = append(writers, w)
	}
	var wg sync.WaitGroup
	for _, w := range writers {
		wg.Add(1)
		go func() { defer wg.Done(); w.run(ctx, &stop) }()
	}
	time.Sleep(soak(3 * time.Second))

	killed := time.Now()
	if err := c.StopProxy(on, true); err == nil {
		t.Logf("SIGKILL of %s: exited cleanly?", on.ProxyAddr)
	}
	var took time.Duration
	for {
		h, e, err := holderOf(ctx, euDirect)
		if err == nil && e > epoch && strings.Contains(h, off.ProxyAddr) {
			took, epoch = time.Since(killed), e
			break
		}
		if time.Since(killed) > 5*time.Second {
			t.Fatalf("the standby %s did not take the replicator over within 5s of the active instance's SIGKILL (holder %q, epoch %d)", off.ProxyAddr, h, e)
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Logf("standby took over %s after the SIGKILL (epoch %d)", took.Round(time.Millisecond), epoch)
	time.Sleep(soak(3 * time.Second))

	// The new holder's lock session alone dies: exactly one instance
	// replicates afterwards (it takes the lock back, or the restarted
	// first instance does).
	if err := c.StartProxy(on); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitProxy(ctx, on); err != nil {
		t.Fatal(err)
	}
	var lockID int64
	if err := euDirect.QueryRowContext(ctx, "SELECT IS_USED_LOCK('mlproxy.replicator.eu')").Scan(&lockID); err != nil {
		t.Fatal(err)
	}
	if _, err := euDirect.ExecContext(ctx, fmt.Sprintf("KILL CONNECTION %d", lockID)); err != nil {
		t.Fatal(err)
	}
	time.Sleep(3 * time.Second)
	waitOne("after the lock session was killed")
	if _, e, err := holderOf(ctx, euDirect); err != nil || e <= epoch {
		t.Fatalf("after the lock session was killed: epoch %d (was %d), %v; want a takeover", e, epoch, err)
	}
	time.Sleep(soak(2 * time.Second))
	stop.Store(true)
	wg.Wait()

	wctx, wcancel := context.WithTimeout(ctx, 90*time.Second)
	defer wcancel()
	if err := c.WaitApplied(wctx); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitConverged(wctx, map[string]string{"app.events": "id"}, "id, region, seq"); err != nil {
		t.Fatal(err)
	}
	for _, r := range c.Regions {
		rows, err := openDirect(t, r).QueryContext(ctx, "SELECT id FROM app.events")
		if err != nil {
			t.Fatal(err)
		}
		have := map[int64]int{}
		for rows.Next() {
			var id int64
			if err := rows.Scan(&id); err != nil {
				t.Fatal(err)
			}
			have[id]++
		}
		rows.Close()
		acked, extra := 0, 0
		for _, w := range writers {
			for id := range w.acked {
				acked++
				if have[id] != 1 {
					t.Errorf("region %s: acknowledged row %d (writer %s) present %d times", r.Name, id, w.name, have[id])
				}
			}
			for id := range w.unknown {
				if have[id] > 0 {
					extra++
				}
			}
		}
		if len(have) != acked+extra {
			t.Errorf("region %s holds %d rows: %d acknowledged, %d whose acknowledgement was lost, and %d nobody wrote", r.Name, len(have), acked, extra, len(have)-acked-extra)
		}
		t.Logf("region %s: %d acknowledged rows, %d more whose acknowledgement a kill lost", r.Name, acked, extra)
	}
}
