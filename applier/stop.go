package applier

import (
	"context"
	"crypto/sha256"
	"database/sql"
	"encoding/hex"
	"errors"
	"fmt"
	"time"

	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/redact"
	"github.com/mlproxy/mlproxy/schema"
)

// A remote change that a key the conflict rule cannot place refuses (a
// secondary unique key, a foreign key) is a data conflict, not a fault:
// retrying cannot fix it. Per table (on_constraint), the applier either
// records the change whole in the conflict log and goes on (log), or
// stops (stop, the default): only the table, when no foreign key orders
// its changes against other tables' (tablestop.go), else the whole link
// at that change, as follows: the link holds its
// position (nothing after it is applied; the relay fills and the tailer
// waits), Status and mlr.link_stops name the table, key and error, and
// the applier re-tries every stopRetry, or at once when an operator asks
// (`mlproxy link retry`), or skips exactly that change when an operator
// asks (`mlproxy link skip`, recorded in the conflict log). A restart
// meets the same change again: nothing is lost.

// ErrConstraint marks a remote change refused by a key the rule cannot
// place.
var ErrConstraint = errors.New("refused by a key the conflict rule cannot place (a secondary unique key or a foreign key)")

// Stop describes a stopped link, or a table stopped alone.
type Stop struct {
	// Kind is why: StopConstraint (a key refused the change) or StopDDL
	// (the local table, or a column the change names, is missing: the
	// table waits for the DDL).
	Kind    string
	Table   string    // schema.table
	KeyHash string    // sha256 of the primary key, first 12 hex digits (no values)
	GTID    string    // the source transaction
	Error   string    // redacted
	Since   time.Time // when the link stopped there
}

// Stop kinds.
const (
	StopConstraint = "constraint"
	StopDDL        = "ddl"
)

// driftError is schema drift at one change: its table is missing locally
// or not prepared, or it names a column the local table lacks.
type driftError struct {
	it  *item
	err error
}

func (e *driftError) Error() string { return e.err.Error() }
func (e *driftError) Unwrap() error { return e.err }

// drift marks err, met at it, as schema drift when it is.
func drift(it *item, err error) error {
	if errors.Is(err, ErrUnknownColumn) || errors.Is(err, ErrNotPrepared) || errors.Is(err, schema.ErrNoTable) {
		return &driftError{it: it, err: err}
	}
	return err
}

// constraintError is ErrConstraint at one change.
type constraintError struct {
	it  *item
	err error
}

func (e *constraintError) Error() string {
	return fmt.Sprintf("%s.%s key %s at gtid %s: %v: %v", e.it.rc.Schema, e.it.rc.Table, keyHash(e.it.key), e.it.txn.Pos.GTID, ErrConstraint, e.err)
}

func (e *constraintError) Unwrap() []error { return []error{ErrConstraint, e.err} }

// keyHash identifies a key in logs and status without its values.
func keyHash(key string) string {
	h := sha256.Sum256([]byte(key))
	return hex.EncodeToString(h[:6])
}

// stopRetry is how often a stopped link tries the change again on its own
// (an operator may have removed the colliding row); requests are polled
// every stopPoll.
var (
	stopRetry = 30 * time.Second
	stopPoll  = time.Second
)

// savepointSQL brackets one change applied in serial mode where a refusal
// is not fatal (on_constraint log, or an operator's skip).
const (
	savepointSQL   = "SAVEPOINT mlr_change"
	rollbackToSQL  = "ROLLBACK TO SAVEPOINT mlr_change"
	rejectedSQL    = "INSERT INTO mlr.conflicts (peer_id, db, tbl, pk, rule, remote_hlc, remote_origin, remote_row, remote_meta, outcome, resolution) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
	stopUpsertSQL  = "REPLACE INTO mlr.link_stops (peer_id, gtid, db, tbl, pk, error) VALUES (?, ?, ?, ?, ?, ?)"
	stopDeleteSQL  = "DELETE FROM mlr.link_stops WHERE peer_id = ?"
	requestsSQL    = "SELECT action, gtid, requested_by FROM mlr.link_requests WHERE peer_id = ?"
	requestDoneSQL = "DELETE FROM mlr.link_requests WHERE peer_id = ? AND action = ?"
)

// tolerant reports whether a refusal of it may be recorded and passed
// over: its table logs such changes, or an operator asked to skip its
// transaction.
func (a *Applier) tolerant(it *item) (outcome string, ok bool) {
	if p := a.plans[it.tk]; p != nil && p.t.Rule.OnConstraint == config.OnConstraintLog {
		return "rejected", true
	}
	if a.skipGTID != "" && it.txn.Pos.GTID == a.skipGTID && keyHash(it.key) == a.skipKey {
		return "skipped", true // exactly the change the operator saw the link stopped at
	}
	return "", false
}

// applyGuarded applies one change (serial mode) under a savepoint when a
// refusal is tolerated, recording a refused change in the conflict log.
func (a *Applier) applyGuarded(ctx context.Context, conn *sql.Conn, st *batchState, it *item) error {
	outcome, tolerated := a.tolerant(it)
	if tolerated {
		if _, err := conn.ExecContext(ctx, savepointSQL); err != nil {
			return err
		}
	}
	err := a.applySegment(ctx, conn, st, []*item{it}, true)
	if err == nil || !constraintErr(err) {
		return err
	}
	if !tolerated {
		return &constraintError{it: it, err: err}
	}
	if _, rerr := conn.ExecContext(ctx, rollbackToSQL); rerr != nil {
		return rerr
	}
	pkJSON, jerr := jsonText(it.pk)
	if jerr != nil {
		return jerr
	}
	var row any
	if it.remote.Row != nil {
		if row, jerr = jsonText(it.remote.Row); jerr != nil {
			return jerr
		}
	}
	why := fmt.Sprintf("mysql error %d", errNumber(err))
	if outcome == "skipped" {
		why += "; skipped by " + a.skipBy
	}
	p := a.plans[it.tk]
	if _, err := conn.ExecContext(ctx, rejectedSQL, a.cfg.Peer.ID, p.t.Schema, p.t.Name, pkJSON, p.rule.Name(),
		uint64(it.remote.Stamp), uint32(it.remote.Origin), row, it.remote.Meta.Encode(), outcome, truncate(why, 64)); err != nil {
		return fmt.Errorf("record the refused change in the conflict log: %w", err)
	}
	st.confl = append(st.confl, conflictKey{db: p.t.Schema, table: p.t.Name, rule: p.rule.Name(), outcome: outcome})
	a.log.Warn("remote change refused by a key and recorded in the conflict log", zap.String("outcome", outcome),
		zap.String("table", p.t.Schema+"."+p.t.Name), zap.String("key_hash", keyHash(it.key)),
		zap.String("gtid", it.txn.Pos.GTID), redact.Err(err))
	return nil
}

func truncate(s string, n int) string {
	if len(s) <= n {
		return s
	}
	return s[:n]
}

// stopped holds the link at the change ce refused until a retry or skip
// gets past it: it records the stop (Status, metric, mlr.link_stops, one
// log line), then retries on an operator's request, every stopRetry, and
// skips on a skip request naming ce's transaction. It returns nil once the
// batch committed, or the first error that is not a refusal.
func (a *Applier) stopped(ctx context.Context, txns []*binlog.Txn, ce *constraintError) error {
	defer func() {
		a.skipGTID, a.skipKey, a.skipBy = "", "", ""
		a.mu.Lock()
		a.status.Stopped = nil
		a.mu.Unlock()
		a.m.stopped.WithLabelValues(a.peer).Set(0)
	}()
	for {
		s := &Stop{Kind: StopConstraint, Table: ce.it.rc.Schema + "." + ce.it.rc.Table, KeyHash: keyHash(ce.it.key), GTID: ce.it.txn.Pos.GTID,
			Error: redact.Error(ce.err), Since: time.Now()}
		a.mu.Lock()
		if a.status.Stopped == nil || a.status.Stopped.GTID != s.GTID || a.status.Stopped.KeyHash != s.KeyHash {
			a.status.Stopped = s
			a.mu.Unlock()
			a.m.stopped.WithLabelValues(a.peer).Set(1)
			a.log.Error("link stopped: a remote change is refused by a key the conflict rule cannot place; "+
				"fix the local row and `mlproxy link retry`, or `mlproxy link skip` it (recorded in the conflict log)",
				zap.String("table", s.Table), zap.String("key_hash", s.KeyHash), zap.String("gtid", s.GTID), redact.Err(ce.err))
			pkJSON, _ := jsonText(ce.it.pk)
			if _, err := a.db.ExecContext(ctx, stopUpsertSQL, a.cfg.Peer.ID, s.GTID, ce.it.rc.Schema, ce.it.rc.Table, pkJSON, truncate(s.Error, 1024)); err != nil {
				a.log.Warn("could not record the stop in mlr.link_stops", zap.String("table", s.Table), zap.String("gtid", s.GTID), redact.Err(err))
			}
		} else {
			a.mu.Unlock()
		}
		if err := a.awaitRequest(ctx, s.GTID, s.KeyHash); err != nil {
			return err
		}
		err := a.commitBatch(ctx, txns, true)
		var next *constraintError
		switch {
		case err == nil:
			if _, derr := a.db.ExecContext(ctx, stopDeleteSQL, a.cfg.Peer.ID); derr != nil {
				a.log.Warn("could not clear mlr.link_stops", zap.String("gtid", s.GTID), redact.Err(derr))
			}
			a.log.Info("stopped link resumed", zap.String("gtid", s.GTID), zap.Bool("skipped", a.skipGTID != ""))
			return nil
		case errors.As(err, &next):
			ce = next
		case retryable(err):
			// a transient failure while stopped: try again at the next round
		default:
			return err
		}
	}
}

// awaitRequest waits for an operator's retry, a skip of gtid (armed for the
// next attempt), or stopRetry.
func (a *Applier) awaitRequest(ctx context.Context, gtid, key string) error {
	deadline := time.Now().Add(stopRetry)
	for time.Now().Before(deadline) {
		t := time.NewTimer(stopPoll)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
		rows, err := a.db.QueryContext(ctx, requestsSQL, a.cfg.Peer.ID)
		if err != nil {
			continue // the local server may be restarting; retry at the next poll
		}
		var act, g, by string
		var acts [][3]string
		for rows.Next() {
			if rows.Scan(&act, &g, &by) == nil {
				acts = append(acts, [3]string{act, g, by})
			}
		}
		rows.Close()
		for _, r := range acts {
			if _, err := a.db.ExecContext(ctx, requestDoneSQL, a.cfg.Peer.ID, r[0]); err != nil {
				return err
			}
			switch {
			case r[0] == "retry":
				return nil
			case r[0] == "skip" && r[1] == gtid:
				a.skipGTID, a.skipKey, a.skipBy = gtid, key, r[2]
				return nil
			case r[0] == "skip":
				a.log.Warn("skip request ignored: it names another transaction than the one the link is stopped at",
					zap.String("requested", r[1]), zap.String("stopped_at", gtid))
			}
		}
	}
	return nil
}
