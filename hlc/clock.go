package hlc

import (
	"context"
	"errors"
	"fmt"
	"math"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// ErrTooFarAhead is returned by Update for a peer stamp more than MaxOffset
// ahead of local wall time. The clock is not moved. Check the clocks (NTP) of
// this region and of the peer that sent the stamp.
var ErrTooFarAhead = errors.New("hlc: remote stamp too far ahead of local wall time; check NTP on both regions")

// Store persists the clock's high-water mark so a restarted clock never
// issues a stamp at or below one issued before the restart.
type Store interface {
	// Load returns the persisted high-water mark (0 if none).
	Load(ctx context.Context) (Timestamp, error)
	// Save persists ts as the high-water mark; it never lowers the stored
	// value. A nil error means ts is durable.
	Save(ctx context.Context, ts Timestamp) error
}

// Options configures a Clock. Zero values pick the defaults.
type Options struct {
	// Now is the wall clock (default time.Now).
	Now func() time.Time
	// MaxOffset is how far ahead of local wall time a peer stamp may be
	// (default 500ms).
	MaxOffset time.Duration
	// Store persists the high-water reservation. Without it the clock is
	// monotonic only within one process.
	Store Store
	// Window is how far ahead of the stamps it issues the clock reserves in
	// Store (default MaxOffset/4, at most 1s). Larger means fewer writes to
	// Store; a restart then skips up to Window of stamps, and its first
	// stamps are up to Window ahead of the wall clock.
	Window time.Duration
	// Registerer receives the clock's metrics (nil = none).
	Registerer prometheus.Registerer
	// Logger (default zap.NewNop()).
	Logger *zap.Logger
}

// Clock is a hybrid logical clock shared by the proxy (Now) and the
// appliers (Update).
//
// Invariants:
//   - every stamp Now returns is strictly greater than every stamp it
//     returned before, in any goroutine, and than every stamp passed to a
//     successful Update before the call;
//   - Now never issues a stamp with a logical counter above MaxLogical (it
//     moves to the next millisecond instead);
//   - with a Store: Now never issues a stamp above the reservation that
//     Store has durably saved, and Restore makes the clock issue only
//     stamps above the saved value, so a crash at any point can never make
//     a restarted clock go backwards.
type Clock struct {
	now       func() time.Time
	maxOffset time.Duration
	window    uint64 // Window in stamp units (millis << 16)
	store     Store
	log       *zap.Logger

	// last is the highest stamp issued by Now or accepted by Update.
	last atomic.Uint64
	// reserved is the highest stamp Now may issue: the value Store durably
	// holds (math.MaxUint64 without a Store). Only the persister raises it,
	// under mu.
	reserved atomic.Uint64
	// need is the highest stamp a waiting Now wanted to issue; the
	// persister reserves past it.
	need atomic.Uint64
	// restored is set once Restore has loaded the Store.
	restored atomic.Bool
	rejected atomic.Uint64

	mu sync.Mutex
	// advanced is closed (and replaced) whenever reserved rises; waiters in
	// Now block on it.
	advanced chan struct{}
	// kick wakes the persister early (buffer 1, sends never block).
	kick chan struct{}

	m metrics
}

type metrics struct {
	rejected prometheus.Counter
	waits    prometheus.Counter
	saves    prometheus.Counter
	saveErrs prometheus.Counter
}

// NewClock builds a clock. With a Store, Now blocks until Run has persisted a
// first reservation: call Restore (or let Run do it) and keep Run running.
func NewClock(opts Options) *Clock {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.MaxOffset <= 0 {
		opts.MaxOffset = 500 * time.Millisecond
	}
	if opts.Window < 4*time.Millisecond {
		// A restart resumes at the reservation, up to Window ahead of the
		// wall clock; the triggers refuse a stamp more than MaxOffset
		// ahead of the server's clock. A quarter keeps the first writes
		// after a quick restart (systemd's Restart=, a failover) well
		// inside that bound.
		opts.Window = min(time.Second, max(opts.MaxOffset/4, 4*time.Millisecond))
	}
	if opts.Logger == nil {
		opts.Logger = zap.NewNop()
	}
	c := &Clock{
		now:       opts.Now,
		maxOffset: opts.MaxOffset,
		window:    uint64(opts.Window.Milliseconds()) << logicalBits,
		store:     opts.Store,
		log:       opts.Logger,
		advanced:  make(chan struct{}),
		kick:      make(chan struct{}, 1),
		m: metrics{
			rejected: counter(opts.Registerer, "mlproxy_hlc_rejected_total", "Peer stamps rejected for being more than max_offset ahead of local wall time."),
			waits:    counter(opts.Registerer, "mlproxy_hlc_reservation_waits_total", "Times Now waited for the persisted reservation to advance."),
			saves:    counter(opts.Registerer, "mlproxy_hlc_reservation_saves_total", "Reservations saved to the store."),
			saveErrs: counter(opts.Registerer, "mlproxy_hlc_reservation_save_errors_total", "Failed attempts to save a reservation."),
		},
	}
	if c.store == nil {
		c.reserved.Store(math.MaxUint64)
	}
	return c
}

// counter makes a counter and registers it; if an identical collector is
// already registered (two clocks on one registry), the existing one is used.
func counter(reg prometheus.Registerer, name, help string) prometheus.Counter {
	cnt := prometheus.NewCounter(prometheus.CounterOpts{Name: name, Help: help})
	if reg == nil {
		return cnt
	}
	if err := reg.Register(cnt); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(prometheus.Counter); ok {
				return existing
			}
		}
	}
	return cnt
}

// Now issues a fresh stamp. Lock-free in the common case; it waits only when
// the stamp would pass the persisted reservation (see Run).
func (c *Clock) Now() Timestamp {
	ts, _ := c.NowContext(context.Background())
	return ts
}

// NowContext is Now, except that it gives up with ctx's error when ctx
// ends while it waits for the reservation to advance (the Store cannot
// save: the local server is unreachable). A connection that is being
// closed must not hang on a stamp it will never send.
func (c *Clock) NowContext(ctx context.Context) (Timestamp, error) {
	for {
		old := c.last.Load()
		next := c.next(Timestamp(old))
		if uint64(next) > c.reserved.Load() {
			if err := c.waitReserved(ctx, next); err != nil {
				return 0, err
			}
			continue
		}
		if c.last.CompareAndSwap(old, uint64(next)) {
			return next, nil
		}
	}
}

// next is the smallest stamp after last that is at least wall time, with a
// logical counter of at most MaxLogical.
func (c *Clock) next(last Timestamp) Timestamp {
	wall := New(c.now().UnixMilli(), 0)
	n := last + 1
	if wall > n {
		return wall
	}
	if n.Logical() > MaxLogical {
		n = New(n.Millis()+1, 0)
	}
	return n
}

// waitReserved blocks until the reservation reaches want or moves at all
// (the caller re-checks), or ctx ends.
func (c *Clock) waitReserved(ctx context.Context, want Timestamp) error {
	c.mu.Lock()
	ch := c.advanced
	res := c.reserved.Load()
	c.mu.Unlock()
	if uint64(want) <= res {
		return nil
	}
	for {
		old := c.need.Load()
		if uint64(want) <= old || c.need.CompareAndSwap(old, uint64(want)) {
			break
		}
	}
	c.m.waits.Inc()
	c.wake()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("hlc: waiting for the clock's reservation to be saved: %w", context.Cause(ctx))
	}
}

func (c *Clock) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// Update moves the clock past a peer's stamp, so every later Now is larger.
// A stamp more than MaxOffset ahead of local wall time returns
// ErrTooFarAhead (wrapped), is counted, and leaves the clock unchanged.
// Bypass stamps are accepted like any other.
//
// An accepted stamp above the persisted reservation is persisted by Run soon
// after, not before Update returns: after a crash in between, the restarted
// clock may issue stamps below it until it sees it again. The applier
// therefore passes each peer checkpoint's stamp to Update when it starts.
func (c *Clock) Update(remote Timestamp) error {
	wall := c.now()
	if remote.Millis() > wall.UnixMilli()+c.maxOffset.Milliseconds() {
		c.rejected.Add(1)
		c.m.rejected.Inc()
		return fmt.Errorf("hlc: update to %s, %dms ahead of wall time (max offset %s): %w",
			remote, remote.Millis()-wall.UnixMilli(), c.maxOffset, ErrTooFarAhead)
	}
	for {
		old := c.last.Load()
		if uint64(remote) <= old {
			return nil
		}
		if c.last.CompareAndSwap(old, uint64(remote)) {
			break
		}
	}
	if c.store != nil && uint64(remote)+c.window/2 > c.reserved.Load() {
		c.wake()
	}
	return nil
}

// Ahead is how much further ahead of local wall time remote is than the
// max offset allows (0 when Update would accept it).
func (c *Clock) Ahead(remote Timestamp) time.Duration {
	over := remote.Millis() - c.now().UnixMilli() - c.maxOffset.Milliseconds()
	if over <= 0 {
		return 0
	}
	return time.Duration(over) * time.Millisecond
}

// Last is the highest stamp issued or accepted so far.
func (c *Clock) Last() Timestamp { return Timestamp(c.last.Load()) }

// Rejected counts the peer stamps Update refused as too far ahead.
func (c *Clock) Rejected() uint64 { return c.rejected.Load() }

// Restore loads the persisted high-water mark; afterwards the clock never
// issues a stamp at or below it. Without a Store it does nothing.
func (c *Clock) Restore(ctx context.Context) error {
	if c.store == nil {
		return nil
	}
	h, err := c.store.Load(ctx)
	if err != nil {
		return fmt.Errorf("hlc: restore high-water mark: %w", err)
	}
	for {
		old := c.last.Load()
		if uint64(h) <= old || c.last.CompareAndSwap(old, uint64(h)) {
			break
		}
	}
	c.raiseReserved(h)
	c.restored.Store(true)
	c.log.Info("hlc restored", zap.Stringer("high_water", h))
	return nil
}

// raiseReserved publishes a durably saved reservation and wakes waiters.
func (c *Clock) raiseReserved(ts Timestamp) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if uint64(ts) <= c.reserved.Load() {
		return
	}
	c.reserved.Store(uint64(ts))
	close(c.advanced)
	c.advanced = make(chan struct{})
}

// Run keeps the persisted reservation at least half a Window ahead of the
// stamps the clock issues, saving max(last, wall, waiting need) + Window
// whenever the headroom falls below half a Window or a Now is waiting. It
// calls Restore first if that has not been done. Save failures are logged,
// counted and retried; meanwhile Now may block once it reaches the
// reservation (it must not issue stamps a restart could repeat). Run returns
// ctx.Err() when ctx ends, or the Restore error. Without a Store it returns
// nil at once.
func (c *Clock) Run(ctx context.Context) error {
	if c.store == nil {
		return nil
	}
	if !c.restored.Load() {
		if err := c.Restore(ctx); err != nil {
			return err
		}
	}
	tick := time.NewTicker(time.Duration(c.window>>logicalBits) * time.Millisecond / 4)
	defer tick.Stop()
	var retry <-chan time.Time
	for {
		// Reserve ahead of wall time only while stamps are being issued:
		// an idle region then writes nothing to its binlog (peers would
		// see a never-ending trickle of mlr.hlc transactions), and the first
		// stamp after an idle spell waits for one save.
		last, wall := c.last.Load(), uint64(New(c.now().UnixMilli(), 0))
		base := max(last, c.need.Load())
		if last+c.window >= wall {
			base = max(base, wall)
		}
		if base+c.window/2 > c.reserved.Load() {
			target := Timestamp(base + c.window)
			if err := c.store.Save(ctx, target); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				c.m.saveErrs.Inc()
				c.log.Warn("hlc: saving reservation failed; stamps block once it is reached", zap.Error(err))
				retry = time.After(50 * time.Millisecond)
			} else {
				c.m.saves.Inc()
				c.raiseReserved(target)
				retry = nil
			}
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		case <-c.kick:
		case <-retry:
		}
	}
}
