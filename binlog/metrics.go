package binlog

import "github.com/prometheus/client_golang/prometheus"

// metrics are one tailer's Prometheus series. Every series carries the
// constant label peer (added by wrapping the registerer), so several tailers
// share one registry.
type metrics struct {
	link       prometheus.Gauge   // 1 while the binlog stream is up
	reconnects prometheus.Counter // connection attempts after a failure
	txns       prometheus.Counter // whole transactions emitted (at Last)
	rows       prometheus.Counter // row changes emitted
	bytes      prometheus.Counter // approximate bytes of emitted row changes
	filtered   prometheus.Counter // row changes dropped by the topology filter
	lastEvent  prometheus.Gauge   // header time of the last binlog event read (Unix seconds)
	lastCommit prometheus.Gauge   // commit time of the last emitted transaction (Unix seconds)
	unpaired   prometheus.Counter // deletes that got a derived stamp (no tombstone)
	orphans    prometheus.Counter // tombstones without a delete (PrevUnknown deletes)
	bypass     prometheus.Counter // emitted inserts/updates stamped by the trigger (bypassed the proxy)
	pieces     prometheus.Counter // pieces emitted for transactions larger than MaxTxnBytes
	resumed    prometheus.Counter // pieces re-read after a reconnect mid-transaction and not sent again

	unregister func() // removes the series from the registry (nil: none)
}

func (m *metrics) all() []prometheus.Collector {
	return []prometheus.Collector{m.link, m.reconnects, m.txns, m.rows, m.bytes,
		m.filtered, m.lastEvent, m.lastCommit, m.unpaired, m.orphans, m.bypass, m.pieces, m.resumed}
}

func newMetrics(reg prometheus.Registerer, peer string) *metrics {
	m := &metrics{
		link: prometheus.NewGauge(prometheus.GaugeOpts{Name: "mlproxy_binlog_link_up",
			Help: "1 while the binlog stream from the peer is connected."}),
		reconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: "mlproxy_binlog_reconnects_total",
			Help: "Reconnection attempts to the peer's binlog after a failure."}),
		txns: prometheus.NewCounter(prometheus.CounterOpts{Name: "mlproxy_binlog_txns_total",
			Help: "Whole source transactions emitted to the applier."}),
		rows: prometheus.NewCounter(prometheus.CounterOpts{Name: "mlproxy_binlog_rows_total",
			Help: "Row changes emitted to the applier."}),
		bytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "mlproxy_binlog_bytes_total",
			Help: "Approximate bytes of row changes emitted to the applier."}),
		filtered: prometheus.NewCounter(prometheus.CounterOpts{Name: "mlproxy_binlog_rows_filtered_total",
			Help: "Row changes dropped by loop suppression (own origin, or not the peer's own change)."}),
		lastEvent: prometheus.NewGauge(prometheus.GaugeOpts{Name: "mlproxy_binlog_last_event_timestamp_seconds",
			Help: "Header time of the last binlog event read from the peer (for lag)."}),
		lastCommit: prometheus.NewGauge(prometheus.GaugeOpts{Name: "mlproxy_binlog_last_commit_timestamp_seconds",
			Help: "Source commit time of the last transaction emitted to the applier."}),
		unpaired: prometheus.NewCounter(prometheus.CounterOpts{Name: "mlproxy_binlog_unpaired_deletes_total",
			Help: "Deletes without a tombstone in their transaction (foreign-key cascades, missing trigger): stamped from the event time."}),
		orphans: prometheus.NewCounter(prometheus.CounterOpts{Name: "mlproxy_binlog_orphan_tombstones_total",
			Help: "Tombstones without a delete beside them, emitted as deletes with PrevUnknown."}),
		bypass: prometheus.NewCounter(prometheus.CounterOpts{Name: "mlproxy_binlog_bypass_rows_total",
			Help: "Inserts and updates stamped by the server trigger: writes that bypassed the proxy."}),
		pieces: prometheus.NewCounter(prometheus.CounterOpts{Name: "mlproxy_binlog_txn_pieces_total",
			Help: "Pieces emitted for transactions larger than the memory bound."}),
		resumed: prometheus.NewCounter(prometheus.CounterOpts{Name: "mlproxy_binlog_pieces_not_resent_total",
			Help: "Pieces of a transaction re-read after a reconnect mid-transaction and not sent again."}),
	}
	if reg != nil {
		r := prometheus.WrapRegistererWith(prometheus.Labels{"peer": peer}, reg)
		m.unregister = func() {
			for _, c := range m.all() {
				r.Unregister(c)
			}
		}
		for _, c := range m.all() {
			if err := r.Register(c); err != nil {
				// Registering twice for one peer is a wiring mistake, but
				// metrics must never stop replication: keep the
				// unregistered collector.
				continue
			}
		}
	}
	return m
}
