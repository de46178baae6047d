package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"golang.org/x/sync/errgroup"

	"github.com/mlproxy/mlproxy/applier"
	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/hlc"
	"github.com/mlproxy/mlproxy/proxy"
	"github.com/mlproxy/mlproxy/redact"
	"github.com/mlproxy/mlproxy/schema"
)

func runCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the region: SQL proxy, and a binlog tailer and applier per peer",
		RunE: func(cmd *cobra.Command, _ []string) error {
			cfg, err := config.Load(path)
			if err != nil {
				return err
			}
			log, err := newLogger(cfg)
			if err != nil {
				return err
			}
			defer log.Sync() //nolint:errcheck // stderr
			err = runRegion(cmd.Context(), cfg, log)
			if err != nil {
				log.Error("mlproxy stopped with an error", redact.Err(err))
			}
			return err
		},
	}
	configFlag(cmd, &path)
	return cmd
}

// region is one `mlproxy run` process: it owns the local pool, the clock,
// the proxy and one link per source peer.
type region struct {
	cfg   *config.Config
	log   *zap.Logger
	reg   *prometheus.Registry
	db    *sql.DB
	clock *hlc.Clock
	proxy *proxy.Server
	links []*link
	guard *guard
}

// runRegion runs until ctx ends (SIGTERM), then shuts down in this order:
// the proxy stops accepting and drains its clients; the links stop (the
// tailer first; an applier batch in flight rolls back, its checkpoint
// uncommitted); the clock stops (its saved reservation already covers
// every stamp it issued); the metrics server and the local pool close. A
// clean stop returns nil.
func runRegion(ctx context.Context, cfg *config.Config, log *zap.Logger) error {
	r := &region{cfg: cfg, log: log, reg: prometheus.NewRegistry(), guard: newGuard()}
	r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, w := range cfg.Plaintext() {
		log.Warn("link not encrypted or not verified: "+w, zap.String("config", cfg.Path))
	}

	db, err := waitLocal(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer db.Close()
	r.db = db

	r.clock = hlc.NewClock(hlc.Options{
		MaxOffset:  cfg.Clock.MaxOffset,
		Store:      hlc.NewSQLStore(db),
		Registerer: r.reg,
		Logger:     log.Named("hlc"),
	})
	if err := r.clock.Restore(ctx); err != nil {
		return fmt.Errorf("%w (did `mlproxy schema apply -c %s` run?)", err, cfg.Path)
	}

	clientTLS, err := cfg.Proxy.TLS.Config()
	if err != nil {
		return err
	}
	backendTLS, err := cfg.Local.TLSConfig()
	if err != nil {
		return err
	}
	r.proxy, err = proxy.New(proxy.Config{
		Listen:          cfg.Proxy.Listen,
		Backend:         cfg.Local,
		ClientTLS:       clientTLS,
		BackendTLS:      backendTLS,
		RegionID:        cfg.Region.ID,
		MaxConnections:  cfg.Proxy.MaxConnections,
		CacheSize:       cfg.Proxy.StatementCacheSize,
		ShutdownTimeout: cfg.Proxy.ShutdownTimeout,
		AllowDDL:        cfg.Proxy.AllowDDL,
	}, r.clock, replicatedTables{cfg, r.guard}, log.Named("proxy"), r.reg)
	if err != nil {
		return err
	}
	if err := r.proxy.Listen(); err != nil {
		return fmt.Errorf("proxy.listen %s: %w", cfg.Proxy.Listen, err)
	}

	tables := applier.NewTables(db, cfg.Tables, cfg.RegionIDs())
	for _, p := range cfg.Sources() {
		r.links = append(r.links, newLink(r, p, tables))
	}

	var srv *http.Server
	if cfg.Metrics.Listen != "" {
		if srv, err = r.metricsServer(); err != nil {
			return err
		}
	}
	log.Info("mlproxy started", zap.String("version", version), zap.Stringer("proxy", r.proxy.Addr()),
		zap.Int("peers", len(r.links)), zap.String("topology", cfg.Topology.Mode))

	// Each part stops when ctx ends; none of them ends the others by failing
	// (a broken peer link must never stop local writes).
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := r.clock.Run(ctx); err != nil && !errors.Is(err, context.Canceled) {
			errs <- fmt.Errorf("hlc: %w", err)
		}
	}()
	for _, l := range r.links {
		wg.Add(1)
		go func(l *link) { defer wg.Done(); l.run(ctx) }(l)
	}
	wg.Add(1)
	go func() { defer wg.Done(); r.gcLoop(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); r.conflictRetention(ctx) }()
	r.reg.MustRegister(r.guard.damaged)
	wg.Add(1)
	go func() { defer wg.Done(); r.guardLoop(ctx) }()

	perr := r.proxy.Run(ctx) // returns once ctx ends and clients drained
	wg.Wait()
	if srv != nil {
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_ = srv.Shutdown(sctx)
		cancel()
	}
	close(errs)
	for err := range errs {
		perr = errors.Join(perr, err)
	}
	if perr != nil && !errors.Is(perr, context.Canceled) {
		return perr
	}
	log.Info("mlproxy stopped cleanly")
	return nil
}

// waitLocal opens the local server, retrying for up to two minutes: at boot
// the database may come up after mlproxy.
func waitLocal(ctx context.Context, cfg *config.Config, log *zap.Logger) (*sql.DB, error) {
	op := func() (*sql.DB, error) {
		db, err := openServer(ctx, "local", cfg.Local)
		if err != nil {
			log.Warn("local server not reachable; retrying", zap.String("addr", cfg.Local.Addr), zap.Error(err))
		}
		return db, err
	}
	return backoff.Retry(ctx, op, backoff.WithBackOff(backoff.NewExponentialBackOff()), backoff.WithMaxElapsedTime(2*time.Minute))
}

// replicatedTables answers the proxy's questions: which tables replicate
// (the config's rules) and which must not be written now (the guard).
type replicatedTables struct {
	cfg *config.Config
	g   *guard
}

func (t replicatedTables) Replicated(schema, table string) bool {
	_, ok := t.cfg.TableRule(schema, table)
	return ok
}

func (t replicatedTables) Blocked(schema, table string) string { return t.g.blocked(schema, table) }
func (t replicatedTables) AnyBlocked() string                  { return t.g.anyBlocked() }

var _ proxy.Guard = replicatedTables{}

// guard holds the replicated tables whose replication metadata was found
// damaged (guardLoop), keyed by lower-case "schema.table".
type guard struct {
	mu      sync.Mutex
	tables  map[string]string // key -> what is missing
	damaged prometheus.Gauge
}

func newGuard() *guard {
	return &guard{tables: map[string]string{}, damaged: prometheus.NewGauge(prometheus.GaugeOpts{
		Name: "mlproxy_schema_damaged_tables",
		Help: "Replicated tables whose stamping triggers or _mlr_ columns were removed outside the proxy; writes to them are refused until `mlproxy schema apply`.",
	})}
}

func (g *guard) blocked(schema, table string) string {
	k := strings.ToLower(schema + "." + table)
	g.mu.Lock()
	defer g.mu.Unlock()
	if what, ok := g.tables[k]; ok {
		return fmt.Sprintf("writes to %s.%s are refused: %s", schema, table, what)
	}
	return ""
}

func (g *guard) anyBlocked() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	for k, what := range g.tables {
		return fmt.Sprintf("writes the proxy cannot attribute to a table (CALL, EXECUTE) are refused while %s cannot replicate: %s", k, what)
	}
	return ""
}

// guardInterval is how often guardLoop checks the replicated tables.
const guardInterval = 2 * time.Second

// guardLoop checks every guardInterval that each replicated table still
// has its stamping triggers and metadata columns (schema.Damage). DDL the
// proxy cannot see (inside a procedure or a prepared statement, or run on
// the server directly) can remove them; the table is then reported loudly
// and writes to it through the proxy are refused until `mlproxy schema
// apply` repairs it. The list of tables is re-read every 10 seconds, so a
// table created later under a wildcard rule, unprepared, is reported and
// refused, never silently left unreplicated.
func (r *region) guardLoop(ctx context.Context) {
	var tables []*schema.Table
	var read time.Time
	t := time.NewTicker(guardInterval)
	defer t.Stop()
	for {
		if tables == nil || time.Since(read) > 10*time.Second {
			if ts, err := schema.Inspect(ctx, r.db, r.cfg.Tables); err == nil {
				tables, read = ts, time.Now()
			} else if ctx.Err() == nil {
				r.log.Warn("replication metadata check: reading the replicated tables failed", redact.Err(err))
			}
		}
		if damage, err := schema.Damage(ctx, r.db, tables); err == nil {
			r.guard.update(damage, r.log)
		} else if ctx.Err() == nil {
			r.log.Warn("replication metadata check failed", redact.Err(err))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// update replaces the damaged set, logging each table that breaks or is
// repaired.
func (g *guard) update(damage map[string]string, log *zap.Logger) {
	next := make(map[string]string, len(damage))
	for k, what := range damage {
		next[strings.ToLower(k)] = what
	}
	g.mu.Lock()
	prev := g.tables
	g.tables = next
	g.mu.Unlock()
	for k, what := range next {
		if _, was := prev[k]; !was {
			log.Error("replicated table cannot replicate: writes to it through the proxy are refused",
				zap.String("table", k), zap.String("why", what))
		}
	}
	for k := range prev {
		if _, still := next[k]; !still {
			log.Info("replication metadata repaired: writes to the table are accepted again", zap.String("table", k))
		}
	}
	g.damaged.Set(float64(len(next)))
}

func (r *region) metricsServer() (*http.Server, error) {
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(r.reg, promhttp.HandlerOpts{Registry: r.reg}))
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, req *http.Request) {
		ctx, cancel := context.WithTimeout(req.Context(), 2*time.Second)
		defer cancel()
		if err := r.db.PingContext(ctx); err != nil {
			http.Error(w, "local server: "+redact.Error(err), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r.status())
	})
	ln, err := net.Listen("tcp", r.cfg.Metrics.Listen)
	if err != nil {
		return nil, fmt.Errorf("metrics.listen %s: %w", r.cfg.Metrics.Listen, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, nil
}

// linkStatus is one peer link as /status reports it.
type linkStatus struct {
	Peer      string `json:"peer"`
	PeerID    uint16 `json:"peer_id"`
	State     string `json:"state"`
	LastError string `json:"last_error,omitempty"`
	// Held names the table of a change the applier holds back: its stamp
	// is HeldAheadMs further ahead of local time than clock.max_offset.
	Held        string `json:"held,omitempty"`
	HeldAheadMs int64  `json:"held_ahead_ms,omitempty"`
	// Stopped is the change the link is stopped at (on_constraint: stop):
	// table, key hash, source transaction, error.
	Stopped    *applier.Stop `json:"stopped,omitempty"`
	GTID       string        `json:"gtid"`
	File       string        `json:"file"`
	Pos        uint32        `json:"pos"`
	SourceTime time.Time     `json:"source_time"`
	Txns       uint64        `json:"txns"`
	Conflicts  uint64        `json:"conflicts"`
}

func (r *region) status() []linkStatus {
	out := make([]linkStatus, 0, len(r.links))
	for _, l := range r.links {
		out = append(out, l.status())
	}
	return out
}

// link replicates one source peer into the local server: a tailer and an
// applier joined by a bounded relay, restarted with backoff when they fail.
type link struct {
	r       *region
	peer    config.Peer
	tailer  *binlog.Tailer
	applier *applier.Applier
	log     *zap.Logger

	mu      sync.Mutex
	state   string // starting, running, retrying, stopped
	lastErr error
}

// relayTxns bounds the relay between tailer and applier by count; with the
// tailer's piece size (relay_bytes / relayTxns) it is bounded by bytes too.
const relayTxns = 1024

func newLink(r *region, p config.Peer, tables applier.TableSource) *link {
	cfg := r.cfg
	hub := uint16(0)
	if id, ok := cfg.RegionIDs()[cfg.Topology.Hub]; ok {
		hub = id
	}
	piece := cfg.Apply.RelayBytes / relayTxns
	if piece < 64<<10 {
		piece = 64 << 10
	}
	log := r.log.With(zap.String("peer", p.Name))
	return &link{
		r:    r,
		peer: p,
		log:  log,
		tailer: binlog.New(binlog.Config{
			Peer:        p,
			Self:        cfg.Region.ID,
			Topology:    cfg.Topology.Mode,
			Hub:         hub,
			MaxTxnBytes: piece,
		}, r.log.Named("tailer"), r.reg), // tailer and applier add the peer field
		applier: applier.New(applier.Config{
			Self:      cfg.Region.ID,
			Peer:      p,
			RegionIDs: cfg.RegionIDs(),
			BatchTxns: cfg.Apply.BatchTxns,
			Workers:   cfg.Apply.Workers,
		}, r.db, tables, r.clock, r.log.Named("applier"), r.reg),
		state: "starting",
	}
}

func (l *link) set(state string, err error) {
	l.mu.Lock()
	l.state, l.lastErr = state, err
	l.mu.Unlock()
}

func (l *link) status() linkStatus {
	l.mu.Lock()
	s := linkStatus{Peer: l.peer.Name, PeerID: l.peer.ID, State: l.state}
	if l.lastErr != nil {
		s.LastError = redact.Error(l.lastErr)
	}
	l.mu.Unlock()
	as := l.applier.Status()
	ts := l.tailer.Status()
	if s.State == "running" && !ts.Connected {
		s.State = "connecting"
		if ts.LastError != nil {
			s.LastError = redact.Error(ts.LastError)
		}
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
	s.GTID, s.File, s.Pos = as.Pos.GTID, as.Pos.File, as.Pos.Pos
	s.SourceTime, s.Txns, s.Conflicts = as.SourceTime, as.Txns, as.Conflicts
	return s
}

// run keeps the link going until ctx ends. A failure (a fatal tailer error
// such as a peer not in ROW format, or an applier error retries cannot
// fix) is logged with the peer's name and retried with backoff and jitter,
// from the committed checkpoint.
func (l *link) run(ctx context.Context) {
	bo := backoff.NewExponentialBackOff()
	bo.InitialInterval = time.Second
	bo.MaxInterval = time.Minute
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
		l.log.Warn("replication link down; retrying from the checkpoint", redact.Err(err), zap.Duration("retry_in", wait))
		select {
		case <-ctx.Done():
			l.set("stopped", nil)
			return
		case <-time.After(wait):
		}
	}
}

func (l *link) once(ctx context.Context) error {
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
	relay := make(chan *binlog.Txn, relayTxns)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(relay)
		if err := l.tailer.Run(gctx, from, relay); err != nil {
			return fmt.Errorf("tail peer %s: %w", l.peer.Name, err)
		}
		return nil
	})
	g.Go(func() error {
		if err := l.applier.Run(gctx, relay); err != nil {
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
func (l *link) startPosition(ctx context.Context) (binlog.Checkpoint, error) {
	db, err := openServer(ctx, "peer "+l.peer.Name, l.peer.Server)
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

// gcSlack covers what a stamp may trail its commit by (a long transaction,
// a forwarding hop, clock offset between a proxy and its server); see
// applier.GCHorizon.
const gcSlack = 5 * time.Minute

// conflictRetention deletes, every hour and at start, the settled
// conflicts (decided by their rule, or resolved) older than
// apply.conflict_retention, a thousand rows per statement. Pending
// conflicts are kept until an operator resolves them.
func (r *region) conflictRetention(ctx context.Context) {
	pruned := prometheus.NewCounter(prometheus.CounterOpts{
		Name: "mlproxy_conflicts_pruned_total",
		Help: "Settled conflicts deleted from mlr.conflicts after apply.conflict_retention.",
	})
	r.reg.MustRegister(pruned)
	secs := int64(r.cfg.Apply.ConflictRetention / time.Second)
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		for {
			res, err := r.db.ExecContext(ctx, "DELETE FROM mlr.conflicts WHERE detected_at < NOW(6) - INTERVAL ? SECOND "+
				"AND (resolved_at IS NOT NULL OR outcome <> 'pending') ORDER BY id LIMIT 1000", secs)
			if err != nil {
				if ctx.Err() == nil {
					r.log.Warn("conflict log retention failed; retrying in an hour", redact.Err(err))
				}
				break
			}
			n, _ := res.RowsAffected()
			pruned.Add(float64(n))
			if n < 1000 {
				break
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

// gcLoop drops tombstones every peer has applied past, every
// apply.tombstone_gc_interval (applier.RunTombstoneGC), in the replicated
// tables as the server has them at each round: a table created later, or
// a database that was empty at start, is collected without a restart.
func (r *region) gcLoop(ctx context.Context) {
	var peers []uint16
	for _, p := range r.cfg.Sources() {
		peers = append(peers, p.ID)
	}
	tables := func(ctx context.Context) ([]*schema.Table, error) { return schema.Inspect(ctx, r.db, r.cfg.Tables) }
	_ = applier.RunTombstoneGC(ctx, r.db, tables, peers, gcSlack, r.cfg.Apply.TombstoneGCInterval, r.log.Named("gc"))
}
