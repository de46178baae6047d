package applier

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"hash/maphash"
	"slices"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/redact"
	"github.com/mlproxy/mlproxy/schema"
)

// Parallel apply (Config.Workers > 1).
//
// Run's goroutine is the coordinator: it forms batches as serial apply
// does (consecutive whole transactions waiting in the relay), numbers them in source order, computes each batch's
// writeset (writeset.go) and hands the batch to one of Workers worker
// sessions: to a worker that holds none of its keys when no in-flight
// batch shares a key with it, to the one worker whose in-flight batches
// share keys with it (that worker applies it after them), and otherwise
// it waits until the batches it depends on have committed (counted in
// mlproxy_applier_dependency_waits_total). A worker holds at most
// queueDepth batches.
//
// Workers read, decide and write at once, but COMMIT IN SOURCE ORDER:
// before writing the checkpoint row and committing, a batch waits until
// its predecessor has committed. So the single checkpoint row keeps
// meaning "everything up to here is committed", resume is unchanged, and
// a batch never reads a key an uncommitted batch wrote (they would share
// the key, and one waits for the other). The checkpoint row is written
// just before COMMIT, when no other worker holds it; the loop marker of a
// worker's transaction is that worker's own row of mlr.markers (written
// first, like the serial marker), so workers never wait for each other's
// locks on either row. The tailer treats a mlr.markers row as it treats
// a mlr.checkpoints row.
//
// Worker sessions run READ COMMITTED: a locking read of an absent key
// then takes no gap lock, which would make workers inserting neighbouring
// keys deadlock over the gap. A row a local client inserts between the
// read and the write is refused by its key and the batch is applied again
// (one change at a time, then on the serial session).
//
// Failures:
//   - retryable (deadlock, lock wait timeout, lost connection): the batch
//     rolls back and is retried at once (then with backoff). While it
//     retries, every later batch that reaches its turn to commit rolls
//     back and waits for it: a later batch may hold the lock the retrying
//     one waits for, a wait InnoDB cannot see (the later one waits for the
//     earlier in mlproxy), and the worker sessions use a short
//     innodb_lock_wait_timeout (workerLockWait) to turn such a wait into a
//     retry. A COMMIT whose reply was lost is recognised, as in serial
//     apply, by the checkpoint already pointing at the batch's end.
//   - anything else (a key refusal, an unknown column, ...): the batch and
//     every later in-flight batch roll back (earlier ones commit); then the
//     coordinator applies them again, in order, the serial way on its own
//     session, which retries, stops the link (on_constraint: stop), logs
//     refused changes or fails exactly as serial apply does.
//
// What stays serial, on the coordinator's session after every in-flight
// batch has committed: a transaction streamed in pieces, a batch whose
// writeset cannot be computed, and the replay above. Transactions without
// row changes join the next batch that has rows; when the relay runs dry
// they are committed alone, serially (a checkpoint-only commit, kept out
// of the binlog). Held
// changes (clock ahead) hold the coordinator before dispatch; in-flight
// batches go on.

// queueDepth is how many batches one worker holds (one applying, one
// waiting): with the relay's bound, memory stays bounded by about
// 2*Workers batches of maxBatchBytes.
const queueDepth = 2

// workerLockWait is the worker sessions' innodb_lock_wait_timeout, in
// seconds.
const workerLockWait = 5

// markerSQL is a worker's loop marker: its own row of mlr.markers. Args:
// peer_id, worker.
const markerSQL = "INSERT INTO mlr.markers (peer_id, worker, batches) VALUES (?, ?, 1) " +
	"ON DUPLICATE KEY UPDATE batches = batches + 1"

// errAborted: the batch rolled back because an earlier batch failed for
// good; the coordinator applies it again.
var errAborted = errors.New("rolled back: an earlier batch failed")

// errYield: the batch rolled back to let an earlier retrying batch pass.
var errYield = errors.New("rolled back for an earlier batch that retries")

// job is one batch dispatched to a worker.
type job struct {
	seq  uint64
	txns []*binlog.Txn
	keys []uint64
	// pos is the checkpoint after the batch (GTID position merged with
	// every earlier batch's).
	pos binlog.Position
	// unsaved are source transactions of earlier batches not saved (see
	// Applier.unsaved), counted with this one.
	unsaved uint64
	w       *worker
}

type result struct {
	j   *job
	err error
}

// order is the commit order the workers share.
type order struct {
	mu        sync.Mutex
	changed   chan struct{}   // closed and replaced on every change
	committed uint64          // seq of the last committed batch
	failed    uint64          // lowest seq that failed for good; 0: none
	retrying  map[uint64]bool // seqs retrying a retryable failure
}

func (o *order) notify() {
	close(o.changed)
	o.changed = make(chan struct{})
}

// wait blocks until ready (called under o.mu) says done, or ctx ends.
func (o *order) wait(ctx context.Context, ready func() (bool, error)) error {
	for {
		o.mu.Lock()
		ok, err := ready()
		ch := o.changed
		o.mu.Unlock()
		if ok || err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

// turn waits until batch seq may commit: its predecessor committed. It
// returns errAborted when an earlier batch failed for good and errYield
// when one is retrying.
func (o *order) turn(ctx context.Context, seq uint64) error {
	return o.wait(ctx, func() (bool, error) {
		if o.failed != 0 && o.failed < seq {
			return false, errAborted
		}
		if o.retryingBelow(seq) {
			return false, errYield
		}
		return o.committed == seq-1, nil
	})
}

func (o *order) retryingBelow(seq uint64) bool {
	for s := range o.retrying {
		if s < seq {
			return true
		}
	}
	return false
}

func (o *order) set(f func()) {
	o.mu.Lock()
	f()
	o.notify()
	o.mu.Unlock()
}

// worker is one apply session of a pipeline: an Applier of its own (its
// session, statements and plans) that publishes to the parent.
type worker struct {
	id     uint16
	a      *Applier
	queue  chan *job
	queued int // batches dispatched and not finished (coordinator only)
}

// pipeline is the coordinator's state.
type pipeline struct {
	a       *Applier
	o       *order
	workers []*worker
	done    chan result
	seed    maphash.Seed
	seq     uint64          // last dispatched
	tail    binlog.Position // checkpoint after the last dispatched batch
	held    map[uint64]*hold
	flight  map[uint64]*job // dispatched, not finished, by seq
	replay  []*job          // finished without committing
	empties []*binlog.Txn   // transactions without rows not yet dispatched
	cancel  context.CancelFunc
	wg      sync.WaitGroup
}

// hold counts one worker's in-flight batches holding a key.
type hold struct {
	w *worker
	n int
}

// internalTables reports whether the mlr tables names all exist (schema
// apply of this release created them).
func (a *Applier) internalTables(ctx context.Context, names ...string) (bool, error) {
	var n int
	err := a.db.QueryRowContext(ctx, "SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = ? AND TABLE_NAME IN ('"+
		strings.Join(names, "', '")+"')", schema.Internal).Scan(&n)
	return n == len(names), err
}

// runParallel is Run with cfg.Workers sessions (see the top of this file).
func (a *Applier) runParallel(ctx context.Context, in <-chan *binlog.Txn) error {
	p := a.newPipeline(ctx)
	defer p.stop()
	var carry *binlog.Txn
	for {
		if len(a.stops) > 0 && !time.Now().Before(a.nextPoll) {
			// Stopped tables resume on the serial session, between
			// batches, when one is due.
			jobs, err := a.dueStops(ctx)
			if err != nil {
				return a.fail(err)
			}
			if len(jobs) > 0 {
				if err := p.drain(ctx); err != nil {
					return a.fail(err)
				}
				if err := a.resumeJobs(ctx, jobs); err != nil {
					return a.fail(err)
				}
				p.resync()
			}
		}
		first := carry
		carry = nil
		if first == nil && len(p.empties) > 0 {
			select {
			case t, ok := <-in:
				if ok {
					first = t
				} else {
					in = nil // closed: taken below
				}
			default:
			}
			if first == nil {
				if err := p.drain(ctx); err != nil { // saves the empties' progress
					return a.fail(err)
				}
			}
		}
		if first == nil {
			if in == nil {
				a.log.Info("applier stopped: relay closed")
				return nil
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-a.pollStops():
				continue
			case r := <-p.done:
				p.finish(r)
				if len(p.replay) > 0 {
					if err := p.drain(ctx); err != nil {
						return a.fail(err)
					}
				}
				continue
			case t, ok := <-in:
				if !ok {
					if err := p.drain(ctx); err != nil {
						return a.fail(err)
					}
					a.log.Info("applier stopped: relay closed")
					return nil
				}
				first = t
			}
		}
		if first.Piece != 0 {
			return a.fail(fmt.Errorf("apply from peer %s: piece %d of seq %d arrived first: %w", a.peer, first.Piece, first.Seq, ErrPieceOrder))
		}
		if !first.Last {
			if err := p.drain(ctx); err != nil {
				return a.fail(err)
			}
			if err := a.applyPieces(ctx, first, in); err != nil {
				return a.fail(err)
			}
			p.resync()
			continue
		}
		txns, next, closed := a.gather(first, in)
		carry = next
		if err := p.dispatch(ctx, txns); err != nil {
			return a.fail(err)
		}
		if closed {
			if err := p.drain(ctx); err != nil {
				return a.fail(err)
			}
			a.log.Info("applier stopped: relay closed")
			return nil
		}
	}
}

func (a *Applier) newPipeline(ctx context.Context) *pipeline {
	wctx, cancel := context.WithCancel(ctx)
	p := &pipeline{
		a:      a,
		o:      &order{changed: make(chan struct{}), retrying: map[uint64]bool{}},
		done:   make(chan result, a.cfg.Workers*queueDepth),
		seed:   maphash.MakeSeed(),
		held:   map[uint64]*hold{},
		flight: map[uint64]*job{},
		cancel: cancel,
	}
	p.resync()
	for i := 0; i < a.cfg.Workers; i++ {
		w := &worker{id: uint16(i + 1), queue: make(chan *job, queueDepth), a: &Applier{
			cfg: a.cfg, db: a.db, tables: a.tables, clock: a.clock, m: a.m, peer: a.peer,
			log:   a.log.With(zap.Int("worker", i+1)),
			stmts: map[string]*sql.Stmt{}, plans: map[tableKey]*plan{},
			newBO: a.newBO, commitHook: a.commitHook, changeHook: a.changeHook, holdPoll: a.holdPoll,
			setup: []string{"SET SESSION TRANSACTION ISOLATION LEVEL READ COMMITTED",
				fmt.Sprintf("SET SESSION innodb_lock_wait_timeout = %d", workerLockWait)},
		}}
		p.workers = append(p.workers, w)
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			defer w.a.dropSession()
			for j := range w.queue {
				p.done <- result{j, p.run(wctx, w, j)}
			}
		}()
	}
	a.m.workersBusy.WithLabelValues(a.peer).Set(0)
	return p
}

// stop ends the workers (rolling back what they hold) and waits for them.
func (p *pipeline) stop() {
	p.cancel()
	for _, w := range p.workers {
		close(w.queue)
	}
	p.wg.Wait()
	p.a.m.workersBusy.WithLabelValues(p.a.peer).Set(0)
}

// resync takes the committed position as the tail (nothing in flight).
func (p *pipeline) resync() {
	p.tail = p.a.Status().Pos
	p.o.set(func() { p.o.committed, p.o.failed = p.seq, 0 })
}

// dispatch hands txns to a worker, or applies them serially (see the top
// of this file).
func (p *pipeline) dispatch(ctx context.Context, txns []*binlog.Txn) error {
	a := p.a
	if empty(txns) {
		// Carried into the next batch with rows, or applied alone by
		// drain when the relay runs dry: a pipeline stall for every
		// filtered transaction would cost more than the transaction.
		p.empties = append(p.empties, txns...)
		return nil
	}
	if len(p.empties) > 0 {
		txns = append(p.empties, txns...)
		p.empties = nil
	}
	keys, err := a.writeset(ctx, p.seed, txns)
	if err != nil || a.touchesStopped(txns) {
		// No writeset, or changes to hold for a stopped table: serially.
		if err := p.drain(ctx); err != nil {
			return err
		}
		err := a.applyBatch(ctx, txns)
		p.resync()
		return err
	}
	if err := a.hold(ctx, txns); err != nil {
		return err
	}
	waited := false
	var w *worker
	for {
		if len(p.replay) > 0 {
			if err := p.drain(ctx); err != nil {
				return err
			}
			if a.touchesStopped(txns) { // the replay stopped a table these write
				err := a.applyBatch(ctx, txns)
				p.resync()
				return err
			}
		}
		var dep bool
		if w, dep = p.pick(keys); w != nil {
			break
		}
		waited = waited || dep
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r := <-p.done:
			p.finish(r)
		}
	}
	if waited {
		a.m.depWaits.WithLabelValues(a.peer).Inc()
	}
	p.seq++
	j := &job{seq: p.seq, txns: txns, keys: keys, w: w, unsaved: a.unsaved}
	a.unsaved = 0
	for _, t := range txns {
		p.tail.GTID = mergeGTID(p.tail.GTID, t.Pos.GTID)
		if t.Pos.File != "" {
			p.tail.File, p.tail.Pos = t.Pos.File, t.Pos.Pos
		}
	}
	j.pos = p.tail
	for _, k := range keys {
		h := p.held[k]
		if h == nil {
			h = &hold{w: w}
			p.held[k] = h
		}
		h.n++
	}
	p.flight[j.seq] = j
	w.queued++
	p.busy()
	w.queue <- j // never blocks: w.queued ≤ queueDepth
	return nil
}

// pick chooses the worker for a batch with keys, or nil when it must wait
// (dep: for a dependency, not only for a free worker).
func (p *pipeline) pick(keys []uint64) (w *worker, dep bool) {
	for _, k := range keys {
		if h := p.held[k]; h != nil {
			if w != nil && w != h.w {
				return nil, true // depends on two workers' batches
			}
			w = h.w
		}
	}
	if w != nil {
		if w.queued >= queueDepth {
			return nil, true
		}
		return w, false
	}
	for _, c := range p.workers {
		if w == nil || c.queued < w.queued {
			w = c
		}
	}
	if w.queued >= queueDepth {
		return nil, false
	}
	return w, false
}

// finish takes a worker's result: releases the batch's keys, and keeps a
// batch that did not commit for replay.
func (p *pipeline) finish(r result) {
	j := r.j
	delete(p.flight, j.seq)
	j.w.queued--
	for _, k := range j.keys {
		if h := p.held[k]; h != nil {
			if h.n--; h.n == 0 {
				delete(p.held, k)
			}
		}
	}
	p.busy()
	if r.err == nil {
		return
	}
	if !errors.Is(r.err, errAborted) && !errors.Is(r.err, context.Canceled) {
		p.a.log.Info("parallel batch failed, applying it and the batches after it serially",
			zap.String("gtid", j.txns[len(j.txns)-1].Pos.GTID), zap.Int("txns", len(j.txns)), redact.Err(r.err))
	}
	p.replay = append(p.replay, j)
}

func (p *pipeline) busy() {
	n := 0
	for _, w := range p.workers {
		if w.queued > 0 {
			n++
		}
	}
	p.a.m.workersBusy.WithLabelValues(p.a.peer).Set(float64(n))
}

// drain waits until nothing is in flight, then applies the batches that
// did not commit again, in source order, on the serial session.
func (p *pipeline) drain(ctx context.Context) error {
	for len(p.flight) > 0 {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case r := <-p.done:
			p.finish(r)
		}
	}
	if len(p.replay) == 0 && len(p.empties) == 0 {
		return nil
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	replay := p.replay
	p.replay = nil
	slices.SortFunc(replay, func(x, y *job) int { return int(x.seq - y.seq) })
	for _, j := range replay {
		p.a.unsaved += j.unsaved
		if err := p.a.applyBatch(ctx, j.txns); err != nil {
			return err
		}
	}
	if len(p.empties) > 0 {
		e := p.empties
		p.empties = nil
		if err := p.a.applyBatch(ctx, e); err != nil {
			return err
		}
	}
	p.resync()
	return nil
}

// run applies one batch on worker w until it commits, fails for good, or
// is aborted.
func (p *pipeline) run(ctx context.Context, w *worker, j *job) error {
	o := p.o
	defer o.set(func() { delete(o.retrying, j.seq) })
	bo := w.a.newBO()
	uncertain := false
	for attempt := 1; ; attempt++ {
		err := p.attempt(ctx, w, j, uncertain)
		uncertain = false
		p.a.mu.Lock()
		p.a.status.RetryErr = nil
		if err != nil && retryable(err) {
			p.a.status.RetryErr = err
		}
		p.a.mu.Unlock()
		var ue *uncertainError
		if errors.As(err, &ue) {
			// Retried whatever the error: the next attempt first tells
			// by the checkpoint whether the COMMIT went through.
			uncertain = true
		}
		switch {
		case err == nil:
			return nil
		case errors.Is(err, errYield):
			// Let the earlier retrying batch pass, then try again.
			err := o.wait(ctx, func() (bool, error) {
				if o.failed != 0 && o.failed < j.seq {
					return false, errAborted
				}
				return !o.retryingBelow(j.seq), nil
			})
			if err != nil {
				return err
			}
			continue
		case errors.Is(err, errAborted), ctx.Err() != nil:
			return err
		case !uncertain && !retryable(err):
			o.set(func() {
				if o.failed == 0 || j.seq < o.failed {
					o.failed = j.seq
				}
			})
			return err
		}
		o.set(func() { o.retrying[j.seq] = true })
		p.a.m.retries.WithLabelValues(p.a.peer).Inc()
		w.a.log.Warn("apply batch failed, retrying", zap.String("gtid", j.txns[len(j.txns)-1].Pos.GTID),
			zap.Int("txns", len(j.txns)), zap.Int("attempt", attempt), redact.Err(err))
		if attempt == 1 {
			continue // at once: the lock it lost is free now
		}
		t := time.NewTimer(bo.NextBackOff())
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// uncertainError is a COMMIT whose reply was lost.
type uncertainError struct{ err error }

func (e *uncertainError) Error() string { return e.err.Error() }
func (e *uncertainError) Unwrap() error { return e.err }

// attempt runs one attempt of j on w. uncertain says the previous attempt's
// COMMIT may have reached the server: it did if the checkpoint points at
// the batch's end.
func (p *pipeline) attempt(ctx context.Context, w *worker, j *job, uncertain bool) error {
	a := w.a
	last := j.txns[len(j.txns)-1]
	if uncertain && last.Pos.File != "" {
		ck, err := readCheckpoint(ctx, a.db, a.cfg.Peer.ID, "")
		if err != nil {
			return fmt.Errorf("read checkpoint of peer %s: %w", a.peer, err)
		}
		if ck.Found && ck.Pos.File == j.pos.File && ck.Pos.Pos == j.pos.Pos {
			a.log.Info("batch was committed before the connection was lost", zap.String("gtid", last.Pos.GTID))
			st := &batchState{ck: ck, gtid: ck.Pos.GTID, last: last, rows: map[binlog.Op]uint64{}}
			p.a.afterCommit(st, ck.AppliedAt)
			p.committed(j.seq)
			return nil
		}
	}
	if err := p.o.wait(ctx, func() (bool, error) {
		if p.o.failed != 0 && p.o.failed < j.seq {
			return false, errAborted
		}
		return true, nil
	}); err != nil {
		return err
	}
	conn, st, err := p.begin(ctx, w)
	if err != nil {
		return err
	}
	err = a.applyTxns(ctx, conn, st, j.txns, false)
	if errors.Is(err, errSplit) {
		a.rollback(ctx, conn)
		if conn, st, err = p.begin(ctx, w); err != nil {
			return err
		}
		err = a.applyTxns(ctx, conn, st, j.txns, true)
	}
	if err == nil {
		err = p.o.turn(ctx, j.seq)
	}
	if err == nil {
		err = a.fence(ctx, conn)
	}
	if err != nil {
		a.rollback(ctx, conn)
		return err
	}
	s, err := a.stmt(ctx, conn, UpsertCheckpointSQL)
	if err == nil {
		_, err = s.ExecContext(ctx, a.cfg.Peer.ID, a.cfg.Peer.Name, j.pos.GTID, j.pos.File, j.pos.Pos,
			uint64(st.maxStamp), st.txns+j.unsaved, unixArg(last.Timestamp))
	}
	if err != nil {
		a.rollback(ctx, conn)
		return fmt.Errorf("write checkpoint of peer %s at gtid %s: %w", a.peer, last.Pos.GTID, err)
	}
	_, err = conn.ExecContext(ctx, "COMMIT")
	if err == nil && a.commitHook != nil {
		err = a.commitHook()
	}
	if err != nil {
		a.dropSession()
		return &uncertainError{fmt.Errorf("commit apply from peer %s at gtid %s: %w", a.peer, last.Pos.GTID, err)}
	}
	st.txns += j.unsaved
	st.ck.Pos = j.pos
	p.a.afterCommit(st, time.Now())
	p.committed(j.seq)
	return nil
}

// committed records that batch seq committed.
func (p *pipeline) committed(seq uint64) {
	p.o.set(func() {
		p.o.committed = seq
		delete(p.o.retrying, seq)
	})
}

// begin opens w's transaction and writes its marker first.
func (p *pipeline) begin(ctx context.Context, w *worker) (*sql.Conn, *batchState, error) {
	a := w.a
	conn, err := a.session(ctx)
	if err != nil {
		return nil, nil, err
	}
	if _, err := conn.ExecContext(ctx, "START TRANSACTION"); err != nil {
		a.dropSession()
		return nil, nil, fmt.Errorf("begin apply from peer %s: %w", a.peer, err)
	}
	s, err := a.stmt(ctx, conn, markerSQL)
	if err == nil {
		_, err = s.ExecContext(ctx, a.cfg.Peer.ID, w.id)
	}
	if err != nil {
		a.rollback(ctx, conn)
		return nil, nil, fmt.Errorf("write loop marker for peer %s: %w", a.peer, err)
	}
	return conn, &batchState{rows: map[binlog.Op]uint64{}}, nil
}
