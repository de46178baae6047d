package main

import (
	"context"
	"database/sql"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/applier"
	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/causal"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/hlc"
	"github.com/mlproxy/mlproxy/home"
	"github.com/mlproxy/mlproxy/proxy"
	"github.com/mlproxy/mlproxy/redact"
	"github.com/mlproxy/mlproxy/replicator"
	"github.com/mlproxy/mlproxy/schema"
	"github.com/mlproxy/mlproxy/skew"
	"github.com/mlproxy/mlproxy/tracing"
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
			hup := make(chan os.Signal, 1)
			signal.Notify(hup, syscall.SIGHUP)
			defer signal.Stop(hup)
			reload := make(chan struct{}, 1)
			go func() {
				for range hup {
					select {
					case reload <- struct{}{}:
					default: // a reload is already pending
					}
				}
			}()
			err = runRegion(cmd.Context(), cfg, log, reload)
			if err != nil && cmd.Context().Err() != nil {
				// SIGTERM or an interrupt while starting (waiting for the
				// local server, restoring the clock) ends that wait with
				// an error: the stop was asked for, so it is a clean one.
				log.Info("mlproxy stopped during start-up", zap.String("reason", context.Cause(cmd.Context()).Error()))
				return nil
			}
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
	cfg   *config.Config // as started; current() is the latest loaded
	live  atomic.Pointer[config.Config]
	log   *zap.Logger
	reg   *prometheus.Registry
	db    *sql.DB
	clock *hlc.Clock
	proxy *proxy.Server
	rep   *replicator.Replicator
	lead  *replicator.Leader
	guard *guard
	skew  *skew.Monitor
	// homes are the home mappings of the configuration in force, built
	// once per configuration loaded.
	homes atomic.Pointer[homeSet]
	// leaders are the strong tables' leaders `mlproxy strong move` set
	// (mlr.strong_leaders, read every second), by "schema.table".
	leaders atomic.Pointer[map[string]uint16]
	// lag is every source peer's lag over the last hour, for the status
	// page (sampled while the metrics listener serves it).
	lag *lagHistory
}

// leaderLoop keeps r.leaders current while the configuration has strong
// tables. The triggers read the table themselves; the proxy's copy may
// lag by a second, and a write it lets through then is refused by the
// triggers (or by the old leader's, when forwarded there).
func (r *region) leaderLoop(ctx context.Context) {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		strong := false
		for _, tr := range r.current().Tables {
			strong = strong || tr.Consistency == config.ConsistencyStrong
		}
		if strong {
			if m, err := readLeaders(ctx, r.db); err != nil {
				if ctx.Err() == nil {
					r.log.Warn("strong tables' leaders not read; the proxy keeps the last ones (the triggers read them themselves)", zap.Error(err))
				}
			} else {
				r.leaders.Store(&m)
			}
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func readLeaders(ctx context.Context, db *sql.DB) (map[string]uint16, error) {
	rows, err := db.QueryContext(ctx, "SELECT db, tbl, leader FROM mlr.strong_leaders")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	m := map[string]uint16{}
	for rows.Next() {
		var d, t string
		var l uint16
		if err := rows.Scan(&d, &t, &l); err != nil {
			return nil, err
		}
		m[d+"."+t] = l
	}
	return m, rows.Err()
}

// homeSet is one configuration's home mappings, by table entry
// ("schema.table" as the config writes it, "*" included).
type homeSet struct {
	cfg  *config.Config
	maps map[string]*home.Map
}

// homeMaps returns the home mappings of the configuration in force.
func (r *region) homeMaps() *homeSet {
	cfg := r.current()
	if hs := r.homes.Load(); hs != nil && hs.cfg == cfg {
		return hs
	}
	hs := &homeSet{cfg: cfg, maps: map[string]*home.Map{}}
	for _, t := range cfg.Tables {
		if !t.Homed() {
			continue
		}
		h := t.Homing()
		label := t.Schema + "." + t.Table
		m, err := home.New(label, *h, cfg)
		if err != nil { // Validate checked the regions: not reached
			r.log.Error("home mapping not built; its writes are not checked by the proxy", zap.String("table", label), zap.Error(err))
			continue
		}
		hs.maps[label] = m
	}
	r.homes.Store(hs)
	return hs
}

// current is the configuration in force (the last one loaded).
func (r *region) current() *config.Config { return r.live.Load() }

// runRegion runs until ctx ends (SIGTERM), then shuts down in this order:
// the proxy stops accepting and drains its clients while the links stop
// (the tailer first; an applier batch in flight rolls back, its checkpoint
// uncommitted); only when both are done does the clock stop (its saved
// reservation covers every stamp it issued), then the metrics server and
// the local pool close. A clean stop returns nil.
func runRegion(ctx context.Context, cfg *config.Config, log *zap.Logger, reload <-chan struct{}) error {
	r := &region{cfg: cfg, log: log, reg: prometheus.NewRegistry(), guard: newGuard(), lag: newLagHistory()}
	r.live.Store(cfg)
	r.reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	for _, w := range cfg.Plaintext() {
		log.Warn("link not encrypted or not verified: "+w, zap.String("config", cfg.Path))
	}

	db, err := waitLocal(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer db.Close()
	if msg, err := halfSeeded(ctx, db); err != nil {
		return err
	} else if msg != "" {
		return errors.New(msg)
	}
	// Sized explicitly: one session per applier, plus the guard, tombstone
	// GC, conflict retention, the clock's saves, /healthz and a margin.
	db.SetMaxOpenConns(8 + 2*len(cfg.Peers))
	db.SetMaxIdleConns(8 + 2*len(cfg.Peers))
	r.db = db

	now, err := wallClock(ctx, log)
	if err != nil {
		return err
	}
	r.skew = skew.New(skew.Options{
		Now:        now,
		MaxOffset:  cfg.Clock.MaxOffset,
		Peers:      r.clockPeers,
		Open:       openServer,
		Registerer: r.reg,
		Logger:     log.Named("clock"),
	})
	r.clock = hlc.NewClock(hlc.Options{
		Now:        now,
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
	forwardTLS, err := config.Server{TLS: cfg.Proxy.Forward.TLS}.TLSConfig()
	if err != nil {
		return fmt.Errorf("proxy.forward: %w", err)
	}
	tlog := log.Named("tracing")
	tp, err := tracing.Start(cfg.Tracing, cfg.Region.Name, func(err error) {
		tlog.Warn("tracing: spans not exported", zap.String("endpoint", cfg.Tracing.Endpoint), redact.Err(err))
	})
	if err != nil {
		return err
	}
	defer shutdownTracing(tp, log)
	r.proxy, err = proxy.New(proxy.Config{
		Tracer:          tp.Tracer(tracing.ScopeProxy),
		MaxCarried:      cfg.Tracing.MaxCarriedPerSecond,
		RegionName:      cfg.Region.Name,
		Listen:          cfg.Proxy.Listen,
		Backend:         cfg.Local,
		ClientTLS:       clientTLS,
		BackendTLS:      backendTLS,
		RegionID:        cfg.Region.ID,
		MaxConnections:  cfg.Proxy.MaxConnections,
		CacheSize:       cfg.Proxy.StatementCacheSize,
		CacheBytes:      cfg.Proxy.StatementCacheBytes,
		ShutdownTimeout: cfg.Proxy.ShutdownTimeout,
		AllowDDL:        cfg.Proxy.AllowDDL,
		Fence:           r.skew,
		Causal:          causalTokens{r},
		Accounts:        accounts{r},
		ForwardTLS:      forwardTLS,
	}, r.clock, replicatedTables{r, r.guard}, log.Named("proxy"), r.reg)
	if err != nil {
		return err
	}
	if err := r.proxy.Listen(); err != nil {
		return fmt.Errorf("proxy.listen %s: %w", cfg.Proxy.Listen, err)
	}

	r.rep = replicator.New(db, r.clock, openServer, log, r.reg)
	r.rep.Tracer = tp.Tracer(tracing.ScopeApplier)
	r.lead = replicator.NewLeader(db, cfg.Region.Name, instanceName(cfg), log.Named("replicator"), r.reg)

	var srv *http.Server
	if cfg.Metrics.Listen != "" {
		if srv, err = r.metricsServer(); err != nil {
			return err
		}
	}
	b := currentBuild()
	log.Info("mlproxy started", zap.String("version", b.Version), zap.String("commit", b.Commit), zap.Stringer("proxy", r.proxy.Addr()),
		zap.Int("peers", len(cfg.Sources())), zap.String("topology", cfg.Topology.Mode))

	// Each part stops when ctx ends; none of them ends the others by failing
	// (a broken peer link must never stop local writes).
	// The clock stops last, on its own context: draining clients and
	// appliers rolling back still ask it for stamps.
	var wg sync.WaitGroup
	errs := make(chan error, 2)
	clockCtx, stopClock := context.WithCancel(context.WithoutCancel(ctx))
	defer stopClock()
	clockDone := make(chan struct{})
	go func() {
		defer close(clockDone)
		if err := r.clock.Run(clockCtx); err != nil && !errors.Is(err, context.Canceled) {
			errs <- fmt.Errorf("hlc: %w", err)
		}
	}()
	wg.Add(1)
	go func() {
		defer wg.Done()
		// Every instance of the region proxies; the one holding the
		// region's replicator lock also replicates.
		r.lead.Run(ctx, func(lctx context.Context, epoch uint64) { r.rep.Run(lctx, r.current(), epoch) })
	}()
	wg.Add(1)
	go func() { defer wg.Done(); r.reloadOnHUP(ctx, reload) }()
	wg.Add(1)
	go func() { defer wg.Done(); r.gcLoop(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); r.tracesGC(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); r.conflictRetention(ctx) }()
	r.reg.MustRegister(r.guard.damaged)
	wg.Add(1)
	go func() { defer wg.Done(); r.guardLoop(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); r.ddlWatch(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); r.skew.Run(ctx) }()
	wg.Add(1)
	go func() { defer wg.Done(); r.leaderLoop(ctx) }()
	if srv != nil {
		s := &lagSampler{db: db, cfg: r.current, open: openServer, hist: r.lag, log: log.Named("statuspage")}
		wg.Add(1)
		go func() { defer wg.Done(); s.run(ctx) }()
	}

	perr := r.proxy.Run(ctx) // returns once ctx ends and clients drained
	wg.Wait()                // links stopped (a batch in flight rolled back), loops done
	stopClock()
	<-clockDone
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

// reloadOnHUP reloads the configuration file on every SIGHUP (reload):
// tables and rules take effect at once for the proxy and the guard, and
// the replicator starts, stops or restarts links to match the peers and
// topology (a link resumes from its checkpoint; client connections are
// untouched). A file with errors is refused, each error with its file and
// line, and the running configuration is kept. Keys that only a restart
// can change (region, proxy, local, metrics, clock, log) keep their running
// values, with a warning naming them.
func (r *region) reloadOnHUP(ctx context.Context, reload <-chan struct{}) {
	for {
		select {
		case <-ctx.Done():
			return
		case <-reload:
		}
		next, err := config.Load(r.cfg.Path)
		if err != nil {
			r.log.Error("config reload refused: the running configuration is kept", zap.String("config", r.cfg.Path), zap.String("errors", err.Error()))
			continue
		}
		cur := r.current()
		var fixed []string
		keep := func(name string, running, loaded any, restore func()) {
			if !reflect.DeepEqual(running, loaded) {
				fixed = append(fixed, name)
				restore()
			}
		}
		keep("region", cur.Region, next.Region, func() { next.Region = cur.Region })
		keep("proxy", cur.Proxy, next.Proxy, func() { next.Proxy = cur.Proxy })
		keep("local", cur.Local, next.Local, func() { next.Local = cur.Local })
		keep("metrics", cur.Metrics, next.Metrics, func() { next.Metrics = cur.Metrics })
		keep("clock", cur.Clock, next.Clock, func() { next.Clock = cur.Clock })
		keep("log", cur.Log, next.Log, func() { next.Log = cur.Log })
		if len(fixed) > 0 {
			r.log.Warn("config reload: these keys change only with a restart; their running values are kept", zap.Strings("keys", fixed))
		}
		for _, w := range next.Plaintext() {
			r.log.Warn("link not encrypted or not verified: "+w, zap.String("config", next.Path))
		}
		r.live.Store(next)
		did := r.rep.Update(next)
		r.log.Info("config reloaded", zap.String("config", next.Path), zap.Int("tables", len(next.Tables)),
			zap.Int("sources", len(next.Sources())), zap.Strings("links", did))
	}
}

// accounts reads, for forwarding, the mysql_native_password hashes of an
// account from the local server (mlproxy's account needs SELECT on
// mysql.global_priv: the hashes of every account; see the README).
type accounts struct{ r *region }

func (a accounts) NativeHashes(ctx context.Context, user string) ([][]byte, error) {
	rows, err := a.r.db.QueryContext(ctx, "SELECT JSON_VALUE(Priv, '$.authentication_string') FROM mysql.global_priv "+
		"WHERE User = ? AND JSON_VALUE(Priv, '$.plugin') IN ('mysql_native_password', '')", user)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out [][]byte
	for rows.Next() {
		var s sql.NullString
		if err := rows.Scan(&s); err != nil {
			return nil, err
		}
		if h, err := hex.DecodeString(strings.TrimPrefix(s.String, "*")); err == nil && len(h) == 20 {
			out = append(out, h)
		}
	}
	return out, rows.Err()
}

// causalTokens serves the proxy's causal tokens from the region's server
// (package causal).
type causalTokens struct{ r *region }

// errCausalTopology refuses tokens where a region does not pull from
// every origin directly.
var errCausalTopology = errors.New("causal tokens need the all-to-all topology: a region compares a token with its checkpoints of each origin's own binlog")

func (c causalTokens) Token(ctx context.Context) (causal.Token, error) {
	cfg := c.r.current()
	if cfg.Topology.Mode != config.TopologyAllToAll {
		return nil, errCausalTopology
	}
	return causal.Take(ctx, c.r.db, cfg.Region.ID)
}

func (c causalTokens) Wait(ctx context.Context, t causal.Token) error {
	cfg := c.r.current()
	if cfg.Topology.Mode != config.TopologyAllToAll {
		return errCausalTopology
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Proxy.CausalWait)
	defer cancel()
	err := causal.Wait(ctx, c.r.db, cfg.Region.ID, t)
	var b *causal.Behind
	if errors.As(err, &b) {
		b.OriginName = regionNames(cfg)[b.Origin]
	}
	return err
}

// instanceName names this process among the region's instances
// (mlr.replicator.holder): host, proxy address, pid.
func instanceName(cfg *config.Config) string {
	host, _ := os.Hostname()
	name := fmt.Sprintf("%s %s pid %d", host, cfg.Proxy.Listen, os.Getpid())
	if len(name) > 255 {
		name = name[:255]
	}
	return name
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
	r *region
	g *guard
}

func (t replicatedTables) Replicated(schema, table string) bool {
	_, ok := t.r.current().TableRule(schema, table)
	return ok
}

// ReplicatedSchemas lists the schemas the table rules name.
func (t replicatedTables) ReplicatedSchemas() []string {
	var out []string
	for _, r := range t.r.current().Tables {
		out = append(out, r.Schema)
	}
	return out
}

// Home is the home mapping of schema.table's entry, nil when it has none.
func (t replicatedTables) Home(schema, table string) *home.Map {
	hs := t.r.homeMaps()
	if len(hs.maps) == 0 { // every write asks: most configurations have none
		return nil
	}
	rule, ok := hs.cfg.TableRule(schema, table)
	if !ok || !rule.Homed() {
		return nil
	}
	m := hs.maps[rule.Schema+"."+rule.Table]
	if m != nil && m.Strong() {
		if ls := t.r.leaders.Load(); ls != nil {
			if l, moved := (*ls)[schema+"."+table]; moved && l != m.Leader() {
				return m.WithLeader(l)
			}
		}
	}
	return m
}

var _ proxy.Homes = replicatedTables{}

func (t replicatedTables) Blocked(schema, table string) string { return t.g.blocked(schema, table) }
func (t replicatedTables) AnyBlocked() string                  { return t.g.anyBlocked() }

var _ proxy.Guard = replicatedTables{}

// guard holds the replicated tables whose replication metadata was found
// damaged (guardLoop), keyed by lower-case "schema.table".
type guard struct {
	mu      sync.Mutex
	tables  map[string]string // key -> what is missing
	damaged prometheus.Gauge
	// now asks guardLoop for a check at once (the own-binlog DDL watch
	// saw DDL on a replicated schema).
	now chan struct{}
}

func newGuard() *guard {
	return &guard{tables: map[string]string{}, now: make(chan struct{}, 1), damaged: prometheus.NewGauge(prometheus.GaugeOpts{
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
			if ts, err := schema.Inspect(ctx, r.db, r.current().Tables); err == nil {
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
		case <-r.guard.now:
			read = time.Time{} // DDL was seen: re-read the tables too
		}
	}
}

// ddlWatch follows the region's own binlog for DDL (binlog.WatchDDL), so
// that DDL the proxy could not see (inside a procedure, a statement
// prepared from an expression, or on the server directly) is known at
// once: DDL on a replicated schema is logged (verb, schema, position; not
// its text) and counted, and the guard checks the tables at once. TRUNCATE
// and partition exchanges remove rows without row events, so nothing of
// them replicates: they are logged as errors, with what to do.
func (r *region) ddlWatch(ctx context.Context) {
	seen := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "mlproxy_schema_ddl_seen_total",
		Help: "DDL statements on replicated schemas in this region's own binlog, by verb; unreplicated=true for TRUNCATE and EXCHANGE PARTITION, whose row removals do not replicate.",
	}, []string{"verb", "unreplicated"})
	r.reg.MustRegister(seen)
	onDDL := func(e binlog.DDLEvent) {
		lower := strings.ToLower(e.Statement)
		hit := ""
		for _, t := range r.current().Tables {
			if strings.EqualFold(t.Schema, e.Schema) || strings.Contains(lower, strings.ToLower(t.Schema)) {
				hit = t.Schema
				break
			}
		}
		if hit == "" {
			return
		}
		unrepl := strings.HasPrefix(e.Verb, "TRUNCATE") || strings.Contains(lower, "exchange partition")
		seen.WithLabelValues(e.Verb, strconv.FormatBool(unrepl)).Inc()
		fields := []zap.Field{zap.String("verb", e.Verb), zap.String("schema", hit), zap.String("file", e.File), zap.Uint32("pos", e.Pos)}
		if unrepl {
			r.log.Error("rows of a replicated schema were removed without row events (TRUNCATE or EXCHANGE PARTITION): other regions still hold them; "+
				"compare with `mlproxy checksum` and reconcile", fields...)
		} else {
			r.log.Warn("DDL on a replicated schema in this region's binlog: checking the stamping at once", fields...)
		}
		select {
		case r.guard.now <- struct{}{}:
		default:
		}
	}
	_ = binlog.WatchDDL(ctx, r.cfg.Local, r.db, 4000000000+uint32(r.cfg.Region.ID), onDDL, r.log.Named("ddlwatch"))
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
	if r.cfg.Metrics.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	mux.HandleFunc("/status", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(r.status())
	})
	(&statusUI{src: statusSource{r}, lag: r.lag, log: r.log.Named("statuspage")}).register(mux)
	ln, err := net.Listen("tcp", r.cfg.Metrics.Listen)
	if err != nil {
		return nil, fmt.Errorf("metrics.listen %s: %w", r.cfg.Metrics.Listen, err)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	return srv, nil
}

// clockPeers are the peers the fence counts: every configured peer. Those
// without a server address (in star and ring a region need not list one
// for peers it has no link to) give no reading and count as not ahead, so
// one peer alone (a star's hub) can never fence a region.
func (r *region) clockPeers() []config.Peer { return r.current().Peers }

// statusPage is what /status serves: every link, and the clock against
// the peers (offsets, fence).
type statusPage struct {
	// Replicator says whether this instance runs the region's replicator
	// ("active", with its epoch) or stands by; Links are its links.
	Replicator string                  `json:"replicator"`
	Epoch      uint64                  `json:"epoch,omitempty"`
	Links      []replicator.LinkStatus `json:"links"`
	Clock      skew.Status             `json:"clock"`
}

func (r *region) status() statusPage {
	p := statusPage{Replicator: "standby", Links: r.rep.Status(), Clock: r.skew.Status()}
	if e := r.lead.Epoch(); e != 0 {
		p.Replicator, p.Epoch = "active", e
	}
	return p
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
	t := time.NewTicker(time.Hour)
	defer t.Stop()
	for {
		secs := int64(r.current().Apply.ConflictRetention / time.Second) // a reload may change it
		for {
			res, err := r.db.ExecContext(ctx, "DELETE FROM mlr.conflicts WHERE detected_at < NOW(6) - INTERVAL ? SECOND "+
				"AND (resolved_at IS NOT NULL OR outcome NOT IN "+openOutcomesSQL+") ORDER BY id LIMIT 1000", secs)
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
//
// The peers are the running configuration's at each round: after a reload
// adds a peer, no tombstone goes before that peer has applied past it.
func (r *region) gcLoop(ctx context.Context) {
	peers := func() []uint16 {
		var ids []uint16
		for _, p := range r.current().Sources() {
			ids = append(ids, p.ID)
		}
		return ids
	}
	tables := func(ctx context.Context) ([]*schema.Table, error) {
		return schema.Inspect(ctx, r.db, r.current().Tables)
	}
	_ = applier.RunTombstoneGC(ctx, r.db, tables, peers, gcSlack, r.cfg.Apply.TombstoneGCInterval, r.log.Named("gc"))
}
