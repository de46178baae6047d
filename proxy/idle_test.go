package proxy

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestIdleBackendKilled: the server kills an idle client's backend
// connection; the proxy closes the client connection at once, so the Go
// driver's pool sees a dead connection and its next use succeeds on a new
// one, without an error reaching the application.
func TestIdleBackendKilled(t *testing.T) {
	p := startProxy(t, nil)
	db := p.open(t, "app")
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var id int64
	if err := db.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * idleWatchDelay) // the connection is idle and watched
	if _, err := directDB(t, "app").ExecContext(ctx, "KILL ?", id); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(5 * time.Second)
	for testutil.ToFloat64(p.m.backendIdleClosed) < 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	if n := testutil.ToFloat64(p.m.backendIdleClosed); n < 1 {
		t.Fatalf("the proxy did not notice the killed backend of an idle client (backend_idle_closed_total %v)", n)
	}
	var again int64
	if err := db.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&again); err != nil {
		t.Fatalf("the pool's next use after the backend was killed: %v; want a fresh connection and no error", err)
	}
	if again == id {
		t.Fatalf("the next use ran on the killed backend %d", id)
	}

	// A busy connection is never interrupted by the watch.
	for i := 0; i < 200; i++ {
		if err := db.QueryRowContext(ctx, "SELECT 1").Scan(&again); err != nil {
			t.Fatalf("statement %d on a busy connection: %v", i, err)
		}
		if i%50 == 0 {
			time.Sleep(idleWatchDelay + 50*time.Millisecond) // idle long enough to be watched, then used
		}
	}
}
