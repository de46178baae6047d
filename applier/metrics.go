package applier

import (
	"errors"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the applier's Prometheus series. Every applier of a region
// shares one set of collectors (registered once; later appliers reuse
// them), labelled by peer.
type metrics struct {
	txns        *prometheus.CounterVec   // peer
	batches     *prometheus.CounterVec   // peer
	rows        *prometheus.CounterVec   // peer, op
	conflicts   *prometheus.CounterVec   // peer, schema, table, rule, outcome
	shadow      *prometheus.CounterVec   // peer, schema, table, shadow_rule, differs
	held        *prometheus.CounterVec   // peer: batches held for a stamp too far ahead
	retries     *prometheus.CounterVec   // peer
	clockAhead  *prometheus.CounterVec   // peer: stamps beyond the clock's max offset
	lag         *prometheus.GaugeVec     // peer
	batchTxns   *prometheus.HistogramVec // peer
	applyErrors *prometheus.CounterVec   // peer
	stopped     *prometheus.GaugeVec     // peer: 1 while the link is stopped at a refused change
	tableStops  *prometheus.GaugeVec     // peer, schema, table: 1 while that table is stopped
	parked      *prometheus.GaugeVec     // peer, schema, table: changes waiting in mlr.held
	workersBusy *prometheus.GaugeVec     // peer: parallel workers holding a batch
	batchLimit  *prometheus.GaugeVec
	depWaits    *prometheus.CounterVec   // peer: batches that waited for a batch they depend on
	lagStamps   *prometheus.HistogramVec // peer: stamp to local commit, per source transaction
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		txns: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mlproxy_applier_txns_total", Help: "Source transactions applied, by peer.",
		}, []string{"peer"}),
		batches: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mlproxy_applier_commits_total", Help: "Local commits (each covers one or more source transactions), by peer.",
		}, []string{"peer"}),
		rows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mlproxy_applier_rows_total", Help: "Remote row changes decided, by peer and operation.",
		}, []string{"peer", "op"}),
		conflicts: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mlproxy_applier_conflicts_total", Help: "Remote changes that met a concurrent local version, by rule and outcome.",
		}, []string{"peer", "schema", "table", "rule", "outcome"}),
		shadow: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mlproxy_applier_shadow_conflicts_total", Help: "Conflicts of tables with a shadow rule, by shadow rule and whether it would have left another row than the live rule did.",
		}, []string{"peer", "schema", "table", "shadow_rule", "differs"}),
		held: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mlproxy_applier_held_total", Help: "Batches held back because a change's stamp was further ahead of local time than clock.max_offset (the peer's clock runs fast).",
		}, []string{"peer"}),
		retries: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mlproxy_applier_retries_total", Help: "Batches rolled back and retried (deadlock, lock wait timeout, lost connection).",
		}, []string{"peer"}),
		clockAhead: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mlproxy_applier_clock_ahead_total", Help: "Applied stamps further ahead of local time than the clock's max offset.",
		}, []string{"peer"}),
		lag: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mlproxy_applier_lag_seconds", Help: "Local commit time minus source commit time of the last applied transaction.",
		}, []string{"peer"}),
		batchTxns: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "mlproxy_applier_batch_txns", Help: "Source transactions per local commit.",
			Buckets: []float64{1, 2, 4, 8, 16, 32, 64, 128, 256},
		}, []string{"peer"}),
		applyErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mlproxy_applier_errors_total", Help: "Applier stops on a non-retryable error.",
		}, []string{"peer"}),
		stopped: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mlproxy_applier_link_stopped", Help: "1 while the link is stopped at a remote change a key the conflict rule cannot place refused (see mlproxy status; mlproxy link skip|retry).",
		}, []string{"peer"}),
		tableStops: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mlproxy_applier_table_stopped", Help: "1 while a table's changes from the peer wait behind a change a key the conflict rule cannot place refused; the peer's other tables go on (see mlproxy status; mlproxy link skip|retry --table).",
		}, []string{"peer", "schema", "table"}),
		parked: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mlproxy_applier_held_changes", Help: "Remote changes to a stopped table kept in mlr.held, applied in source order when it resumes.",
		}, []string{"peer", "schema", "table"}),
		batchLimit: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mlproxy_applier_batch_limit", Help: "Source transactions a local commit may gather now: apply.batch_txns, lowered while the server counts deadlocks (the applier yields to local clients).",
		}, []string{"peer"}),
		workersBusy: prometheus.NewGaugeVec(prometheus.GaugeOpts{
			Name: "mlproxy_applier_workers_busy", Help: "Parallel apply workers holding a batch (applying it or waiting to commit it in source order).",
		}, []string{"peer"}),
		depWaits: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mlproxy_applier_dependency_waits_total", Help: "Batches that waited before dispatch because they share keys with batches of more than one worker (or a full worker).",
		}, []string{"peer"}),
	}
	m.lagStamps = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Name: "mlproxy_replication_lag_seconds",
		Help: "Per source transaction, from when it was written at the source (its newest row's stamp, taken by the origin's proxy, or its commit time in the binlog when later) " +
			"to its local commit here: end-to-end replication lag, by peer. Includes clock offset between the regions.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600},
	}, []string{"peer"})
	if reg == nil {
		return m
	}
	m.txns = register(reg, m.txns)
	m.batches = register(reg, m.batches)
	m.rows = register(reg, m.rows)
	m.conflicts = register(reg, m.conflicts)
	m.shadow = register(reg, m.shadow)
	m.held = register(reg, m.held)
	m.retries = register(reg, m.retries)
	m.clockAhead = register(reg, m.clockAhead)
	m.lag = register(reg, m.lag)
	m.batchTxns = register(reg, m.batchTxns)
	m.applyErrors = register(reg, m.applyErrors)
	m.stopped = register(reg, m.stopped)
	m.tableStops = register(reg, m.tableStops)
	m.parked = register(reg, m.parked)
	m.workersBusy = register(reg, m.workersBusy)
	m.batchLimit = register(reg, m.batchLimit)
	m.depWaits = register(reg, m.depWaits)
	m.lagStamps = register(reg, m.lagStamps)
	return m
}

// register registers c, or returns the collector already registered under
// the same description (a second applier in the same process).
func register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if existing, ok := are.ExistingCollector.(C); ok {
				return existing
			}
		}
	}
	return c
}
