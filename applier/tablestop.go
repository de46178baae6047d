package applier

import (
	"bytes"
	"context"
	"database/sql"
	"encoding/gob"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/redact"
)

// Table stops.
//
// A remote change refused by a key the rule cannot place, in a table
// under on_constraint stop, stops only that table when nothing orders its
// changes against other tables' changes: the table has no foreign key to
// or from another table, and the refusal is not a foreign key's. (Where
// order matters, the whole link stops instead: stop.go.) So does schema
// drift (the local table, or a column a change names, is missing: DDL
// run in the peer's region first): the table waits for the DDL (kind
// ddl, retried every ddlRetry) while the peer's other tables go on.
//
// The stop is recorded first, on its own (mlr.table_stops); then the batch
// is applied again with every change to that table kept, in source order,
// in mlr.held, inside the same local transaction as the batch's other rows
// and the checkpoint. Later changes to the table join them there. So the
// peer's other tables and the checkpoint go on, and a crash at any point
// loses nothing: every change the checkpoint passed is applied or held.
//
// Between batches, the applier tries a stopped table's held changes again
// every stopRetry, or at once when an operator asks (`mlproxy link retry|
// skip PEER --table db.t`, written into the stop's row): a chunk of held
// changes is applied and deleted in one local transaction (with the loop
// marker), and the chunk that empties mlr.held for the table deletes the
// stop. A skip records exactly the change the table stopped at in the
// conflict log (outcome skipped) and applies the rest.
//
// The trade-off: a resumed table's changes keep their source order among
// themselves, but come later than other tables' changes that followed
// them at the source; a source transaction that wrote the stopped table
// and others is applied in two parts. Tombstones of a table with held
// changes are not collected (gc.go): a held change may be concurrent with
// one, and must meet it when it is applied.

// tableStop is a table whose changes from the peer wait in mlr.held.
type tableStop struct {
	Stop
	tk      tableKey
	parked  int       // changes in mlr.held
	tried   time.Time // the last attempt to resume
	backlog bool      // the last resume stopped at maxResumeChunks
}

// heldChunk is how many held changes one resuming transaction applies
// (a variable: tests make chunks small).
var heldChunk = 256

// ddlRetry is how often a table waiting for DDL is tried again.
var ddlRetry = 2 * time.Second

const (
	fkSQL = "SELECT COUNT(*) FROM information_schema.REFERENTIAL_CONSTRAINTS " +
		"WHERE (CONSTRAINT_SCHEMA = ? AND TABLE_NAME = ?) OR (UNIQUE_CONSTRAINT_SCHEMA = ? AND REFERENCED_TABLE_NAME = ?)"
	tableStopsSQL = "SELECT db, tbl, kind, gtid, key_hash, error, COALESCE(UNIX_TIMESTAMP(since), 0) FROM mlr.table_stops WHERE peer_id = ?"
	heldCountSQL  = "SELECT db, tbl, COUNT(*) FROM mlr.held WHERE peer_id = ? GROUP BY db, tbl"
	heldSeqSQL    = "SELECT COALESCE(MAX(seq), 0) FROM mlr.held WHERE peer_id = ?"
	tableStopSQL  = "INSERT INTO mlr.table_stops (peer_id, db, tbl, kind, gtid, pk, key_hash, error) VALUES (?, ?, ?, ?, ?, ?, ?, ?) " +
		"ON DUPLICATE KEY UPDATE since = IF(gtid = VALUES(gtid) AND key_hash = VALUES(key_hash), since, CURRENT_TIMESTAMP(6)), " +
		"kind = VALUES(kind), gtid = VALUES(gtid), pk = VALUES(pk), key_hash = VALUES(key_hash), error = VALUES(error)"
	tableRequestsSQL = "SELECT db, tbl, request, COALESCE(request_gtid, ''), COALESCE(requested_by, '') FROM mlr.table_stops WHERE peer_id = ? AND request IS NOT NULL"
	tableTakenSQL    = "UPDATE mlr.table_stops SET request = NULL, request_gtid = NULL, requested_by = NULL WHERE peer_id = ? AND db = ? AND tbl = ?"
	tableResumedSQL  = "DELETE FROM mlr.table_stops WHERE peer_id = ? AND db = ? AND tbl = ?"
	heldReadSQL      = "SELECT seq, gtid, source, chg FROM mlr.held WHERE peer_id = ? AND db = ? AND tbl = ? ORDER BY seq LIMIT ? FOR UPDATE"
	heldDeleteSQL    = "DELETE FROM mlr.held WHERE peer_id = ? AND db = ? AND tbl = ? AND seq <= ?"
	heldInsertSQL    = "INSERT INTO mlr.held (peer_id, db, tbl, seq, gtid, source, chg) VALUES "
)

// loadStops reads the peer's stopped tables (Run calls it at start).
// Without mlr.table_stops (schema apply of an earlier release), a refused
// change stops the whole link.
func (a *Applier) loadStops(ctx context.Context) error {
	a.stops = map[tableKey]*tableStop{}
	ok, err := a.internalTables(ctx, "table_stops", "held")
	if err != nil {
		return fmt.Errorf("look for mlr.table_stops: %w", err)
	}
	if a.tableScope = ok; !a.tableScope {
		a.log.Warn("mlr.table_stops or mlr.held is missing (run `mlproxy schema apply`): a change a unique key refuses stops the whole link, not only its table")
		return nil
	}
	rows, err := a.db.QueryContext(ctx, tableStopsSQL, a.cfg.Peer.ID)
	if err != nil {
		return fmt.Errorf("read mlr.table_stops: %w", err)
	}
	for rows.Next() {
		s := &tableStop{}
		var since string
		if err := rows.Scan(&s.tk.db, &s.tk.table, &s.Kind, &s.GTID, &s.KeyHash, &s.Error, &since); err != nil {
			rows.Close()
			return fmt.Errorf("read mlr.table_stops: %w", err)
		}
		s.Table, s.Since, s.tried = s.tk.String(), parseUnix(since), time.Now()
		a.stops[s.tk] = s
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("read mlr.table_stops: %w", err)
	}
	if rows, err = a.db.QueryContext(ctx, heldCountSQL, a.cfg.Peer.ID); err != nil {
		return fmt.Errorf("count mlr.held: %w", err)
	}
	for rows.Next() {
		var tk tableKey
		var c int
		if err := rows.Scan(&tk.db, &tk.table, &c); err != nil {
			rows.Close()
			return fmt.Errorf("count mlr.held: %w", err)
		}
		if s := a.stops[tk]; s != nil {
			s.parked = c
		} else {
			// Held changes without their stop (it was deleted by hand):
			// the table stays stopped until they are applied, and shows.
			s := &tableStop{Stop: Stop{Kind: StopConstraint, Table: tk.String(), Error: "changes held in mlr.held without a row in mlr.table_stops", Since: time.Now()},
				tk: tk, parked: c}
			a.stops[tk] = s
			if err := a.recordStop(ctx, s, nil); err != nil {
				rows.Close()
				return fmt.Errorf("record the stop of %s in mlr.table_stops: %w", tk, err)
			}
		}
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return fmt.Errorf("count mlr.held: %w", err)
	}
	if err := a.db.QueryRowContext(ctx, heldSeqSQL, a.cfg.Peer.ID).Scan(&a.heldSeq); err != nil {
		return fmt.Errorf("read mlr.held: %w", err)
	}
	for _, s := range a.stops {
		a.log.Warn("table stopped: its changes from the peer wait in mlr.held", zap.String("kind", s.Kind), zap.String("table", s.Table),
			zap.String("key_hash", s.KeyHash), zap.String("gtid", s.GTID), zap.Int("held", s.parked), zap.String("error", s.Error))
	}
	a.publishStops()
	return nil
}

// tableScoped reports whether err, met at a change to tk, may stop only
// that table (see the top of this file).
func (a *Applier) tableScoped(ctx context.Context, tk tableKey, err error) bool {
	if !a.tableScope || a.cfg.Forwards {
		// A forwarding region would pass a held change on late, with its
		// old stamp: a region it reaches may have collected a tombstone
		// concurrent with it by then (gc.go's slack covers a hop's
		// delivery delay, not a stop's).
		return false
	}
	switch errNumber(err) {
	case 1216, 1217, 1451, 1452: // foreign key refusals: order across tables matters
		return false
	}
	var n int
	if err := a.db.QueryRowContext(ctx, fkSQL, tk.db, tk.table, tk.db, tk.table).Scan(&n); err != nil {
		a.log.Warn("could not look for foreign keys; stopping the whole link", zap.String("table", tk.String()), redact.Err(err))
		return false
	}
	return n == 0
}

// scopeStop stops only the table of err's change when err is a key's
// refusal or schema drift that may stop one table (tableScoped); the
// caller then applies the batch again, which holds the table's changes.
// ok is false when the link must handle err as before.
func (a *Applier) scopeStop(ctx context.Context, err error) (ok bool) {
	var ce *constraintError
	var de *driftError
	var it *item
	var cause error
	kind := StopConstraint
	switch {
	case errors.As(err, &ce):
		it, cause = ce.it, ce.err
	case errors.As(err, &de):
		it, cause, kind = de.it, de.err, StopDDL
	default:
		return false
	}
	if !a.tableScoped(ctx, it.tk, cause) {
		return false
	}
	if serr := a.stopTable(ctx, kind, it, cause); serr != nil {
		if ctx.Err() == nil {
			a.log.Warn("could not stop only the table; the whole link waits", zap.String("table", it.tk.String()), zap.String("gtid", it.txn.Pos.GTID), redact.Err(serr))
		}
		return false
	}
	return true
}

// stopTable records that cause, met at it, stops its table.
func (a *Applier) stopTable(ctx context.Context, kind string, it *item, cause error) error {
	tk := it.tk
	s := &tableStop{Stop: Stop{Kind: kind, Table: tk.String(), KeyHash: keyHash(it.key), GTID: it.txn.Pos.GTID,
		Error: redact.Error(cause), Since: time.Now()}, tk: tk, tried: time.Now()}
	if err := a.recordStop(ctx, s, it.pk); err != nil {
		return fmt.Errorf("record the stop of %s in mlr.table_stops: %w", tk, err)
	}
	a.stops[tk] = s
	a.publishStops()
	if kind == StopDDL {
		a.log.Warn("table waits for DDL: the peer sends changes this region's table cannot take yet (the DDL ran in the peer's region first); "+
			"its changes from the peer wait, its other tables go on; run the DDL here (`mlproxy schema ddl`, then `mlproxy schema apply`): the table then resumes by itself",
			zap.String("table", s.Table), zap.String("gtid", s.GTID), redact.Err(cause))
		return nil
	}
	a.log.Error("table stopped: a remote change is refused by a key the conflict rule cannot place; the table's later changes from the peer wait "+
		"(its other tables go on): fix the local row and `mlproxy link retry`, or `mlproxy link skip` it (recorded in the conflict log)",
		zap.String("table", s.Table), zap.String("key_hash", s.KeyHash), zap.String("gtid", s.GTID), redact.Err(cause))
	return nil
}

// stoppedTable is the stop of rc's table, or nil.
func (a *Applier) stoppedTable(rc *binlog.RowChange) *tableStop {
	if len(a.stops) == 0 {
		return nil
	}
	return a.stops[tableKey{rc.Schema, rc.Table}]
}

// touchesStopped reports whether txns write a stopped table.
func (a *Applier) touchesStopped(txns []*binlog.Txn) bool {
	if len(a.stops) == 0 {
		return false
	}
	for _, t := range txns {
		for i := range t.Changes {
			if a.stoppedTable(&t.Changes[i]) != nil {
				return true
			}
		}
	}
	return false
}

// heldChange is a change kept for a stopped table.
type heldChange struct {
	t  *binlog.Txn
	rc *binlog.RowChange
}

// writeHeld inserts held into mlr.held on conn, in order.
func (a *Applier) writeHeld(ctx context.Context, conn *sql.Conn, st *batchState, held []heldChange) error {
	for len(held) > 0 {
		var args []any
		n, size := 0, 0
		for n < len(held) && n < 64 && size < maxChunkBytes {
			h := held[n]
			blob, err := encodeChange(h.rc)
			if err != nil {
				return fmt.Errorf("hold a change to stopped table %s.%s: %w", h.rc.Schema, h.rc.Table, err)
			}
			a.heldSeq++
			args = append(args, a.cfg.Peer.ID, h.rc.Schema, h.rc.Table, a.heldSeq, h.t.Pos.GTID, h.t.Source, blob)
			size += len(blob)
			n++
			if st.held == nil {
				st.held = map[tableKey]int{}
			}
			st.held[tableKey{h.rc.Schema, h.rc.Table}]++
		}
		q := heldInsertSQL + strings.Repeat("(?, ?, ?, ?, ?, ?, ?), ", n-1) + "(?, ?, ?, ?, ?, ?, ?)"
		if _, err := conn.ExecContext(ctx, q, args...); err != nil {
			return fmt.Errorf("hold changes to stopped tables in mlr.held: %w", err)
		}
		held = held[n:]
	}
	return nil
}

// encodeChange and decodeChange keep a change in mlr.held with its values'
// Go types (the applier matches keys by them).
func encodeChange(rc *binlog.RowChange) ([]byte, error) {
	var b bytes.Buffer
	if err := gob.NewEncoder(&b).Encode(rc); err != nil {
		return nil, err
	}
	return b.Bytes(), nil
}

func decodeChange(blob []byte) (binlog.RowChange, error) {
	var rc binlog.RowChange
	if err := gob.NewDecoder(bytes.NewReader(blob)).Decode(&rc); err != nil {
		return rc, err
	}
	// gob reads an empty byte slice back as a nil one, which the driver
	// would send as NULL: an empty BLOB or binary string stays empty (a
	// NULL is an untyped nil, which gob keeps).
	for _, r := range []binlog.Row{rc.Before, rc.After} {
		for k, v := range r {
			if b, ok := v.([]byte); ok && b == nil {
				r[k] = []byte{}
			}
		}
	}
	return rc, nil
}

// resumeJob is a stopped table to try now.
type resumeJob struct {
	s    *tableStop
	skip bool   // skip the change it stopped at
	by   string // who asked
}

// maxResumeChunks bounds the held chunks one resume applies before the
// applier goes back to the peer's other tables (a long backlog resumes
// over several rounds, a stopPoll apart at most).
var maxResumeChunks = 16

// resumeDue tries the stopped tables that are due (dueStops). It runs
// between batches, on the serial session; it returns only errors that
// stop the applier.
func (a *Applier) resumeDue(ctx context.Context) error {
	jobs, err := a.dueStops(ctx)
	if err != nil {
		return err
	}
	return a.resumeJobs(ctx, jobs)
}

// resumeJobs tries jobs in order.
func (a *Applier) resumeJobs(ctx context.Context, jobs []resumeJob) error {
	for _, j := range jobs {
		if err := a.resumeTable(ctx, j.s, j.skip, j.by); err != nil {
			return err
		}
	}
	return nil
}

// dueStops reads operators' requests for stopped tables (at most every
// stopPoll) and returns the tables to try now: asked for, due for their
// periodic retry (stopRetry; ddlRetry while waiting for DDL), or part way
// through a backlog.
func (a *Applier) dueStops(ctx context.Context) ([]resumeJob, error) {
	if len(a.stops) == 0 || time.Now().Before(a.nextPoll) {
		return nil, nil
	}
	a.nextPoll = time.Now().Add(stopPoll)
	type request struct{ action, gtid, by string }
	asked := map[tableKey]request{}
	rows, err := a.db.QueryContext(ctx, tableRequestsSQL, a.cfg.Peer.ID)
	if err != nil {
		a.log.Debug("could not read requests for stopped tables", redact.Err(err))
	} else {
		for rows.Next() {
			var tk tableKey
			var r request
			if rows.Scan(&tk.db, &tk.table, &r.action, &r.gtid, &r.by) == nil {
				asked[tk] = r
			}
		}
		rows.Close()
	}
	keys := make([]tableKey, 0, len(a.stops))
	for tk := range a.stops {
		keys = append(keys, tk)
	}
	slices.SortFunc(keys, func(x, y tableKey) int { return strings.Compare(x.String(), y.String()) })
	var jobs []resumeJob
	for _, tk := range keys {
		s := a.stops[tk]
		r, ok := asked[tk]
		if ok {
			if _, err := a.db.ExecContext(ctx, tableTakenSQL, a.cfg.Peer.ID, tk.db, tk.table); err != nil {
				return nil, err
			}
		}
		skip := ok && r.action == "skip"
		if skip && r.gtid != s.GTID {
			a.log.Warn("skip request ignored: it names another transaction than the one the table is stopped at",
				zap.String("table", s.Table), zap.String("requested", r.gtid), zap.String("stopped_at", s.GTID))
			skip, ok = false, false
		}
		every := stopRetry
		if s.Kind == StopDDL {
			every = ddlRetry
		}
		if !ok && !s.backlog && time.Since(s.tried) < every {
			continue
		}
		s.tried = time.Now()
		jobs = append(jobs, resumeJob{s: s, skip: skip, by: r.by})
	}
	return jobs, nil
}

// resumeTable applies s's held changes, chunk by chunk, until they are all
// applied (the stop is then gone), one is refused again (the changes
// before it are committed and the stop names it), or maxResumeChunks
// chunks went in (the rest waits for the next round). skip passes over
// the change s stopped at, recording it in the conflict log.
func (a *Applier) resumeTable(ctx context.Context, s *tableStop, skip bool, by string) error {
	if skip {
		a.skipGTID, a.skipKey, a.skipBy = s.GTID, s.KeyHash, by
	}
	defer func() { a.skipGTID, a.skipKey, a.skipBy = "", "", "" }()
	s.backlog = false
	serial := skip // a skip is matched one change at a time (applyGuarded)
	limit, applied, chunks := heldChunk, 0, 0
	for {
		n, done, failAt, err := a.resumeChunk(ctx, s, serial, limit)
		var ce *constraintError
		var de *driftError
		switch {
		case err == nil && done:
			delete(a.stops, s.tk)
			a.publishStops()
			a.m.tableStops.DeleteLabelValues(a.peer, s.tk.db, s.tk.table)
			a.m.parked.DeleteLabelValues(a.peer, s.tk.db, s.tk.table)
			a.log.Info("stopped table resumed", zap.String("table", s.Table), zap.Int("applied", applied+n), zap.Bool("skipped", skip))
			return nil
		case err == nil:
			applied += n
			if chunks++; chunks >= maxResumeChunks {
				s.backlog = true
				a.log.Info("stopped table resuming: a chunk of its held changes applied, the rest follows", zap.String("table", s.Table),
					zap.Int("applied", applied), zap.Int("held", s.parked))
				return nil
			}
			// The next chunk starts after these (at the refused change,
			// when these were the ones before it).
			serial, limit = false, heldChunk
		case errors.Is(err, errSplit) && !serial:
			serial = true // apply the chunk again one change at a time
		case (errors.As(err, &ce) || errors.As(err, &de)) && failAt > 0:
			limit = failAt // commit the changes before the refused one
		case errors.As(err, &ce):
			return a.restopTable(ctx, s, StopConstraint, ce.it, ce.err)
		case errors.As(err, &de):
			return a.restopTable(ctx, s, StopDDL, de.it, de.err)
		case retryable(err) || ctx.Err() != nil:
			a.log.Warn("resuming a stopped table failed; trying again later", zap.String("table", s.Table), zap.String("gtid", s.GTID), redact.Err(err))
			return ctx.Err()
		default:
			return fmt.Errorf("resume stopped table %s from peer %s: %w", s.Table, a.peer, err)
		}
	}
}

// resumeChunk applies and deletes the next limit held changes of s in one
// local transaction; done when that emptied mlr.held for the table (the
// stop is deleted in the same transaction). A change refused or not
// placeable (schema drift) fails the chunk; failAt is its index in it.
func (a *Applier) resumeChunk(ctx context.Context, s *tableStop, serial bool, limit int) (n int, done bool, failAt int, err error) {
	conn, st, err := a.begin(ctx, true)
	if err != nil {
		return 0, false, 0, err
	}
	st.park = false // these are the held changes
	txns, last, n, err := a.readHeld(ctx, conn, s.tk, limit)
	if err == nil && n > 0 {
		if err = a.applyTxns(ctx, conn, st, txns, serial); err == nil {
			_, err = conn.ExecContext(ctx, heldDeleteSQL, a.cfg.Peer.ID, s.tk.db, s.tk.table, last)
		} else {
			failAt = failIndex(txns, err)
		}
	}
	done = n < limit
	if err == nil && done {
		_, err = conn.ExecContext(ctx, tableResumedSQL, a.cfg.Peer.ID, s.tk.db, s.tk.table)
	}
	if err == nil {
		err = a.fence(ctx, conn)
	}
	if err != nil {
		a.rollback(ctx, conn)
		return 0, false, failAt, err
	}
	if _, err := conn.ExecContext(ctx, "COMMIT"); err != nil {
		a.dropSession() // it may have committed: the next attempt reads mlr.held again
		return 0, false, 0, fmt.Errorf("commit held changes of %s: %w", s.Table, err)
	}
	s.parked = max(s.parked-n, 0)
	a.m.parked.WithLabelValues(a.peer, s.tk.db, s.tk.table).Set(float64(s.parked))
	rows := a.countRows(st)
	a.mu.Lock()
	a.status.Rows += rows
	a.status.Conflicts += uint64(len(st.confl))
	a.mu.Unlock()
	return n, done, 0, nil
}

// failIndex is the position in txns' changes of the change err names (a
// key's refusal or schema drift); 0 when it names none of them.
func failIndex(txns []*binlog.Txn, err error) int {
	var ce *constraintError
	var de *driftError
	var rc *binlog.RowChange
	switch {
	case errors.As(err, &ce):
		rc = ce.it.rc
	case errors.As(err, &de):
		rc = de.it.rc
	default:
		return 0
	}
	i := 0
	for _, t := range txns {
		for j := range t.Changes {
			if &t.Changes[j] == rc {
				return i
			}
			i++
		}
	}
	return 0
}

// readHeld reads (and locks) the next limit held changes of tk as
// transactions: consecutive changes of one source transaction form one.
func (a *Applier) readHeld(ctx context.Context, conn *sql.Conn, tk tableKey, limit int) (txns []*binlog.Txn, last uint64, n int, err error) {
	rows, err := conn.QueryContext(ctx, heldReadSQL, a.cfg.Peer.ID, tk.db, tk.table, limit)
	if err != nil {
		return nil, 0, 0, fmt.Errorf("read mlr.held: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var gtid string
		var source uint16
		var blob []byte
		if err := rows.Scan(&last, &gtid, &source, &blob); err != nil {
			return nil, 0, 0, fmt.Errorf("read mlr.held: %w", err)
		}
		rc, err := decodeChange(blob)
		if err != nil {
			return nil, 0, 0, fmt.Errorf("decode held change %d of %s: %w", last, tk, err)
		}
		n++
		if k := len(txns); k > 0 && txns[k-1].Pos.GTID == gtid && txns[k-1].Source == source {
			txns[k-1].Changes = append(txns[k-1].Changes, rc)
			continue
		}
		txns = append(txns, &binlog.Txn{Source: source, Pos: binlog.Position{GTID: gtid}, Last: true, Changes: []binlog.RowChange{rc}})
	}
	if err := rows.Err(); err != nil {
		return nil, 0, 0, fmt.Errorf("read mlr.held: %w", err)
	}
	return txns, last, n, nil
}

// restopTable records that s's held changes are refused again, at it
// (the change it stopped at, or a later one after a skip or a retry got
// past it).
func (a *Applier) restopTable(ctx context.Context, s *tableStop, kind string, it *item, cause error) error {
	kh, gtid := keyHash(it.key), it.txn.Pos.GTID
	moved := kh != s.KeyHash || gtid != s.GTID || kind != s.Kind
	s.Kind, s.KeyHash, s.GTID, s.Error = kind, kh, gtid, redact.Error(cause)
	if err := a.recordStop(ctx, s, it.pk); err != nil {
		a.log.Warn("could not update mlr.table_stops", zap.String("table", s.Table), zap.String("gtid", gtid), redact.Err(err))
	}
	if moved {
		s.Since = time.Now()
		a.log.Error("stopped table resumed and stopped again at a later change", zap.String("kind", kind), zap.String("table", s.Table),
			zap.String("key_hash", kh), zap.String("gtid", gtid), redact.Err(cause))
	} else {
		a.log.Debug("stopped table still refused", zap.String("table", s.Table), redact.Err(cause))
	}
	a.publishStops()
	return nil
}

// recordStop writes s into mlr.table_stops (since moves only when the
// change it names does).
func (a *Applier) recordStop(ctx context.Context, s *tableStop, pk []any) error {
	pkJSON, err := jsonText(pk)
	if err != nil {
		return err
	}
	_, err = a.db.ExecContext(ctx, tableStopSQL, a.cfg.Peer.ID, s.tk.db, s.tk.table, s.Kind, s.GTID, pkJSON, s.KeyHash, truncate(s.Error, 1024))
	return err
}

// publishStops copies the stopped tables to Status and the metrics.
func (a *Applier) publishStops() {
	out := make([]Stop, 0, len(a.stops))
	for _, s := range a.stops {
		out = append(out, s.Stop)
		a.m.tableStops.WithLabelValues(a.peer, s.tk.db, s.tk.table).Set(1)
		a.m.parked.WithLabelValues(a.peer, s.tk.db, s.tk.table).Set(float64(s.parked))
	}
	slices.SortFunc(out, func(x, y Stop) int { return strings.Compare(x.Table, y.Table) })
	a.mu.Lock()
	a.status.TableStops = out
	a.mu.Unlock()
}
