package applier

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"time"

	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/redact"
)

// Stopping one table instead of the whole link.
//
// A change refused by a key the rule cannot place (on_constraint: stop)
// stops only its table when ordering allows: its source transaction
// writes that table alone, and none of the transactions batched behind it
// writes that table and another one. Then the link goes on with every
// other table; the stopped table's later changes are not applied (a
// transaction that writes only that table is passed over, one that writes
// it and another table turns the stop into a stop of the whole link at
// the first refused change, below). The stop is recorded in
// mlr.link_stops with scope "table" and where the link must resume to see
// the table's changes again: just before the refused transaction. That
// resume position is what Checkpoint reports while the stop lasts, so a
// restart, an operator's retry or skip, and the periodic retry all re-read
// the peer's binlog from there: the other tables' changes after it arrive
// a second time and change nothing (a version vector that the local row
// already dominates is a no-op under every rule, counters included), the
// table's own changes are applied in order. Tombstone collection waits
// while a resume position is recorded, so no tombstone such a replay
// needs is gone. One table per link is stopped this way; a second refusal
// in another table, or a parallel applier (apply.workers > 1), stops the
// whole link.

// tableStop is the stop of one table.
type tableStop struct {
	schema, table string
	gtid, keyHash string          // the refused change
	resume        binlog.Position // where the link resumes while the table is stopped
	retryAt       time.Time       // when the link retries on its own
}

// tableRetry is how long a stopped table waits before the link re-reads
// from its resume position on its own (an operator may have fixed the
// colliding row); each retry replays the other tables' changes since, so
// it is rarer than a whole link's.
var tableRetry = 10 * time.Minute

// errTableRestart ends Run so that the link restarts from Checkpoint: an
// operator's retry or skip of a stopped table, its periodic retry, or a
// table stop turned into a stop of the whole link.
var errTableRestart = errors.New("the link re-reads the peer's binlog from before a stopped table's refused change")

const (
	tableStopUpsertSQL = "INSERT INTO mlr.link_stops (peer_id, gtid, db, tbl, pk, error, scope, resume_gtid, resume_file, resume_pos) " +
		"VALUES (?, ?, ?, ?, ?, ?, 'table', ?, ?, ?) ON DUPLICATE KEY UPDATE gtid = VALUES(gtid), db = VALUES(db), tbl = VALUES(tbl), " +
		"pk = VALUES(pk), error = VALUES(error), scope = 'table', resume_gtid = VALUES(resume_gtid), " +
		"resume_file = VALUES(resume_file), resume_pos = VALUES(resume_pos), since = CURRENT_TIMESTAMP(6)"
	stopToLinkSQL = "UPDATE mlr.link_stops SET scope = 'link' WHERE peer_id = ?"
	selectStopSQL = "SELECT gtid, db, tbl, scope, resume_gtid, resume_file, resume_pos FROM mlr.link_stops WHERE peer_id = ?"
)

// storedStop is the peer's row of mlr.link_stops.
type storedStop struct {
	found          bool
	gtid, db, tbl  string
	scope          string
	resume         binlog.Position
	resumeRecorded bool
}

func (a *Applier) readStop(ctx context.Context) (storedStop, error) {
	var s storedStop
	var pos uint64
	err := a.db.QueryRowContext(ctx, selectStopSQL, a.cfg.Peer.ID).
		Scan(&s.gtid, &s.db, &s.tbl, &s.scope, &s.resume.GTID, &s.resume.File, &pos)
	if errors.Is(err, sql.ErrNoRows) {
		return s, nil
	}
	if err != nil {
		return s, fmt.Errorf("read mlr.link_stops: %w", err)
	}
	s.found = true
	s.resume.Pos = uint32(pos)
	s.resumeRecorded = s.resume.GTID != "" || s.resume.File != ""
	return s, nil
}

// loadStop sets up, at the start of Run, what a recorded stop says: a
// stopped table is armed (its refused change is tried again; the link was
// restarted from before it), a stop of the whole link keeps every table
// from stopping alone until it is cleared.
func (a *Applier) loadStop(ctx context.Context, workers int) error {
	a.tstop, a.armed, a.wholeLink = nil, nil, false
	s, err := a.readStop(ctx)
	if err != nil || !s.found {
		return err
	}
	if s.scope == "table" && workers > 1 {
		// A parallel applier stops whole links only.
		if _, err := a.db.ExecContext(ctx, stopToLinkSQL, a.cfg.Peer.ID); err != nil {
			return fmt.Errorf("update mlr.link_stops: %w", err)
		}
		s.scope = "link"
	}
	if s.scope == "table" {
		a.armed = &tableStop{schema: s.db, table: s.tbl, gtid: s.gtid, resume: s.resume}
		a.log.Info("retrying a stopped table from before its refused change",
			zap.String("table", s.db+"."+s.tbl), zap.String("gtid", s.gtid), zap.String("resume_gtid", s.resume.GTID))
		return nil
	}
	a.wholeLink = true
	return nil
}

// touches reports whether txn writes schema.table, and whether it writes
// any other table.
func touches(txn *binlog.Txn, schema, table string) (this, other bool) {
	for i := range txn.Changes {
		rc := &txn.Changes[i]
		if rc.Schema == schema && rc.Table == table {
			this = true
		} else {
			other = true
		}
	}
	return this, other
}

// tableStoppable reports whether the refusal ce in txns may stop only its
// table (see the comment at the top of this file).
func (a *Applier) tableStoppable(txns []*binlog.Txn, ce *constraintError) bool {
	if a.cfg.Workers > 1 || a.tstop != nil || a.wholeLink {
		return false
	}
	schema, table := ce.it.rc.Schema, ce.it.rc.Table
	idx := -1
	for i, t := range txns {
		if t == ce.it.txn {
			idx = i
		}
	}
	if idx < 0 {
		return false
	}
	if _, other := touches(txns[idx], schema, table); other {
		return false
	}
	for _, t := range txns[idx+1:] {
		if this, other := touches(t, schema, table); this && other {
			return false
		}
	}
	return true
}

// stopTable stops ce's table at ce (recorded with where the link resumes)
// and applies the rest of txns without the table's changes.
func (a *Applier) stopTable(ctx context.Context, txns []*binlog.Txn, ce *constraintError) error {
	schema, table := ce.it.rc.Schema, ce.it.rc.Table
	a.mu.Lock()
	resume := a.status.Pos
	a.mu.Unlock()
	for _, t := range txns {
		if t == ce.it.txn {
			break
		}
		resume = binlog.Position{GTID: mergeGTID(resume.GTID, t.Pos.GTID), File: t.Pos.File, Pos: t.Pos.Pos}
	}
	if a.armed != nil && a.armed.gtid == ce.it.txn.Pos.GTID {
		resume = a.armed.resume // the same stop, met again after a restart from it
	}
	ts := &tableStop{schema: schema, table: table, gtid: ce.it.txn.Pos.GTID, keyHash: keyHash(ce.it.key),
		resume: resume, retryAt: time.Now().Add(tableRetry)}
	pkJSON, _ := jsonText(ce.it.pk)
	msg := redact.Error(ce.err)
	if _, err := a.db.ExecContext(ctx, tableStopUpsertSQL, a.cfg.Peer.ID, ts.gtid, schema, table, pkJSON, truncate(msg, 1024),
		resume.GTID, resume.File, resume.Pos); err != nil {
		return fmt.Errorf("record the stopped table in mlr.link_stops: %w", err)
	}
	a.tstop, a.armed = ts, nil
	a.skipGTID, a.skipKey, a.skipBy = "", "", ""
	a.mu.Lock()
	a.status.Stopped = &Stop{Table: schema + "." + table, KeyHash: ts.keyHash, GTID: ts.gtid, Error: msg, Since: time.Now(), Scope: "table"}
	a.mu.Unlock()
	a.m.stopped.WithLabelValues(a.peer).Set(1)
	a.log.Error("table stopped: a remote change is refused by a key the conflict rule cannot place; the link goes on with the other tables; "+
		"fix the local row and `mlproxy link retry`, or `mlproxy link skip` it (recorded in the conflict log)",
		zap.String("table", schema+"."+table), zap.String("key_hash", ts.keyHash), zap.String("gtid", ts.gtid),
		zap.String("resume_gtid", resume.GTID), redact.Err(ce.err))
	// What came before the refused change applies as it is; from it on,
	// the table's changes wait.
	idx := 0
	for idx < len(txns) && txns[idx] != ce.it.txn {
		idx++
	}
	after, err := a.dropStopped(ctx, txns[idx:])
	if err != nil {
		return err
	}
	rest := append(slices.Clone(txns[:idx]), after...)
	if len(rest) == 0 {
		return nil
	}
	return a.applyBatch(ctx, rest)
}

// dropStopped returns txns without the transactions that write only the
// stopped table; one that writes it and another table turns the stop into
// a stop of the whole link (errTableRestart).
func (a *Applier) dropStopped(ctx context.Context, txns []*binlog.Txn) ([]*binlog.Txn, error) {
	if a.tstop == nil {
		return txns, nil
	}
	out := txns[:0:0]
	for _, t := range txns {
		this, other := touches(t, a.tstop.schema, a.tstop.table)
		switch {
		case this && other:
			return nil, a.toWholeLink(ctx, "a later transaction writes the stopped table and another one")
		case this:
			a.m.heldBack.WithLabelValues(a.peer).Inc()
		default:
			out = append(out, t)
		}
	}
	return out, nil
}

// toWholeLink turns the table stop into a stop of the whole link at the
// table's refused change: the link restarts from before it and holds
// there.
func (a *Applier) toWholeLink(ctx context.Context, why string) error {
	if _, err := a.db.ExecContext(ctx, stopToLinkSQL, a.cfg.Peer.ID); err != nil {
		return fmt.Errorf("update mlr.link_stops: %w", err)
	}
	a.log.Warn("stopping the whole link at the stopped table's refused change: "+why,
		zap.String("table", a.tstop.schema+"."+a.tstop.table), zap.String("gtid", a.tstop.gtid))
	return errTableRestart
}

// tableRequests acts on an operator's retry or skip of the stopped table,
// or on its periodic retry: the link restarts from before the refused
// change (with the skip armed).
func (a *Applier) tableRequests(ctx context.Context) error {
	if a.tstop == nil {
		return nil
	}
	rows, err := a.db.QueryContext(ctx, requestsSQL, a.cfg.Peer.ID)
	if err != nil {
		return nil // the local server may be restarting; asked again later
	}
	var acts [][3]string
	for rows.Next() {
		var act, g, by string
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
			a.log.Info("retrying the stopped table on request", zap.String("table", a.tstop.schema+"."+a.tstop.table))
			return errTableRestart
		case r[0] == "skip" && r[1] == a.tstop.gtid:
			a.skipGTID, a.skipKey, a.skipBy = a.tstop.gtid, a.tstop.keyHash, r[2]
			a.log.Info("skipping the stopped table's refused change on request", zap.String("table", a.tstop.schema+"."+a.tstop.table))
			return errTableRestart
		case r[0] == "skip":
			a.log.Warn("skip request ignored: it names another transaction than the one the table is stopped at",
				zap.String("requested", r[1]), zap.String("stopped_at", a.tstop.gtid))
		}
	}
	if time.Now().After(a.tstop.retryAt) {
		return errTableRestart
	}
	return nil
}

// resumedTable clears an armed table stop once the batch holding its
// refused change committed (applied, or skipped into the conflict log).
func (a *Applier) resumedTable(ctx context.Context, txns []*binlog.Txn) {
	if a.armed == nil {
		return
	}
	for _, t := range txns {
		if t.Pos.GTID != a.armed.gtid {
			continue
		}
		if _, err := a.db.ExecContext(ctx, stopDeleteSQL, a.cfg.Peer.ID); err != nil {
			a.log.Warn("could not clear mlr.link_stops", redact.Err(err))
			return // cleared by the next batch that holds the change, or the next stop
		}
		a.log.Info("stopped table resumed", zap.String("table", a.armed.schema+"."+a.armed.table),
			zap.String("gtid", a.armed.gtid), zap.Bool("skipped", a.skipGTID != ""))
		a.armed = nil
		a.skipGTID, a.skipKey, a.skipBy = "", "", ""
		a.mu.Lock()
		a.status.Stopped = nil
		a.mu.Unlock()
		a.m.stopped.WithLabelValues(a.peer).Set(0)
		return
	}
}
