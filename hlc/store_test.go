package hlc

import (
	"context"
	"os"
	"testing"
	"time"

	"github.com/mlproxy/mlproxy/dbtest"
)

func TestMain(m *testing.M) {
	code := m.Run()
	dbtest.Cleanup()
	os.Exit(code)
}

// TestSQLStore saves, never lowers, survives a server crash, and restores a
// clock that then issues only larger stamps.
func TestSQLStore(t *testing.T) {
	srv, err := dbtest.Start(dbtest.Options{ServerID: 71})
	if err != nil {
		t.Fatal(err)
	}
	defer srv.Destroy()
	db, err := srv.Open("")
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	ctx := context.Background()
	if _, err := db.ExecContext(ctx, "CREATE DATABASE mlr; CREATE TABLE mlr.hlc (id TINYINT UNSIGNED PRIMARY KEY, high_water BIGINT UNSIGNED NOT NULL)"); err != nil {
		t.Fatal(err)
	}
	st := NewSQLStore(db)
	if v, err := st.Load(ctx); err != nil || v != 0 {
		t.Fatalf("empty Load = %s, %v", v, err)
	}
	hi := New(t0.UnixMilli(), 9)
	if err := st.Save(ctx, hi); err != nil {
		t.Fatal(err)
	}
	if err := st.Save(ctx, hi-100); err != nil {
		t.Fatal(err)
	}
	if v, err := st.Load(ctx); err != nil || v != hi {
		t.Fatalf("Load after lower Save = %s, %v; want %s", v, err, hi)
	}
	big := Timestamp(1<<63 + 5) // full 64-bit range survives
	if err := st.Save(ctx, big); err != nil {
		t.Fatal(err)
	}
	if v, _ := st.Load(ctx); v != big {
		t.Fatalf("Load = %d, want %d", v, big)
	}
	if _, err := db.ExecContext(ctx, "UPDATE mlr.hlc SET high_water = ? WHERE id = 1", uint64(hi)); err != nil {
		t.Fatal(err)
	}

	// A clock over the store persists a reservation; after a server crash a
	// new clock restores and issues above everything the first issued.
	w := newFakeWall(t0)
	c := NewClock(Options{Now: w.Now, Store: st, Window: 50 * time.Millisecond})
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- c.Run(rctx) }()
	var last Timestamp
	for i := 0; i < 50; i++ {
		w.Add(10 * time.Millisecond)
		last = c.Now()
	}
	if last <= hi {
		t.Fatalf("stamp %s not above restored %s", last, hi)
	}
	cancel()
	<-done
	if err := srv.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := srv.Restart(); err != nil {
		t.Fatal(err)
	}
	w.Add(-time.Minute)
	c2 := NewClock(Options{Now: w.Now, Store: st})
	if err := c2.Restore(ctx); err != nil {
		t.Fatal(err)
	}
	rctx, cancel = context.WithCancel(ctx)
	defer cancel()
	go func() { done <- c2.Run(rctx) }()
	if ts := c2.Now(); ts <= last {
		t.Fatalf("after crash and restart: %s <= %s issued before", ts, last)
	}
	cancel()
	<-done
}
