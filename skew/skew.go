// Package skew measures this region's clock against its peers' clocks and
// fences the region while it runs ahead of most of them.
//
// A multi-leader region stamps its writes with its hybrid logical clock;
// last-writer-wins and every rule that orders by stamp trust those stamps.
// A region whose clock runs seconds fast would win every conflict with
// writes made seconds before it elsewhere. The applier already holds back
// a peer's changes stamped too far ahead, but that protects only the
// receiving side, and stamps mix replication lag into any offset read
// from them. So each region measures its offset directly: it asks every
// peer's server for its time (NOW(6)) and takes the round trip into
// account, NTP-style (of a few samples, the one with the shortest round
// trip, offset = local midpoint - peer time).
//
// A region fences itself only when it is ahead by more than
// clock.max_offset of a strict majority of ALL its configured peers (a
// peer without a server address, or unreachable, gives no reading and
// counts as not ahead): one peer with a slow clock does not fence the
// others, and a partitioned region keeps accepting writes, which is the
// point of multi-leader. While fenced, the proxy refuses
// writes to replicated tables with ERR 1290 naming the skew; reads, writes
// to tables that do not replicate and the appliers go on. A region behind
// its peers is never fenced; its appliers hold the peers' changes that
// look more than max_offset ahead of its own clock until it is back in
// bounds (they are not applied early: a fast peer's stamps must not be
// let through on the word of that peer's own clock).
//
// After the clock is set back the fence lifts at the next round, but the
// hybrid clock never goes backwards: stamps issued while it ran ahead keep
// it ahead until wall time catches up, and the stamping triggers refuse
// stamps more than max_offset ahead of the local server meanwhile.
package skew

import (
	"context"
	"database/sql"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/redact"
)

// OpenFunc opens a pool to a peer's server; name is for messages.
type OpenFunc func(ctx context.Context, name string, s config.Server) (*sql.DB, error)

// Options configures a Monitor.
type Options struct {
	// Now is this region's wall clock, the one its hybrid clock uses.
	Now func() time.Time
	// MaxOffset is clock.max_offset.
	MaxOffset time.Duration
	// Peers returns the peers to measure (the configuration in force).
	Peers func() []config.Peer
	// Open opens a pool to a peer's server.
	Open OpenFunc
	// Interval between rounds (0 = 1s); a reading older than 10
	// intervals no longer counts.
	Interval time.Duration
	// Samples per peer and round (0 = 3).
	Samples    int
	Registerer prometheus.Registerer
	Logger     *zap.Logger
}

// Reading is the last measurement of one peer.
type Reading struct {
	Peer string `json:"peer"`
	// OffsetMs is how far this region's clock is ahead of the peer's
	// (negative: behind), in milliseconds.
	OffsetMs float64 `json:"offset_ms"`
	// RTTMs is the round trip of the sample the offset comes from.
	RTTMs      float64   `json:"rtt_ms"`
	MeasuredAt time.Time `json:"measured_at,omitzero"`
	Error      string    `json:"error,omitempty"`

	offset time.Duration
	// at is when it was measured by the monotonic clock: freshness does
	// not move when the wall clock is stepped (the fix for a fast clock).
	at time.Time
}

// Status is the fence and every peer's reading, for /status.
type Status struct {
	Fenced      bool      `json:"fenced"`
	Reason      string    `json:"reason,omitempty"`
	MaxOffsetMs int64     `json:"max_offset_ms"`
	Peers       []Reading `json:"peers"`
}

// Monitor measures peers' clocks every Interval and keeps the fence.
type Monitor struct {
	o Options

	mu   sync.Mutex
	dbs  map[string]*sql.DB // by peer name, with the server it points at
	srv  map[string]config.Server
	read map[string]Reading
	// fenced is why writes are refused ("": they are not); read on every
	// statement the proxy handles, so without the lock.
	fenced atomic.Pointer[string]

	offset  *prometheus.GaugeVec
	rtt     *prometheus.GaugeVec
	errs    *prometheus.CounterVec
	fence   prometheus.Gauge
	fencing prometheus.Counter
}

// New builds a Monitor; Run measures.
func New(o Options) *Monitor {
	if o.Interval <= 0 {
		o.Interval = time.Second
	}
	if o.Samples <= 0 {
		o.Samples = 3
	}
	if o.Logger == nil {
		o.Logger = zap.NewNop()
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	m := &Monitor{
		o: o, dbs: map[string]*sql.DB{}, srv: map[string]config.Server{}, read: map[string]Reading{},
		offset: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mlproxy_clock_offset_seconds",
			Help: "How far this region's clock is ahead of each peer's server clock (negative: behind), measured directly with the round trip taken into account.",
		}, []string{"peer"}),
		rtt: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mlproxy_clock_offset_rtt_seconds",
			Help: "Round trip of the sample each peer's clock offset comes from.",
		}, []string{"peer"}),
		errs: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mlproxy_clock_offset_errors_total",
			Help: "Failed clock offset measurements, by peer.",
		}, []string{"peer"}),
		fence: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "mlproxy_clock_fenced",
			Help: "1 while this region refuses writes to replicated tables because its clock is ahead of most peers by more than clock.max_offset.",
		}),
		fencing: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mlproxy_clock_fence_engaged_total",
			Help: "Times the clock fence engaged.",
		}),
	}
	if o.Registerer != nil {
		for _, c := range []prometheus.Collector{m.offset, m.rtt, m.errs, m.fence, m.fencing} {
			_ = o.Registerer.Register(c)
		}
	}
	return m
}

// Fenced is why writes to replicated tables are refused now ("": they are
// not). It implements proxy.Fence.
func (m *Monitor) Fenced() string {
	if p := m.fenced.Load(); p != nil {
		return *p
	}
	return ""
}

// Status is a snapshot for /status.
func (m *Monitor) Status() Status {
	m.mu.Lock()
	defer m.mu.Unlock()
	why := m.Fenced()
	s := Status{Fenced: why != "", Reason: why, MaxOffsetMs: m.o.MaxOffset.Milliseconds()}
	for _, r := range m.read {
		s.Peers = append(s.Peers, r)
	}
	slices.SortFunc(s.Peers, func(a, b Reading) int { return strings.Compare(a.Peer, b.Peer) })
	return s
}

// Run measures every Interval until ctx ends, then closes its pools.
func (m *Monitor) Run(ctx context.Context) {
	defer m.closeAll()
	t := time.NewTicker(m.o.Interval)
	defer t.Stop()
	for {
		m.round(ctx)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (m *Monitor) closeAll() {
	m.mu.Lock()
	defer m.mu.Unlock()
	for name, db := range m.dbs {
		_ = db.Close()
		delete(m.dbs, name)
	}
}

// round measures every peer (concurrently: one slow peer does not delay
// the others' readings) and recomputes the fence.
func (m *Monitor) round(parent context.Context) {
	peers := m.o.Peers()
	m.forget(peers)
	// A peer that hangs (stopped, packets dropped) must not hold up the
	// others' readings: the round gives up on it after a few intervals.
	ctx, cancel := context.WithTimeout(parent, 3*m.o.Interval)
	defer cancel()
	var wg sync.WaitGroup
	for _, p := range peers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := Reading{Peer: p.Name}
			if p.Server.Addr == "" {
				m.mu.Lock()
				m.read[p.Name] = Reading{Peer: p.Name, Error: "no server address configured for this peer: not measured (counts as not ahead)"}
				m.mu.Unlock()
				return
			}
			off, rtt, err := m.measure(ctx, p)
			if parent.Err() != nil {
				return
			}
			m.mu.Lock()
			defer m.mu.Unlock()
			if err != nil {
				m.errs.WithLabelValues(p.Name).Inc()
				prev := m.read[p.Name]
				prev.Peer, prev.Error = p.Name, redact.Error(err)
				m.read[p.Name] = prev
				return
			}
			r.offset, r.OffsetMs, r.RTTMs, r.MeasuredAt, r.at = off, ms(off), ms(rtt), m.o.Now(), time.Now()
			m.read[p.Name] = r
			m.offset.WithLabelValues(p.Name).Set(off.Seconds())
			m.rtt.WithLabelValues(p.Name).Set(rtt.Seconds())
		}()
	}
	wg.Wait()
	if parent.Err() != nil {
		return
	}
	m.decide(len(peers))
}

// forget drops pools and readings of peers no longer configured (or whose
// server changed).
func (m *Monitor) forget(peers []config.Peer) {
	m.mu.Lock()
	defer m.mu.Unlock()
	want := map[string]config.Server{}
	for _, p := range peers {
		want[p.Name] = p.Server
	}
	for name, db := range m.dbs {
		if s, ok := want[name]; !ok || s.Addr != m.srv[name].Addr || s.User != m.srv[name].User {
			_ = db.Close()
			delete(m.dbs, name)
		}
	}
	for name := range m.read {
		if _, ok := want[name]; !ok {
			delete(m.read, name)
			m.offset.DeleteLabelValues(name)
			m.rtt.DeleteLabelValues(name)
		}
	}
}

// decide sets the fence: ahead of more than half of all n peers, each by a
// fresh reading over MaxOffset.
func (m *Monitor) decide(n int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	fresh := time.Now().Add(-10 * m.o.Interval)
	var ahead []string
	for _, r := range m.read {
		if r.at.After(fresh) && r.offset > m.o.MaxOffset {
			ahead = append(ahead, fmt.Sprintf("%s by %s", r.Peer, r.offset.Round(time.Millisecond)))
		}
	}
	slices.Sort(ahead)
	was, why := m.Fenced(), ""
	if n > 0 && 2*len(ahead) > n {
		why = fmt.Sprintf("this region's clock is ahead of %d of its %d peers by more than clock.max_offset %s (%s): writes to replicated tables are refused until it is back within bounds; check NTP on this region's proxy host",
			len(ahead), n, m.o.MaxOffset, strings.Join(ahead, ", "))
	}
	m.fenced.Store(&why)
	switch {
	case was == "" && why != "":
		m.fence.Set(1)
		m.fencing.Inc()
		m.o.Logger.Error("clock fence engaged: refusing writes to replicated tables", zap.String("reason", why))
	case was != "" && why == "":
		m.fence.Set(0)
		m.o.Logger.Info("clock fence lifted: the clock is back within clock.max_offset of its peers")
	}
}

// measure takes Samples readings of p's server time and returns the
// offset of the one with the shortest round trip.
func (m *Monitor) measure(ctx context.Context, p config.Peer) (time.Duration, time.Duration, error) {
	db, err := m.pool(ctx, p)
	if err != nil {
		return 0, 0, err
	}
	best, bestRTT := time.Duration(0), time.Duration(math.MaxInt64)
	for range m.o.Samples {
		qctx, cancel := context.WithTimeout(ctx, m.o.Interval)
		t0 := m.o.Now()
		var s string
		err := db.QueryRowContext(qctx, "SELECT UNIX_TIMESTAMP(NOW(6))").Scan(&s)
		t1 := m.o.Now()
		cancel()
		if err != nil {
			return 0, 0, fmt.Errorf("peer %s: reading its clock: %w", p.Name, err)
		}
		peer, err := parseUnix(s)
		if err != nil {
			return 0, 0, fmt.Errorf("peer %s: reading its clock: %w", p.Name, err)
		}
		rtt := t1.Sub(t0)
		if rtt < bestRTT {
			mid := t0.Add(rtt / 2)
			best, bestRTT = mid.Sub(peer), rtt
		}
	}
	return best, bestRTT, nil
}

func (m *Monitor) pool(ctx context.Context, p config.Peer) (*sql.DB, error) {
	m.mu.Lock()
	db := m.dbs[p.Name]
	m.mu.Unlock()
	if db != nil {
		return db, nil
	}
	db, err := m.o.Open(ctx, "peer "+p.Name, p.Server)
	if err != nil {
		return nil, err
	}
	db.SetMaxOpenConns(1)
	db.SetMaxIdleConns(1)
	m.mu.Lock()
	defer m.mu.Unlock()
	if old := m.dbs[p.Name]; old != nil {
		_ = db.Close()
		return old, nil
	}
	m.dbs[p.Name], m.srv[p.Name] = db, p.Server
	return db, nil
}

// parseUnix parses UNIX_TIMESTAMP(NOW(6)): seconds with up to 6 decimals.
func parseUnix(s string) (time.Time, error) {
	sec, frac, _ := strings.Cut(strings.TrimSpace(s), ".")
	n, err := strconv.ParseInt(sec, 10, 64)
	if err != nil {
		return time.Time{}, fmt.Errorf("server time %q: %w", s, err)
	}
	var us int64
	if frac != "" {
		if len(frac) > 6 {
			frac = frac[:6]
		}
		frac += strings.Repeat("0", 6-len(frac))
		if us, err = strconv.ParseInt(frac, 10, 64); err != nil {
			return time.Time{}, fmt.Errorf("server time %q: %w", s, err)
		}
	}
	return time.Unix(n, us*1000), nil
}

func ms(d time.Duration) float64 { return math.Round(float64(d)/1e4) / 100 }
