package hlc

import (
	"context"
	"errors"
	"math/rand"
	"sort"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// fakeWall is a settable wall clock.
type fakeWall struct{ ns atomic.Int64 }

func newFakeWall(t time.Time) *fakeWall {
	w := &fakeWall{}
	w.ns.Store(t.UnixNano())
	return w
}
func (w *fakeWall) Now() time.Time         { return time.Unix(0, w.ns.Load()) }
func (w *fakeWall) Add(d time.Duration)    { w.ns.Add(int64(d)) }
func (w *fakeWall) Millis() int64          { return time.Unix(0, w.ns.Load()).UnixMilli() }
func (w *fakeWall) Set(t time.Time)        { w.ns.Store(t.UnixNano()) }
func (w *fakeWall) Stamp() Timestamp       { return New(w.Millis(), 0) }
func (w *fakeWall) after(ms int) time.Time { return w.Now().Add(time.Duration(ms) * time.Millisecond) }
func (w *fakeWall) before(ms int) time.Time {
	return w.Now().Add(-time.Duration(ms) * time.Millisecond)
}

var t0 = time.Date(2025, 11, 25, 10, 0, 0, 0, time.UTC)

// memStore is a Store in memory; what Save returned nil for survives a
// "crash" (a new Clock over the same store).
type memStore struct {
	mu    sync.Mutex
	v     Timestamp
	saves int
	fail  bool
}

func (s *memStore) Load(context.Context) (Timestamp, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.v, nil
}

func (s *memStore) Save(_ context.Context, ts Timestamp) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.fail {
		return errors.New("store down")
	}
	s.saves++
	s.v = max(s.v, ts)
	return nil
}

func (s *memStore) get() Timestamp {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.v
}

func TestTimestampStringTime(t *testing.T) {
	ts := New(1732500000123, 5)
	if got := ts.String(); got != "1732500000123.5" {
		t.Errorf("String = %q", got)
	}
	if got := ts.Time(); !got.Equal(time.UnixMilli(1732500000123)) {
		t.Errorf("Time = %v", got)
	}
	b := New(1732500000123, BypassBit|456)
	if got := b.String(); got != "1732500000123.b456" {
		t.Errorf("bypass String = %q", got)
	}
	if got, want := b.Time(), time.UnixMilli(1732500000123).Add(456*time.Microsecond); !got.Equal(want) {
		t.Errorf("bypass Time = %v, want %v", got, want)
	}
}

func TestNowFollowsWallAndNeverGoesBack(t *testing.T) {
	w := newFakeWall(t0)
	c := NewClock(Options{Now: w.Now})
	a := c.Now()
	if a != w.Stamp() {
		t.Fatalf("first stamp %s, want wall %s", a, w.Stamp())
	}
	b := c.Now()
	if b != a+1 {
		t.Fatalf("same millisecond: %s after %s, want logical+1", b, a)
	}
	w.Add(-time.Hour) // wall jumps back
	d := c.Now()
	if d <= b {
		t.Fatalf("after backward jump %s <= %s", d, b)
	}
	w.Add(2 * time.Hour)
	e := c.Now()
	if e != w.Stamp() {
		t.Fatalf("after forward jump %s, want wall %s", e, w.Stamp())
	}
}

func TestNowLogicalOverflowMovesToNextMillisecond(t *testing.T) {
	w := newFakeWall(t0)
	c := NewClock(Options{Now: w.Now})
	prev := c.Now()
	for i := 0; i < 3*(MaxLogical+1); i++ {
		ts := c.Now()
		if ts <= prev {
			t.Fatalf("stamp %d: %s <= %s", i, ts, prev)
		}
		if ts.Logical() > MaxLogical || ts.Bypass() {
			t.Fatalf("stamp %d: logical %#x above MaxLogical", i, ts.Logical())
		}
		prev = ts
	}
	// 1 + 3*(MaxLogical+1) stamps: three full milliseconds, then one more.
	if prev != New(w.Millis()+3, 0) {
		t.Fatalf("frozen wall: ended at %s, want %d.0", prev, w.Millis()+3)
	}
}

func TestNowConcurrentStrictlyIncreasing(t *testing.T) {
	c := NewClock(Options{})
	const workers, per = 8, 20000
	res := make([][]Timestamp, workers)
	var wg sync.WaitGroup
	for g := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s := make([]Timestamp, per)
			for i := range s {
				s[i] = c.Now()
			}
			res[g] = s
		}()
	}
	wg.Wait()
	var all []Timestamp
	for g, s := range res {
		for i := 1; i < len(s); i++ {
			if s[i] <= s[i-1] {
				t.Fatalf("goroutine %d: %s after %s", g, s[i], s[i-1])
			}
		}
		all = append(all, s...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	for i := 1; i < len(all); i++ {
		if all[i] == all[i-1] {
			t.Fatalf("stamp %s issued twice", all[i])
		}
	}
	if c.Last() != all[len(all)-1] {
		t.Fatalf("Last %s, want %s", c.Last(), all[len(all)-1])
	}
}

func TestUpdate(t *testing.T) {
	w := newFakeWall(t0)
	reg := prometheus.NewRegistry()
	c := NewClock(Options{Now: w.Now, MaxOffset: 500 * time.Millisecond, Registerer: reg})
	local := c.Now()

	remote := New(w.after(400).UnixMilli(), 7)
	if err := c.Update(remote); err != nil {
		t.Fatalf("update within offset: %v", err)
	}
	if ts := c.Now(); ts <= remote {
		t.Fatalf("Now %s not past remote %s", ts, remote)
	}
	if err := c.Update(local); err != nil || c.Last() <= remote {
		t.Fatalf("update with an old stamp moved the clock back or failed: %v, last %s", err, c.Last())
	}

	before := c.Last()
	far := New(w.after(501).UnixMilli(), 0)
	err := c.Update(far)
	if !errors.Is(err, ErrTooFarAhead) {
		t.Fatalf("update 501ms ahead: err %v, want ErrTooFarAhead", err)
	}
	if c.Last() != before || c.Rejected() != 1 {
		t.Fatalf("rejected update moved the clock (%s -> %s) or was not counted (%d)", before, c.Last(), c.Rejected())
	}
	if got := gathered(t, reg, "mlproxy_hlc_rejected_total"); got != 1 {
		t.Fatalf("rejected metric = %v, want 1", got)
	}

	// A bypass stamp (logical counter with BypassBit) is fine to update with;
	// the next stamp is past it with a normal logical counter.
	bypass := New(w.after(300).UnixMilli(), BypassBit|999)
	if err := c.Update(bypass); err != nil {
		t.Fatal(err)
	}
	ts := c.Now()
	if ts <= bypass || ts.Bypass() || ts.Logical() > MaxLogical {
		t.Fatalf("after bypass %s: Now %s", bypass, ts)
	}
}

// TestPropertyRandomClockRestarts drives clocks with random wall time
// (including backward jumps), random peer updates and random crashes, over
// one store, and checks: stamps strictly increase across calls and across
// restarts, each stamp is past every update accepted before it in the same
// process, logical counters stay <= MaxLogical, and no issued stamp ever
// exceeds what the store durably holds (so a crash at any point is safe).
func TestPropertyRandomClockRestarts(t *testing.T) {
	for seed := int64(1); seed <= 20; seed++ {
		r := rand.New(rand.NewSource(seed))
		w := newFakeWall(t0)
		st := &memStore{}
		var issued Timestamp // highest stamp issued in any life
		for life := 0; life < 5; life++ {
			c := NewClock(Options{Now: w.Now, Store: st, Window: time.Duration(4+r.Intn(40)) * time.Millisecond})
			ctx, cancel := context.WithCancel(context.Background())
			if life%2 == 0 { // otherwise Run restores
				if err := c.Restore(ctx); err != nil {
					t.Fatal(err)
				}
			}
			done := make(chan error, 1)
			go func() { done <- c.Run(ctx) }()
			var seen Timestamp // highest update accepted in this life
			for op := 0; op < 300; op++ {
				switch k := r.Intn(10); {
				case k < 2:
					w.Add(time.Duration(r.Intn(2000)-1200) * time.Millisecond) // backward jumps too
				case k < 4:
					remote := New(w.Millis()+int64(r.Intn(1400))-700, uint16(r.Intn(1<<16)))
					err := c.Update(remote)
					if remote.Millis() > w.Millis()+500 {
						if !errors.Is(err, ErrTooFarAhead) {
							t.Fatalf("seed %d: update %s ahead of wall %d: %v", seed, remote, w.Millis(), err)
						}
						continue
					}
					if err != nil {
						t.Fatalf("seed %d: %v", seed, err)
					}
					seen = max(seen, remote)
				default:
					ts := c.Now()
					if ts <= issued || ts <= seen {
						t.Fatalf("seed %d life %d: stamp %s not above issued %s / seen %s", seed, life, ts, issued, seen)
					}
					if ts.Logical() > MaxLogical {
						t.Fatalf("seed %d: logical overflow %s", seed, ts)
					}
					if durable := st.get(); ts > durable {
						t.Fatalf("seed %d: issued %s above durable reservation %s", seed, ts, durable)
					}
					issued = ts
				}
			}
			cancel() // crash: only the store survives
			if err := <-done; !errors.Is(err, context.Canceled) {
				t.Fatalf("Run: %v", err)
			}
			w.Add(-time.Duration(r.Intn(3000)) * time.Millisecond) // restart on a slower clock
		}
	}
}

// TestNowWaitsForReservation checks the rare path: with the store down, Now
// does not issue past the last durable reservation; it resumes once a save
// succeeds.
func TestNowWaitsForReservation(t *testing.T) {
	w := newFakeWall(t0)
	st := &memStore{}
	c := NewClock(Options{Now: w.Now, Store: st, Window: 100 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	first := c.Now()
	if first > st.get() {
		t.Fatalf("issued %s above durable %s", first, st.get())
	}
	st.mu.Lock()
	st.fail = true
	st.mu.Unlock()
	durable := st.get()
	w.Add(time.Second) // past the reservation
	got := make(chan Timestamp, 1)
	go func() { got <- c.Now() }()
	select {
	case ts := <-got:
		t.Fatalf("Now returned %s past durable %s while the store was down", ts, durable)
	case <-time.After(200 * time.Millisecond):
	}
	st.mu.Lock()
	st.fail = false
	st.mu.Unlock()
	ts := <-got
	if ts > st.get() || ts <= first {
		t.Fatalf("after recovery: %s (durable %s, first %s)", ts, st.get(), first)
	}
	cancel()
	<-done
}

func BenchmarkTimeNow(b *testing.B) {
	for b.Loop() {
		_ = time.Now()
	}
}

func BenchmarkNow(b *testing.B) {
	c := NewClock(Options{})
	for b.Loop() {
		_ = c.Now()
	}
}

func BenchmarkNowParallel(b *testing.B) {
	c := NewClock(Options{})
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			_ = c.Now()
		}
	})
}

func BenchmarkNowWithStore(b *testing.B) {
	st := &memStore{}
	c := NewClock(Options{Store: st})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	for b.Loop() {
		_ = c.Now()
	}
	cancel()
	<-done
}

// gathered returns the value of a registered counter (-1 if absent).
func gathered(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name && len(mf.GetMetric()) == 1 {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	return -1
}

// An idle clock must stop saving reservations: every save is a transaction
// in the region's binlog, and peers would tail that trickle forever.
func TestIdleClockStopsSaving(t *testing.T) {
	w := newFakeWall(t0)
	st := &memStore{}
	c := NewClock(Options{Now: w.Now, Store: st, Window: 40 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	first := c.Now()
	// Let wall time run on with nobody asking for stamps.
	for i := 0; i < 20; i++ {
		w.Add(40 * time.Millisecond)
		time.Sleep(15 * time.Millisecond)
	}
	st.mu.Lock()
	idleSaves := st.saves
	st.mu.Unlock()
	time.Sleep(100 * time.Millisecond)
	w.Add(time.Second)
	time.Sleep(100 * time.Millisecond)
	st.mu.Lock()
	later := st.saves
	st.mu.Unlock()
	if later != idleSaves {
		t.Fatalf("idle clock kept saving: %d saves, then %d more with no stamps issued", idleSaves, later-idleSaves)
	}
	// The next stamp still follows the wall clock and stays durable.
	next := c.Now()
	if next <= first || next.Millis() < w.Millis() || next > st.get() {
		t.Fatalf("after idle: stamp %s (first %s, wall %d ms, durable %s)", next, first, w.Millis(), st.get())
	}
	cancel()
	<-done
}

// TestNowContextGivesUp: a stamp waiting for a reservation the store cannot
// save returns when its context ends instead of blocking forever (a
// closing connection on a region whose server is unreachable).
func TestNowContextGivesUp(t *testing.T) {
	c := NewClock(Options{Store: failingStore{}})
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	done := make(chan error, 1)
	go func() { _, err := c.NowContext(ctx); done <- err }()
	select {
	case err := <-done:
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("NowContext without a saved reservation: %v, want the context's deadline", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("NowContext did not return when its context ended")
	}
}

type failingStore struct{}

func (failingStore) Load(context.Context) (Timestamp, error) { return 0, nil }
func (failingStore) Save(context.Context, Timestamp) error   { return errors.New("server unreachable") }
