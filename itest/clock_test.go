package itest

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// clockStatus is the clock part of a region's /status.
type clockStatus struct {
	Fenced bool   `json:"fenced"`
	Reason string `json:"reason"`
	Peers  []struct {
		Peer     string  `json:"peer"`
		OffsetMs float64 `json:"offset_ms"`
	} `json:"peers"`
}

func regionClock(t *testing.T, r *cluster.Region) clockStatus {
	t.Helper()
	var page struct {
		Clock clockStatus `json:"clock"`
	}
	body := httpGet(t, "http://"+r.Metrics+"/status")
	if err := json.Unmarshal([]byte(body), &page); err != nil {
		t.Fatalf("region %s /status: %v\n%s", r.Name, err, body)
	}
	return page.Clock
}

// waitClock waits until region r's clock status satisfies ok.
func waitClock(t *testing.T, r *cluster.Region, what string, ok func(clockStatus) bool) clockStatus {
	t.Helper()
	var st clockStatus
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if st = regionClock(t, r); ok(st) {
			return st
		}
	}
	t.Fatalf("region %s: %s never happened; clock status %+v", r.Name, what, st)
	return st
}

// TestClockFence: a region whose clock runs 10 s ahead of both its peers
// measures that directly (its peers' server clocks, not stamps) and
// refuses writes to replicated tables with ERR 1290 naming the skew,
// while reads and tables that do not replicate go on and the other
// regions keep working; set back, it accepts writes again and all
// regions converge. A region running behind is not fenced, keeps taking
// writes, and holds its peers' changes until its clock is back.
func TestClockFence(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startCluster(t, cluster.Options{})
	eu, us, ap := c.Regions[0], c.Regions[1], c.Regions[2]
	euDB, usDB, apDB := openProxy(t, eu, 2), openProxy(t, us, 2), openProxy(t, ap, 2)

	// In bounds: offsets measured, no fence.
	st := waitClock(t, eu, "offsets measured for both peers", func(s clockStatus) bool { return len(s.Peers) == 2 && !s.Fenced })
	for _, p := range st.Peers {
		if p.OffsetMs > 200 || p.OffsetMs < -200 {
			t.Errorf("eu's offset to %s is %.1f ms on one machine", p.Peer, p.OffsetMs)
		}
	}

	if err := eu.SetClockOffset(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	st = waitClock(t, eu, "the fence engaging", func(s clockStatus) bool { return s.Fenced })
	if !strings.Contains(st.Reason, "ahead of 2 of its 2 peers") {
		t.Errorf("fence reason %q does not say it is ahead of both peers", st.Reason)
	}
	if got := metric(t, eu, "mlproxy_clock_fenced"); got != 1 {
		t.Errorf("mlproxy_clock_fenced = %v while fenced", got)
	}
	_, err := euDB.ExecContext(ctx, "INSERT INTO kv VALUES (1, 'eu skewed', 1)")
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1290 || !strings.Contains(me.Message, "clock is ahead of 2 of its 2 peers") || !strings.Contains(me.Message, "clock.max_offset") {
		t.Fatalf("write to a replicated table while 10s ahead: %v; want ERR 1290 from the peer-offset fence", err)
	}
	if _, err := euDB.ExecContext(ctx, "UPDATE counters SET hits = hits + 1 WHERE id = 1"); !errors.As(err, &me) || me.Number != 1290 {
		t.Fatalf("update while fenced: %v; want ERR 1290", err)
	}
	// Reads and tables that do not replicate go on.
	var n int
	if err := euDB.QueryRowContext(ctx, "SELECT COUNT(*) FROM kv").Scan(&n); err != nil {
		t.Fatalf("read while fenced: %v", err)
	}
	if _, err := euDB.ExecContext(ctx, "INSERT INTO local_only (note) VALUES ('fenced but local')"); err != nil {
		t.Fatalf("write to a table that does not replicate while fenced: %v", err)
	}
	// The others are not fenced and keep replicating, into eu too.
	for _, r := range []*cluster.Region{us, ap} {
		if s := regionClock(t, r); s.Fenced {
			t.Errorf("region %s fenced though only eu runs ahead: %s", r.Name, s.Reason)
		}
	}
	if err := execRetry(ctx, usDB, "INSERT INTO kv VALUES (2, 'from us', 1)"); err != nil {
		t.Fatalf("us while eu is fenced: %v", err)
	}
	if err := execRetry(ctx, apDB, "INSERT INTO kv VALUES (3, 'from ap', 1)"); err != nil {
		t.Fatalf("ap while eu is fenced: %v", err)
	}
	waitRows(ctx, t, eu, "SELECT COUNT(*) FROM kv WHERE k IN (2, 3)", 2)

	// Set back: the fence lifts and eu writes again.
	if err := eu.SetClockOffset(0); err != nil {
		t.Fatal(err)
	}
	waitClock(t, eu, "the fence lifting", func(s clockStatus) bool { return !s.Fenced })
	if err := execRetry(ctx, euDB, "INSERT INTO kv VALUES (1, 'eu back', 1)"); err != nil {
		t.Fatalf("eu after its clock was set back: %v", err)
	}

	// Behind its peers: not fenced, keeps taking writes, and holds the
	// peers' changes that look more than max_offset ahead of its clock
	// (a fast peer's stamps are never let through on that peer's word)
	// until it is back in bounds; then it applies them.
	if err := ap.SetClockOffset(-10 * time.Second); err != nil {
		t.Fatal(err)
	}
	waitClock(t, ap, "ap measuring itself behind", func(s clockStatus) bool {
		return len(s.Peers) == 2 && s.Peers[0].OffsetMs < -9000 && s.Peers[1].OffsetMs < -9000
	})
	if s := regionClock(t, ap); s.Fenced {
		t.Fatalf("ap fenced while behind: %s", s.Reason)
	}
	if err := execRetry(ctx, apDB, "INSERT INTO kv VALUES (4, 'ap behind', 1)"); err != nil {
		t.Fatalf("ap while behind: %v", err)
	}
	if err := execRetry(ctx, usDB, "INSERT INTO kv VALUES (5, 'us to a slow ap', 1)"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(200 * time.Millisecond) {
		if strings.Contains(httpGet(t, "http://"+ap.Metrics+"/status"), `"state":"holding"`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("ap, 10 s behind, never held us's change:\n%s", httpGet(t, "http://"+ap.Metrics+"/status"))
		}
	}
	if err := ap.SetClockOffset(0); err != nil {
		t.Fatal(err)
	}
	waitRows(ctx, t, ap, "SELECT COUNT(*) FROM kv WHERE k = 5", 1)
	if err := c.WaitConverged(ctx, map[string]string{"app.kv": "k"}, "k, v, n"); err != nil {
		t.Fatal(err)
	}
}

// waitRows waits until query on region r's server returns want.
func waitRows(ctx context.Context, t *testing.T, r *cluster.Region, query string, want int) {
	t.Helper()
	db := openDirect(t, r)
	var n int
	for deadline := time.Now().Add(20 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
		if err := db.QueryRowContext(ctx, query).Scan(&n); err == nil && n == want {
			return
		}
	}
	t.Fatalf("region %s: %s = %d, want %d", r.Name, query, n, want)
}

// execRetry runs q, again after a deadlock (1213): the applier's locks can
// deadlock a client's insert, which a client retries.
func execRetry(ctx context.Context, db *sql.DB, q string, args ...any) error {
	var err error
	for try := 0; try < 10; try++ {
		if _, err = db.ExecContext(ctx, q, args...); !isDeadlock(err) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
	return err
}
