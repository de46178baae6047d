package applier

import (
	"context"
	"database/sql"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/hlc"
	"github.com/mlproxy/mlproxy/redact"
	"github.com/mlproxy/mlproxy/schema"
)

// Tombstone garbage collection.
//
// A tombstone at stamp T guards this region against a change stamped below
// T that has not arrived yet: without it, a concurrent update older than
// the delete would bring the row back. Such a change can only come from a
// peer's stream, and each stream is applied in the peer's commit order. So
// the rule is local and needs no reply from the peers:
//
//	horizon = min over every peer P of
//	    max(P's checkpoint hlc, P's checkpoint source_ts as a stamp) - slack
//
// and tombstones stamped below the horizon go. A change P commits after
// the last transaction applied from it carries a stamp at least P's clock
// at the time its statement ran, which is within slack of P's commit time
// and of the stamps P issued before; slack must therefore cover the
// longest transaction a peer runs (a stamp is taken at statement time, the
// commit comes later), the clock offset between a peer's proxy and its
// server (binlog times are the server's, in whole seconds), and, with
// star or ring topologies, the delivery delay of a forwarding hop (a
// forwarded change keeps its origin's older stamp). Every source
// transaction reaches the applier, also an empty one, so source_ts keeps
// moving while a peer is up even if it writes nothing of its own; a peer
// that is down, or was never applied from, holds collection back (its
// changes may still come): horizon 0, nothing is dropped.
//
// What this does not cover: a region that restores a backup older than the
// horizon, or a peer added later that replays history; both need a full
// resync anyway.

const checkpointsForGCSQL = "SELECT peer_id, hlc, COALESCE(UNIX_TIMESTAMP(source_ts), 0) FROM mlr.checkpoints"

// GCHorizon returns the stamp below which tombstones may be dropped,
// given every peer this region applies from and the slack described
// above; 0 when some peer has no checkpoint yet.
func GCHorizon(ctx context.Context, db *sql.DB, peers []uint16, slack time.Duration) (hlc.Timestamp, error) {
	if len(peers) == 0 {
		return 0, nil // no peers, no stream to guard against; also nothing to protect for
	}
	rows, err := db.QueryContext(ctx, checkpointsForGCSQL)
	if err != nil {
		return 0, fmt.Errorf("tombstone gc: read checkpoints: %w", err)
	}
	defer rows.Close()
	applied := map[uint16]hlc.Timestamp{}
	for rows.Next() {
		var id uint16
		var h uint64
		var src string
		if err := rows.Scan(&id, &h, &src); err != nil {
			return 0, fmt.Errorf("tombstone gc: read checkpoints: %w", err)
		}
		at := hlc.Timestamp(h)
		if t := parseUnix(src); !t.IsZero() {
			if s := hlc.New(t.UnixMilli(), 0); s > at {
				at = s
			}
		}
		applied[id] = at
	}
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("tombstone gc: read checkpoints: %w", err)
	}
	slackStamp := hlc.New(slack.Milliseconds(), 0)
	var horizon hlc.Timestamp
	for i, p := range peers {
		at, ok := applied[p]
		if !ok || at <= slackStamp {
			return 0, nil
		}
		if h := at - slackStamp; i == 0 || h < horizon {
			horizon = h
		}
	}
	return horizon, nil
}

// GCTombstones deletes the tombstones of tables stamped below olderThan,
// batch rows per statement (each its own short transaction, so the app's
// deletes never wait long on the collector). It returns how many went.
// The deletes are region-local: tailers drop deletes of the mlr schema.
func GCTombstones(ctx context.Context, db *sql.DB, tables []*schema.Table, olderThan hlc.Timestamp, batch int, log *zap.Logger) (int64, error) {
	if log == nil {
		log = zap.NewNop()
	}
	if batch <= 0 {
		batch = 1000
	}
	var total int64
	if olderThan == 0 {
		return 0, nil
	}
	held, err := heldTables(ctx, db)
	if err != nil {
		return 0, err
	}
	for _, t := range tables {
		if held[tableKey{t.Schema, t.Name}] {
			// A stopped table's held changes may be concurrent with its
			// tombstones (tablestop.go): they stay until it resumes.
			continue
		}
		q := t.GCTombstonesSQL()
		var n int64
		for {
			res, err := db.ExecContext(ctx, q, uint64(olderThan), batch)
			if err != nil {
				return total, fmt.Errorf("tombstone gc of %s.%s: %w", t.Schema, t.Name, err)
			}
			k, err := res.RowsAffected()
			if err != nil {
				return total, fmt.Errorf("tombstone gc of %s.%s: %w", t.Schema, t.Name, err)
			}
			n += k
			if k < int64(batch) {
				break
			}
		}
		total += n
		if n > 0 {
			log.Info("tombstones collected", zap.String("schema", t.Schema), zap.String("table", t.Name), zap.Int64("rows", n))
		}
	}
	return total, nil
}

// heldTables are the tables with changes held in mlr.held (none when the
// table does not exist yet).
func heldTables(ctx context.Context, db *sql.DB) (map[tableKey]bool, error) {
	rows, err := db.QueryContext(ctx, "SELECT DISTINCT db, tbl FROM mlr.held")
	if errNumber(err) == 1146 { // ER_NO_SUCH_TABLE: schema apply of an earlier release
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("tombstone gc: read mlr.held: %w", err)
	}
	defer rows.Close()
	out := map[tableKey]bool{}
	for rows.Next() {
		var tk tableKey
		if err := rows.Scan(&tk.db, &tk.table); err != nil {
			return nil, fmt.Errorf("tombstone gc: read mlr.held: %w", err)
		}
		out[tk] = true
	}
	return out, rows.Err()
}

// RunTombstoneGC collects tombstones every interval (0 = 1m) until ctx
// ends, returning ctx's error: each round computes GCHorizon over peers
// with slack and deletes below it in the tables that tables returns then
// (asked every round, so tables created later are collected without a
// restart). A failed round is logged and retried at the next tick
// (collection is never urgent).
func RunTombstoneGC(ctx context.Context, db *sql.DB, tables func(context.Context) ([]*schema.Table, error), peers func() []uint16, slack, interval time.Duration, log *zap.Logger) error {
	if log == nil {
		log = zap.NewNop()
	}
	if interval <= 0 {
		interval = time.Minute
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		h, err := GCHorizon(ctx, db, peers(), slack)
		var ts []*schema.Table
		if err == nil {
			ts, err = tables(ctx)
		}
		if err == nil {
			_, err = GCTombstones(ctx, db, ts, h, 1000, log)
		}
		if err != nil && ctx.Err() == nil {
			log.Warn("tombstone gc round failed", redact.Err(err))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-tick.C:
		}
	}
}
