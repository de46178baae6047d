package proxy

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestHugeLiteralPassesThrough: a 90-digit literal used to panic the SQL
// parser and take the whole process down; it now classifies and reaches
// the server unchanged (the answer is the server's, as direct).
func TestHugeLiteralPassesThrough(t *testing.T) {
	p := startProxy(t, nil)
	db := p.open(t, "app")
	lit := strings.Repeat("1234567890", 9)
	var got string
	if err := db.QueryRow("SELECT " + lit).Scan(&got); err != nil {
		t.Fatalf("SELECT a 90-digit literal: %v", err)
	}
	var direct string
	if err := directDB(t, "app").QueryRow("SELECT " + lit).Scan(&direct); err != nil {
		t.Fatal(err)
	}
	if got != direct {
		t.Fatalf("through the proxy %s, direct %s", got, direct)
	}
	if n := testutil.ToFloat64(p.m.panics.WithLabelValues("parser")); n < 1 {
		t.Errorf("parser panics counted: %v, want at least 1", n)
	}
	// Prepared, too.
	if err := db.QueryRow("SELECT ? + "+lit, 1).Scan(&got); err != nil {
		t.Fatalf("prepared with a 90-digit literal: %v", err)
	}
}

// TestPanicEndsOnlyItsConnection: a panic while handling one client's
// command gives that client an error and closes its connection; the
// proxy keeps serving every other connection.
func TestPanicEndsOnlyItsConnection(t *testing.T) {
	p := startProxy(t, nil)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	victim := p.open(t, "app")
	victim.SetMaxIdleConns(0)
	other := p.open(t, "app")
	oc, err := other.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer oc.Close()
	var one int
	if err := oc.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
		t.Fatal(err)
	}

	p.st.mu.Lock()
	p.st.panicNext = true // the stamp for the next write panics
	p.st.mu.Unlock()
	vc, err := victim.Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	_, err = vc.ExecContext(ctx, "INSERT INTO rt (v) VALUES ('boom')")
	vc.Close()
	if err == nil {
		t.Fatal("the write whose handler panicked succeeded")
	}
	if n := testutil.ToFloat64(p.m.panics.WithLabelValues("connection")); n != 1 {
		t.Errorf("connection panics counted: %v, want 1", n)
	}
	// The other connection, opened before, and new ones still work.
	if err := oc.QueryRowContext(ctx, "SELECT 2").Scan(&one); err != nil || one != 2 {
		t.Fatalf("other connection after the panic: %v", err)
	}
	if _, err := victim.ExecContext(ctx, "INSERT INTO rt (v) VALUES ('after')"); err != nil {
		t.Fatalf("a new connection after the panic: %v", err)
	}
	if _, o := stampOfV(t, "rt", "after"); o != testRegion {
		t.Fatal("write after the panic not stamped")
	}
}
