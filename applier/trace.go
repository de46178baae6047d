package applier

import (
	"context"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/hlc"
	"github.com/mlproxy/mlproxy/tracing"
)

// applied records what the lag histogram and the traces need of a piece
// of a source transaction the batch applied: the newest stamp of its
// rows, over all its pieces, and, at its last piece, when it became
// visible at the source: its newest stamp's time, or its commit time
// when later (a long transaction, or one that waited for locks, keeps the
// stamp of its first write, and that wait is not replication lag; the
// binlog's commit time has whole seconds only).
func (st *batchState) applied(t *binlog.Txn) {
	for i := range t.Changes {
		st.newest = max(st.newest, t.Changes[i].Stamp)
	}
	if !t.Last {
		return
	}
	src := sourceTxn{txn: t, newest: st.newest}
	st.newest = 0
	if src.newest != 0 {
		src.from = hlc.Timestamp(src.newest).Time()
		if t.Timestamp.After(src.from) {
			src.from = t.Timestamp
		}
		st.sources = append(st.sources, src.from)
	}
	if t.Trace != "" {
		st.traced = append(st.traced, src)
	}
}

// sourceTxn is a completed source transaction as the lag and the traces
// see it: its newest stamp (0: no rows) and when it was written (from).
type sourceTxn struct {
	txn    *binlog.Txn
	newest uint64
	from   time.Time
}

// observeLag adds each committed source transaction's lag, from when it
// was written at the source to appliedAt, to
// mlproxy_replication_lag_seconds.
func (a *Applier) observeLag(st *batchState, appliedAt time.Time) {
	if len(st.sources) == 0 {
		return
	}
	h := a.m.lagStamps.WithLabelValues(a.peer)
	for _, from := range st.sources {
		h.Observe(max(appliedAt.Sub(from), 0).Seconds())
	}
}

// traceApplied makes a span per committed transaction that carried a
// trace context, a child of the origin proxy's span: from the batch's
// start to its commit here, with the lag from the write's stamp.
func (a *Applier) traceApplied(st *batchState, appliedAt time.Time) {
	t := a.cfg.Tracer
	if t == nil || len(st.traced) == 0 {
		return
	}
	start := st.started
	if start.IsZero() || start.After(appliedAt) {
		start = appliedAt
	}
	for _, src := range st.traced {
		txn := src.txn
		sc, ok := tracing.Parse(txn.Trace)
		if !ok {
			continue // not from a proxy: ignored, never trusted
		}
		ctx := trace.ContextWithRemoteSpanContext(context.Background(), sc)
		attrs := []attribute.KeyValue{
			attribute.String("mlproxy.region", a.cfg.Region),
			attribute.String("mlproxy.peer", a.peer),
			attribute.String("mlproxy.gtid", txn.Pos.GTID),
			attribute.Int("mlproxy.rows", len(txn.Changes)),
		}
		if src.newest != 0 {
			// The same lag as mlproxy_replication_lag_seconds counts.
			attrs = append(attrs,
				attribute.String("mlproxy.stamp", hlc.Timestamp(src.newest).String()),
				attribute.Float64("mlproxy.lag_seconds", max(appliedAt.Sub(src.from), 0).Seconds()))
		}
		_, sp := t.Start(ctx, "mlproxy apply", trace.WithTimestamp(start),
			trace.WithSpanKind(trace.SpanKindConsumer), trace.WithAttributes(attrs...))
		sp.End(trace.WithTimestamp(appliedAt))
	}
}
