package proxy

import "github.com/prometheus/client_golang/prometheus"

// metrics are the proxy's Prometheus series (namespace mlproxy, subsystem
// proxy). They exist even when no registerer is given, so code never
// checks for nil.
type metrics struct {
	connections       prometheus.Gauge
	connectionsTotal  prometheus.Counter
	statements        *prometheus.CounterVec // {kind}
	stamped           prometheus.Counter
	refused           *prometheus.CounterVec // {reason}
	backendErrors     prometheus.Counter
	backendIdleClosed prometheus.Counter
	compressed        prometheus.Counter
	stampReused       prometheus.Counter
	cacheHits         prometheus.Counter
	cacheMisses       prometheus.Counter
	panics            *prometheus.CounterVec // {where}: connection, parser
	homed             *prometheus.CounterVec // {table, outcome}
	forwarded         prometheus.Counter
	forwardSeconds    prometheus.Histogram
	maxConnections    prometheus.Gauge
	carryDropped      prometheus.Counter
	latencyVec        *prometheus.HistogramVec
	// kinds are statements_total and statement_duration_seconds of each
	// kind label, resolved once: a statement looks up no label values.
	kinds map[string]*kindMetrics
}

// kindMetrics are one statement kind's series.
type kindMetrics struct {
	count   prometheus.Counter
	latency prometheus.Observer
}

// Statement kinds (statements_total{kind}).
const (
	labelRead            = "read"
	labelSession         = "session"
	labelDDL             = "ddl"
	labelWriteReplicated = "write_replicated"
	labelWriteOther      = "write_other"
	labelWriteUnknown    = "write_unknown"
	labelRefused         = "refused"
)

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	opts := func(name, help string) prometheus.Opts {
		return prometheus.Opts{Namespace: "mlproxy", Subsystem: "proxy", Name: name, Help: help}
	}
	m := &metrics{
		connections:      prometheus.NewGauge(prometheus.GaugeOpts(opts("connections", "Client connections open now."))),
		connectionsTotal: prometheus.NewCounter(prometheus.CounterOpts(opts("connections_total", "Client connections accepted."))),
		statements: prometheus.NewCounterVec(prometheus.CounterOpts(opts("statements_total",
			"Classified statement packets (COM_QUERY, COM_STMT_PREPARE) by kind.")), []string{"kind"}),
		stamped: prometheus.NewCounter(prometheus.CounterOpts(opts("stamped_total",
			"Commands sent with a stamping SET @_mlr_hlc."))),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts(opts("refused_total",
			"Statements and connections refused by the proxy, by reason.")), []string{"reason"}),
		backendErrors: prometheus.NewCounter(prometheus.CounterOpts(opts("backend_errors_total",
			"Backend connections that failed (dial, handshake, lost mid-command)."))),
		backendIdleClosed: prometheus.NewCounter(prometheus.CounterOpts(opts("backend_idle_closed_total",
			"Backend connections the server ended while their client was idle (wait_timeout, KILL, restart); the client connection was closed with them."))),
		compressed: prometheus.NewCounter(prometheus.CounterOpts(opts("compressed_connections_total",
			"Client connections that use the compressed protocol (zlib, on the client leg)."))),
		stampReused: prometheus.NewCounter(prometheus.CounterOpts(opts("stamp_reused_total",
			"Writes inside a transaction that used the stamp of its first write (no SET sent)."))),
		cacheHits: prometheus.NewCounter(prometheus.CounterOpts(opts("statement_cache_hits_total",
			"Statement classifications found in the cache."))),
		cacheMisses: prometheus.NewCounter(prometheus.CounterOpts(opts("statement_cache_misses_total",
			"Statements parsed because they were not in the cache."))),
		panics: prometheus.NewCounterVec(prometheus.CounterOpts(opts("panics_total",
			"Panics recovered: in a connection's handler (that client was disconnected) or in the SQL parser (the statement was classified without it).")), []string{"where"}),
		homed: prometheus.NewCounterVec(prometheus.CounterOpts(opts("homed_writes_total",
			"Writes to tables with a home region by key, by table entry (as the config names it) and outcome: local (every key homed here or nowhere), "+
				"refused or misrouted (a key homed elsewhere: refused, or written here under elsewhere: allow), "+
				"unknown or unknown_refused (the statement does not show its keys: sent on for the triggers to check, or refused).")), []string{"table", "outcome"}),
		forwarded: prometheus.NewCounter(prometheus.CounterOpts(opts("forwarded_total",
			"Statements sent to another region's proxy: writes homed there (elsewhere: forward, strong tables with forward: true) and the rest of their transactions."))),
		forwardSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Namespace: "mlproxy", Subsystem: "proxy", Name: "forward_seconds",
			Help:    "Latency of forwarded statements, from sending to the home region's proxy to the end of its response.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2, 14)}),
		carryDropped: prometheus.NewCounter(prometheus.CounterOpts(opts("trace_carry_dropped_total",
			"Sampled writes whose trace context was not carried to the peers: over tracing.max_carried_per_second (their proxy spans were still made)."))),
		maxConnections: prometheus.NewGauge(prometheus.GaugeOpts(opts("max_connections",
			"Client connections the proxy accepts at once (proxy.max_connections); connections / max_connections is its saturation."))),
		latencyVec: prometheus.NewHistogramVec(prometheus.HistogramOpts{Namespace: "mlproxy", Subsystem: "proxy", Name: "statement_duration_seconds",
			Help: "Time from a statement's packet (COM_QUERY, COM_STMT_EXECUTE) to the end of its response, by kind as in statements_total " +
				"(write_replicated includes the stamping SET; a result set's time includes the client reading it).",
			Buckets: []float64{.0001, .00025, .0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10}}, []string{"kind"}),
	}
	m.kinds = map[string]*kindMetrics{}
	for _, k := range []string{labelRead, labelSession, labelDDL, labelWriteReplicated, labelWriteOther, labelWriteUnknown, labelRefused} {
		m.kinds[k] = &kindMetrics{count: m.statements.WithLabelValues(k), latency: m.latencyVec.WithLabelValues(k)}
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.carryDropped, m.maxConnections, m.latencyVec, m.connections, m.connectionsTotal, m.statements,
			m.stamped, m.refused, m.backendErrors, m.backendIdleClosed, m.compressed, m.stampReused, m.cacheHits, m.cacheMisses, m.panics, m.homed, m.forwarded, m.forwardSeconds} {
			if err := reg.Register(c); err != nil {
				return nil, err
			}
		}
	}
	return m, nil
}
