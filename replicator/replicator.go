// Package replicator runs a region's replication links: one Link per peer
// the topology pulls from, each owning its tailer (the peer's binlog), the
// bounded relay, its applier (into the local server) and its restart
// policy. The tailer carries the circuit breaker toward the peer. A link
// that fails is retried from its committed checkpoint with backoff and
// jitter; no link's failure stops another, or local writes.
//
// Update makes the running links match a (re)loaded configuration: links
// to peers no longer pulled from stop, new ones start, and links whose
// peer or table rules changed restart from their checkpoints. Nothing is
// lost: a link only ever resumes from what the local server committed.
package replicator

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/mlproxy/mlproxy/applier"
	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/hlc"
	"github.com/mlproxy/mlproxy/redact"
	"github.com/mlproxy/mlproxy/schema"
)

// OpenFunc opens a database pool to a server (a peer's, to read where its
// binlog starts); name is for messages ("peer us").
type OpenFunc func(ctx context.Context, name string, s config.Server) (*sql.DB, error)

// Replicator owns the links of one region.
type Replicator struct {
	db    *sql.DB
	clock *hlc.Clock
	open  OpenFunc
	log   *zap.Logger
	reg   prometheus.Registerer
	// Tracer, when set before Run, makes the appliers' spans (package
	// tracing); nil is off.
	Tracer trace.Tracer

	mu    sync.Mutex
	ctx   context.Context // Run's; links run under it
	epoch uint64          // Run's: the appliers' fence (applier.Config.Epoch)
	links map[string]*Link
	wg    sync.WaitGroup

	stuck      *prometheus.GaugeVec // peer: 1 while a link is stuck
	reseed     *prometheus.GaugeVec // peer: 1 while the peer no longer has the link's checkpoint
	relayTxns  *prometheus.GaugeVec // peer: transactions (or pieces) waiting in the relay
	relayBytes *prometheus.GaugeVec // peer: their row images' bytes
}

// New returns a Replicator writing into db (the local server).
func New(db *sql.DB, clock *hlc.Clock, open OpenFunc, log *zap.Logger, reg prometheus.Registerer) *Replicator {
	r := &Replicator{db: db, clock: clock, open: open, log: log, reg: reg, links: map[string]*Link{}}
	r.stuck = gaugeVec(reg, "mlproxy_link_stuck",
		"1 while a link has made no progress at one position for apply.stuck_after although it was offered changes or kept failing (see mlproxy status).")
	r.reseed = gaugeVec(reg, "mlproxy_link_needs_reseed",
		"1 while the peer can no longer resume the link from its checkpoint (its binlog was purged past it, or it lacks the GTID): the region needs `mlproxy region reseed` (see mlproxy status).")
	r.relayTxns = gaugeVec(reg, "mlproxy_relay_txns",
		"Transactions (or pieces of large ones) waiting in the relay between a link's tailer and its applier.")
	r.relayBytes = gaugeVec(reg, "mlproxy_relay_bytes",
		"Bytes of row images waiting in the relay between a link's tailer and its applier (bounded by apply.relay_bytes).")
	return r
}

// gaugeVec registers a gauge per peer with reg (nil: unregistered), or
// returns the one already registered under name.
func gaugeVec(reg prometheus.Registerer, name, help string) *prometheus.GaugeVec {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: name, Help: help}, []string{"peer"})
	if reg == nil {
		return g
	}
	if err := reg.Register(g); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			return are.ExistingCollector.(*prometheus.GaugeVec)
		}
	}
	return g
}

// Run starts the links of cfg and blocks until ctx ends and every link has
// stopped (an applier batch in flight rolls back; its checkpoint was not
// committed). Their appliers commit only under epoch (0: unfenced; see
// Leader). Run may be called again once it returned.
func (r *Replicator) Run(ctx context.Context, cfg *config.Config, epoch uint64) {
	r.mu.Lock()
	r.ctx, r.epoch = ctx, epoch
	r.mu.Unlock()
	r.Update(cfg)
	<-ctx.Done()
	r.wg.Wait()
	// Stopped: a later Run (this instance taking the replicator over
	// again) starts every link afresh.
	r.mu.Lock()
	clear(r.links)
	r.mu.Unlock()
}

// Update makes the running links match cfg: it stops links to peers cfg
// no longer pulls from, starts new ones, and restarts those whose peer
// settings or whose table rules changed. It returns what it did, one line
// per link, for the log. Before Run it does nothing.
func (r *Replicator) Update(cfg *config.Config) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.ctx == nil || r.ctx.Err() != nil {
		return nil
	}
	want := map[string]config.Peer{}
	for _, p := range cfg.Sources() {
		want[p.Name] = p
	}
	var did []string
	for name, l := range r.links {
		p, ok := want[name]
		switch {
		case !ok:
			l.stop()
			delete(r.links, name)
			did = append(did, "stopped the link from "+name+" (no longer a source)")
		case !l.sameAs(p, cfg):
			l.stop()
			delete(r.links, name)
			did = append(did, "restarting the link from "+name+" (its settings or the table rules changed)")
		}
	}
	tables := applier.NewTables(r.db, cfg.Tables, cfg.RegionIDs())
	for _, p := range cfg.Sources() {
		if _, ok := r.links[p.Name]; ok {
			continue
		}
		l := newLink(r, cfg, p, tables)
		r.links[p.Name] = l
		lctx, cancel := context.WithCancel(r.ctx)
		l.cancel = cancel
		r.wg.Add(2)
		go func() { defer r.wg.Done(); defer close(l.done); l.run(lctx) }()
		go func() { defer r.wg.Done(); defer close(l.watched); l.watch(lctx, cfg.Apply.StuckAfter) }()
		did = append(did, "started the link from "+p.Name)
	}
	return did
}

// Status is every link's state, by peer id.
func (r *Replicator) Status() []LinkStatus {
	r.mu.Lock()
	links := make([]*Link, 0, len(r.links))
	for _, l := range r.links {
		links = append(links, l)
	}
	r.mu.Unlock()
	out := make([]LinkStatus, 0, len(links))
	for _, l := range links {
		out = append(out, l.Status())
	}
	slices.SortFunc(out, func(a, b LinkStatus) int { return int(a.PeerID) - int(b.PeerID) })
	return out
}

// LinkStatus is one peer link as /status reports it.
type LinkStatus struct {
	Peer      string `json:"peer"`
	PeerID    uint16 `json:"peer_id"`
	State     string `json:"state"`
	LastError string `json:"last_error,omitempty"`
	// Breaker is the state of the tailer's circuit breaker toward the
	// peer: closed, open (probing at most every ~0.5 s) or half-open.
	Breaker string `json:"breaker"`
	// Held names the table of a change the applier holds back: its stamp
	// is HeldAheadMs further ahead of local time than clock.max_offset.
	Held        string `json:"held,omitempty"`
	HeldAheadMs int64  `json:"held_ahead_ms,omitempty"`
	// Stopped is the change the link is stopped at (on_constraint: stop):
	// table, key hash, source transaction, error.
	Stopped *applier.Stop `json:"stopped,omitempty"`
	// TableStops are tables stopped alone at such a change: their changes
	// from the peer wait, the peer's other tables go on.
	TableStops []applier.Stop `json:"table_stops,omitempty"`
	GTID       string         `json:"gtid"`
	File       string         `json:"file"`
	Pos        uint32         `json:"pos"`
	SourceTime time.Time      `json:"source_time"`
	Txns       uint64         `json:"txns"`
	Conflicts  uint64         `json:"conflicts"`
}

// Link replicates one peer into the local server.
type Link struct {
	r       *Replicator
	peer    config.Peer
	rules   []config.TableRule // the table rules it was built with
	topo    config.Topology
	tailer  *binlog.Tailer
	applier *applier.Applier
	apply   config.Apply // the settings a link is built with (linkApply)
	log     *zap.Logger
	cancel  context.CancelFunc
	done    chan struct{} // closed when run returns
	watched chan struct{} // closed when watch returns

	mu      sync.Mutex
	state   string // starting, running, retrying, stopped
	lastErr error
	// stuckSince, when set, is since when the link has made no progress
	// at stuckAt although it had work or kept failing (see watch).
	stuckSince time.Time
	stuckAt    string
	restarts   uint64 // failed runs of the link (see watch)
}

// relayTxns bounds the relay between tailer and applier by count, beside
// apply.relay_bytes; a transaction larger than relay_bytes / relayTxns
// (at least 64 KiB) is streamed in pieces of that size.
const relayTxns = 1024

func newLink(r *Replicator, cfg *config.Config, p config.Peer, tables applier.TableSource) *Link {
	hub := uint16(0)
	if id, ok := cfg.RegionIDs()[cfg.Topology.Hub]; ok {
		hub = id
	}
	piece := cfg.Apply.RelayBytes / relayTxns
	if piece < 64<<10 {
		piece = 64 << 10
	}
	return &Link{
		r:       r,
		apply:   linkApply(cfg.Apply),
		peer:    p,
		rules:   cfg.Tables,
		topo:    cfg.Topology,
		log:     r.log.With(zap.String("peer", p.Name)),
		done:    make(chan struct{}),
		watched: make(chan struct{}),
		tailer: binlog.New(binlog.Config{
			Peer:        p,
			Self:        cfg.Region.ID,
			Topology:    cfg.Topology.Mode,
			Hub:         hub,
			MaxTxnBytes: piece,
		}, r.log.Named("tailer"), r.reg), // tailer and applier add the peer field
		applier: applier.New(applier.Config{
			Self:      cfg.Region.ID,
			Region:    cfg.Region.Name,
			Tracer:    r.Tracer,
			Peer:      p,
			RegionIDs: cfg.RegionIDs(),
			BatchTxns: cfg.Apply.BatchTxns,
			Workers:   cfg.Apply.Workers,
			Forwards:  cfg.Forwards(),
			Epoch:     r.epoch,
		}, r.db, tables, r.clock, r.log.Named("applier"), r.reg),
		state: "starting",
	}
}

// sameAs reports whether the link, built from its own config, would be
// built the same from cfg for peer p (then a reload leaves it running).
func (l *Link) sameAs(p config.Peer, cfg *config.Config) bool {
	a, b := l.peer, p
	a.Line, b.Line = 0, 0
	if !reflect.DeepEqual(a, b) || l.topo != cfg.Topology || l.apply != linkApply(cfg.Apply) {
		return false
	}
	return reflect.DeepEqual(stripLines(l.rules), stripLines(cfg.Tables))
}

// linkApply is the part of apply a link is built with: a reload that
// changes it restarts the link (from its checkpoint). The tombstone
// collector and conflict retention read theirs at every round.
func linkApply(a config.Apply) config.Apply {
	return config.Apply{BatchTxns: a.BatchTxns, RelayBytes: a.RelayBytes, Workers: a.Workers, StuckAfter: a.StuckAfter}
}

func stripLines(rs []config.TableRule) []config.TableRule {
	out := make([]config.TableRule, len(rs))
	for i, r := range rs {
		r.Line = 0
		out[i] = r
	}
	return out
}

// stop ends the link and waits for it, removing its tailer's series.
func (l *Link) stop() {
	l.cancel()
	<-l.done
	<-l.watched // it sets the stuck gauge: done before the series go
	l.tailer.Unregister()
	for _, g := range []*prometheus.GaugeVec{l.r.stuck, l.r.relayTxns, l.r.relayBytes} {
		g.DeleteLabelValues(l.peer.Name)
	}
}

func (l *Link) lastErrIs(targets ...error) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, t := range targets {
		if errors.Is(l.lastErr, t) {
			return true
		}
	}
	return false
}

func (l *Link) set(state string, err error) {
	l.mu.Lock()
	l.state, l.lastErr = state, err
	l.mu.Unlock()
	lost := 0.0
	if errors.Is(err, binlog.ErrPositionLost) {
		lost = 1
	}
	l.r.reseed.WithLabelValues(l.peer.Name).Set(lost)
}

// Status is the link's state for /status.
func (l *Link) Status() LinkStatus {
	l.mu.Lock()
	s := LinkStatus{Peer: l.peer.Name, PeerID: l.peer.ID, State: l.state}
	if l.lastErr != nil {
		s.LastError = redact.Error(l.lastErr)
	}
	l.mu.Unlock()
	as := l.applier.Status()
	ts := l.tailer.Status()
	s.Breaker = ts.Breaker
	if s.State == "running" && !ts.Connected {
		s.State = "connecting"
		if ts.LastError != nil {
			s.LastError = redact.Error(ts.LastError)
		}
	}
	if s.State == "retrying" && l.lastErrIs(binlog.ErrPositionLost) {
		// The peer purged past the checkpoint: retrying cannot help.
		s.State = "needs_reseed"
		s.LastError += fmt.Sprintf("; run `mlproxy region reseed --from %s` in this region (or restore the peer's binlogs)", l.peer.Name)
	}
	if s.State == "retrying" && l.lastErrIs(applier.ErrUnknownColumn, applier.ErrNotPrepared, schema.ErrNoTable) {
		// Schema drift: the peer sends rows for a table or column this
		// region does not have (yet); the link retries until the DDL lands.
		s.State = "waiting_for_ddl"
	}
	l.mu.Lock()
	stuckSince, stuckAt := l.stuckSince, l.stuckAt
	l.mu.Unlock()
	if !stuckSince.IsZero() && as.Stopped == nil && as.Held == "" {
		s.State = "stuck"
		s.LastError = fmt.Sprintf("no progress at %s for %s: %s", stuckAt, time.Since(stuckSince).Round(time.Second), s.LastError)
	}
	if as.Held != "" {
		s.State, s.Held, s.HeldAheadMs = "holding", as.Held, as.HeldAhead.Milliseconds()
		s.LastError = fmt.Sprintf("holding a change to %s stamped %s further ahead of local time than clock.max_offset: the peer's clock runs fast (check NTP)",
			as.Held, as.HeldAhead.Round(time.Millisecond))
	}
	if as.Stopped != nil {
		s.State, s.Stopped = "stopped", as.Stopped
		s.LastError = fmt.Sprintf("stopped at a change to %s (key hash %s, gtid %s) that a key the conflict rule cannot place refuses: %s; fix the local row and `mlproxy link retry %s`, or `mlproxy link skip %s`",
			as.Stopped.Table, as.Stopped.KeyHash, as.Stopped.GTID, as.Stopped.Error, l.peer.Name, l.peer.Name)
	}
	if len(as.TableStops) > 0 && as.Stopped == nil {
		s.TableStops = as.TableStops
		var refused, ddl []string
		for _, ts := range as.TableStops {
			if ts.Kind == applier.StopDDL {
				ddl = append(ddl, fmt.Sprintf("%s (gtid %s: %s)", ts.Table, ts.GTID, ts.Error))
			} else {
				refused = append(refused, fmt.Sprintf("%s (key hash %s, gtid %s: %s)", ts.Table, ts.KeyHash, ts.GTID, ts.Error))
			}
		}
		var msgs []string
		if len(refused) > 0 {
			msgs = append(msgs, fmt.Sprintf("tables stopped at a refused change, their changes held while the peer's other tables go on: %s; fix the local row and `mlproxy link retry %s --table T`, or `mlproxy link skip %s --table T`",
				strings.Join(refused, "; "), l.peer.Name, l.peer.Name))
		}
		if len(ddl) > 0 {
			msgs = append(msgs, fmt.Sprintf("tables waiting for DDL, their changes held while the peer's other tables go on: %s; run the DDL here (`mlproxy schema ddl`, then `mlproxy schema apply`)",
				strings.Join(ddl, "; ")))
		}
		if s.State == "running" {
			s.State = "tables_stopped"
			if len(refused) == 0 {
				s.State = "waiting_for_ddl"
			}
		}
		if s.LastError == "" {
			s.LastError = strings.Join(msgs, " | ")
		}
	}
	s.GTID, s.File, s.Pos = as.Pos.GTID, as.Pos.File, as.Pos.Pos
	s.SourceTime, s.Txns, s.Conflicts = as.SourceTime, as.Txns, as.Conflicts
	return s
}

// watch reports the link stuck when its applied position has not moved
// for after although it kept failing or was offered changes (the link
// restarting, the tailer not connecting, the applier retrying a batch,
// stopped at a refused row, or re-streaming a large transaction it cannot
// commit): a link that cannot get past a change never retries silently
// forever. It logs once (peer, table when known, position, error), sets
// mlproxy_link_stuck and the status; progress clears all three. An idle
// link (nothing offered, nothing failing) is never stuck.
func (l *Link) watch(ctx context.Context, after time.Duration) {
	every := max(after/10, 200*time.Millisecond)
	t := time.NewTicker(every)
	defer t.Stop()
	p := progress{after: after}
	l.r.stuck.WithLabelValues(l.peer.Name).Set(0) // exported from the start, for alerts
	for {
		select {
		case <-ctx.Done():
			l.r.stuck.WithLabelValues(l.peer.Name).Set(0)
			return
		case <-t.C:
		}
		as := l.applier.Status()
		pos := as.Pos
		ts := l.tailer.Status()
		l.mu.Lock()
		failing := l.lastErr != nil || ts.LastError != nil || as.RetryErr != nil || as.Stopped != nil
		l.mu.Unlock()
		l.mu.Lock()
		restarts := l.restarts
		l.mu.Unlock()
		switch p.observe(time.Now(), pos, ts.Sent, restarts, failing) {
		case recovered:
			l.mu.Lock()
			l.stuckSince, l.stuckAt = time.Time{}, ""
			l.mu.Unlock()
			l.r.stuck.WithLabelValues(l.peer.Name).Set(0)
			l.log.Info("link progressing again", zap.String("gtid", pos.GTID))
		case stuck:
			at := fmt.Sprintf("gtid %s (%s:%d)", pos.GTID, pos.File, pos.Pos)
			l.mu.Lock()
			l.stuckSince, l.stuckAt = p.since, at
			lastErr := l.lastErr
			l.mu.Unlock()
			if lastErr == nil {
				lastErr = as.RetryErr
			}
			if lastErr == nil {
				lastErr = ts.LastError
			}
			fields := []zap.Field{zap.String("at", at), zap.Duration("for", time.Since(p.since).Round(time.Second)),
				redact.Err(lastErr)}
			if as.Stopped != nil {
				fields = append(fields, zap.String("table", as.Stopped.Table))
			}
			l.r.stuck.WithLabelValues(l.peer.Name).Set(1)
			l.log.Error("link stuck: no progress for apply.stuck_after", fields...)
		}
	}
}

// progress decides from samples of a link whether it is stuck: its
// applied position unchanged for after since it first failed or
// restarted there, without the link going idle in between. A link that
// fails, restarts and streams the same large transaction again is healthy
// at most samples, between its attempts: the failure is remembered while
// it is still being offered changes (the tailer's sends grow). A link
// that is idle (not failing, nothing offered, no restart since the sample
// before) forgets it; one that streams a large transaction for longer
// than after without failing is not stuck.
type progress struct {
	after    time.Duration
	pos      binlog.Position
	since    time.Time // when the evidence began, or the last sample without any (zero: no sample yet)
	sent     uint64    // the tailer's sends at the last sample
	restarts uint64    // the link's restarts at the last sample
	evidence bool      // failed or restarted since pos last moved or the link was idle
	reported bool
}

type verdict int

const (
	nothing verdict = iota
	stuck
	recovered
)

// observe takes one sample: the applied position, the tailer's sends and
// the link's restarts (counters), and whether it is failing now.
func (p *progress) observe(now time.Time, pos binlog.Position, sent, restarts uint64, failing bool) verdict {
	offered, restarted := sent != p.sent, restarts != p.restarts
	p.sent, p.restarts = sent, restarts
	trouble := failing || restarted
	if p.since.IsZero() || pos != p.pos || (!trouble && !offered) {
		// The first sample, progress, or idle: the evidence is gone.
		wasReported := p.reported
		p.pos, p.since, p.evidence, p.reported = pos, now, trouble, false
		if wasReported {
			return recovered
		}
		return nothing
	}
	if !p.evidence {
		if !trouble {
			p.since = now // busy without trouble: a large transaction streaming
			return nothing
		}
		p.evidence, p.since = true, now
	}
	if p.reported || now.Sub(p.since) < p.after {
		return nothing
	}
	p.reported = true
	return stuck
}

// run keeps the link going until ctx ends. A failure (a fatal tailer error
// such as a peer not in ROW format, or an applier error retries cannot
// fix) is logged with the peer's name and retried with backoff and jitter,
// from the committed checkpoint.
func (l *Link) run(ctx context.Context) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = time.Second
	bo.MaxInterval = 15 * time.Second // a link waiting for DDL resumes within seconds of it
	for {
		started := time.Now()
		err := l.once(ctx)
		if ctx.Err() != nil {
			l.set("stopped", nil)
			return
		}
		if time.Since(started) > 5*time.Minute {
			bo.Reset()
		}
		wait := bo.NextBackOff()
		l.set("retrying", err)
		l.mu.Lock()
		l.restarts++
		l.mu.Unlock()
		l.log.Warn("replication link down; retrying from the checkpoint", redact.Err(err), zap.Duration("retry_in", wait))
		select {
		case <-ctx.Done():
			l.set("stopped", nil)
			return
		case <-time.After(wait):
		}
	}
}

func (l *Link) once(ctx context.Context) error {
	cp, err := l.applier.Checkpoint(ctx)
	if err != nil {
		return err
	}
	// The clock persists stamps taken in by Update a moment later; after a
	// crash, the checkpoint still holds the highest stamp applied.
	if cp.HLC > 0 {
		_ = l.r.clock.Update(cp.HLC)
	}
	from := cp.Resume()
	if !cp.Found {
		if from, err = l.startPosition(ctx); err != nil {
			return err
		}
	}
	l.set("running", nil)
	rl := newRelay(relayTxns, l.apply.RelayBytes,
		l.r.relayTxns.WithLabelValues(l.peer.Name), l.r.relayBytes.WithLabelValues(l.peer.Name))
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(rl.in)
		if err := l.tailer.Run(gctx, from, rl.in); err != nil {
			return fmt.Errorf("tail peer %s: %w", l.peer.Name, err)
		}
		return nil
	})
	g.Go(func() error {
		rl.run(gctx)
		return nil
	})
	g.Go(func() error {
		if err := l.applier.Run(gctx, rl.out); err != nil {
			return fmt.Errorf("apply from peer %s: %w", l.peer.Name, err)
		}
		return nil
	})
	return g.Wait()
}

// startPosition is where a link starts when this region never applied
// anything from the peer: the peer's binlog position recorded by `schema
// apply` there, before its first stamped write could happen. Starting at
// the peer's current position instead would lose writes made between the
// peer's start and this region's first connection.
//
// A peer that cannot be reached is waited for at the tailer's probe cadence
// (at most about a second between tries; warned on the 1st, 2nd, 4th, ...
// attempt), not the link's long backoff: a
// region down since before its first contact is tailed within a second or
// two of coming back. A peer that answers with an error (no mlr schema) is
// reported at once.
func (l *Link) startPosition(ctx context.Context) (binlog.Checkpoint, error) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = 100 * time.Millisecond
	bo.MaxInterval = time.Second
	for attempt := 1; ; attempt++ {
		cp, err := l.readStartPosition(ctx)
		var merr *mysql.MySQLError
		if err == nil || errors.As(err, &merr) || ctx.Err() != nil {
			return cp, err
		}
		l.set("connecting", err)
		if attempt&(attempt-1) == 0 { // the 1st, 2nd, 4th, 8th, ... attempt
			l.log.Warn("peer unreachable before its first contact; retrying about every second", redact.Err(err), zap.Int("attempt", attempt))
		}
		select {
		case <-ctx.Done():
			return cp, err
		case <-time.After(bo.NextBackOff()):
		}
	}
}

func (l *Link) readStartPosition(ctx context.Context) (binlog.Checkpoint, error) {
	db, err := l.r.open(ctx, "peer "+l.peer.Name, l.peer.Server)
	if err != nil {
		return binlog.Checkpoint{}, err
	}
	defer db.Close()
	var cp binlog.Checkpoint
	err = db.QueryRowContext(ctx, "SELECT gtid, file, pos FROM mlr.binlog_start WHERE id = 1").Scan(&cp.GTID, &cp.File, &cp.Pos)
	if err != nil {
		return cp, fmt.Errorf("peer %s: reading where its replication starts (mlr.binlog_start): %w; run `mlproxy schema apply` in region %s first", l.peer.Name, err, l.peer.Name)
	}
	l.log.Info("first start: replicating from where the peer's schema apply began", zap.String("gtid", cp.GTID), zap.String("file", cp.File), zap.Uint32("pos", cp.Pos))
	return cp, nil
}
