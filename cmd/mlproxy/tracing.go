package main

import (
	"context"
	"time"

	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/redact"
	"github.com/mlproxy/mlproxy/schema"
	"github.com/mlproxy/mlproxy/tracing"
)

// shutdownTracing exports the spans still queued, for at most 5 s.
func shutdownTracing(tp *tracing.Provider, log *zap.Logger) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := tp.Shutdown(ctx); err != nil {
		log.Warn("tracing: spans not exported at shutdown", redact.Err(err))
	}
}

// tracesGC drops the trace carriers (mlr.traces) older than five minutes,
// every minute: the peers read them from the binlog, the table need not
// keep them. It runs with tracing off too, so that rows left from when it
// was on go, and only in the instance that runs the region's replicator
// (each DELETE is in the binlog).
func (r *region) tracesGC(ctx context.Context) {
	t := time.NewTicker(time.Minute)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if r.lead.Epoch() == 0 {
			continue // the region's active instance does it, once
		}
		for {
			qctx, cancel := context.WithTimeout(ctx, 10*time.Second)
			res, err := r.db.ExecContext(qctx, schema.DeleteOldTraces)
			cancel()
			if err != nil {
				if ctx.Err() == nil {
					r.log.Warn("dropping old trace carriers (mlr.traces)", redact.Err(err))
				}
				break
			}
			if n, _ := res.RowsAffected(); n < 10000 {
				break
			}
		}
	}
}
