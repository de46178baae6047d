// Package applier applies one peer's transactions to the local server.
//
// An Applier consumes whole source transactions (binlog.Txn) in source
// order and applies them set-based (batch.go): it reads and locks the local
// versions (live row, tombstone) of every key a batch touches with one
// query per table, lets the table's conflict rule decide each row change in
// source order against an in-memory version that each decision updates,
// and writes the net outcome per key, with the winning versions' stamps,
// in multi-row statements. The rows of one or
// more source transactions, the conflict log entries and the peer's
// checkpoint row are committed in ONE local transaction, so after a crash at
// any point the tailer resumes from Checkpoint with nothing applied twice
// and nothing skipped.
//
// Invariants:
//   - A source transaction is applied whole or not at all; transactions of
//     one peer are committed in source order. Batching groups consecutive
//     transactions into one local commit; it never splits one.
//   - Changes to one key are decided one after another in source order,
//     each seeing the outcome of the ones before it: the tables end exactly
//     as applying the rows one by one would leave them. With one worker
//     (Config.Workers ≤ 1) everything runs on one session. With more
//     (parallel.go), batches that share no key (primary or unique, before
//     or after image: their writesets) are applied on several sessions at
//     once; a batch that shares keys with in-flight batches waits for them
//     or queues behind them on their worker, and every batch commits only
//     after its predecessor, so commits stay in source order and each
//     local commit still covers whole source transactions with the
//     checkpoint. Why not one commit across sessions: rows applied on
//     several connections cannot commit atomically with one checkpoint
//     without XA and a recovery log; ordered commits need neither.
//   - mlr.checkpoints holds the end of the last committed source
//     transaction and is written in every local transaction the applier
//     commits; in a transaction that carries rows, the loop marker tailers
//     look for is written first: the peer's checkpoint row on the serial
//     session, the worker's own row of mlr.markers on a parallel worker
//     (so workers never wait on each other's marker; the checkpoint row
//     itself is written just before COMMIT, once the predecessor has
//     committed). A commit that only advances the checkpoint (the batch
//     had no row changes) is kept out of the binlog, so idle regions do not
//     echo checkpoint updates to each other.
//   - A COMMIT whose reply is lost is recognised on retry by the checkpoint
//     already pointing at the batch's end, and not applied again.
//   - Every apply session runs with @_mlr_apply = 1, so the table triggers
//     keep the stamps the applier writes and write no tombstone of their
//     own; a session is never handed back to the pool (it is discarded when
//     Run returns or the connection fails). Parallel workers' sessions run
//     READ COMMITTED (no gap locks between workers).
//   - The local clock moves past every remote stamp the applier decides on,
//     whatever the decision, and past the checkpoint's stamp at start.
//
// Tombstones are collected by GCTombstones below GCHorizon (see gc.go for
// the rule and why it is sound).
package applier

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cenkalti/backoff/v5"
	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus"
	"go.opentelemetry.io/otel/trace"
	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/conflict"
	"github.com/mlproxy/mlproxy/hlc"
	"github.com/mlproxy/mlproxy/redact"
	"github.com/mlproxy/mlproxy/schema"
)

// Config is one applier's part of the region's configuration.
type Config struct {
	// Self is this region's id: changes whose origin is Self are never
	// applied. Region is its name, for spans.
	Self   uint16
	Region string
	// Tracer, when set, makes a span per applied transaction that carried
	// a trace context (package tracing); nil is off.
	Tracer trace.Tracer
	// Peer is the region whose binlog this applier applies.
	Peer config.Peer
	// RegionIDs maps region names to ids. Rules are compiled by the
	// TableSource (NewTables takes the same map); kept here for logs and
	// callers that build both from one Config.
	RegionIDs map[string]uint16
	// BatchTxns groups up to this many source transactions already waiting
	// in the relay into one local commit (0 = 64; 1 = one commit each).
	BatchTxns int
	// Workers is the number of sessions applying batches that share no
	// key at once (see parallel.go); 0 or 1 applies on one session.
	Workers int
	// Forwards says this region passes what it applies on to other
	// regions (star hub, ring): a refused change then stops the whole
	// link, never one table (tablestop.go says why).
	Forwards bool
	// Epoch, when not 0, fences this applier: each of its commits first
	// reads mlr.replicator's epoch under a shared lock and commits only
	// while it is still Epoch. A replicator that lost the region's
	// replicator lock to another instance (which raised the epoch) can then
	// commit nothing, whatever it still has in flight.
	Epoch uint64
}

// ErrFenced is a commit refused because another instance of this region
// took the replicator over (the epoch in mlr.replicator moved on).
var ErrFenced = errors.New("another mlproxy instance of this region took over the replicator (mlr.replicator's epoch moved on): this one commits nothing more")

// fenceSQL reads the replicator epoch, holding it against a takeover until
// the transaction ends.
const fenceSQL = "SELECT epoch FROM mlr.replicator WHERE id = 1 LOCK IN SHARE MODE"

// fence checks, inside the transaction about to commit on conn, that this
// applier's epoch is still the region's (Config.Epoch).
func (a *Applier) fence(ctx context.Context, conn *sql.Conn) error {
	if a.cfg.Epoch == 0 {
		return nil
	}
	s, err := a.stmt(ctx, conn, fenceSQL)
	if err != nil {
		return err
	}
	var epoch uint64
	if err := s.QueryRowContext(ctx).Scan(&epoch); err != nil {
		return fmt.Errorf("read the replicator epoch: %w", err)
	}
	if epoch != a.cfg.Epoch {
		return fmt.Errorf("%w (epoch %d, this applier's %d)", ErrFenced, epoch, a.cfg.Epoch)
	}
	return nil
}

// Clock is the region's hybrid logical clock as the applier uses it.
type Clock interface {
	// Update moves the clock past a remote stamp. An error (a stamp too
	// far ahead of local time) is reported but the stamp still counts.
	Update(remote hlc.Timestamp) error
	// Ahead is how much further ahead of local time a remote stamp is
	// than the clock's max offset allows (0: acceptable).
	Ahead(remote hlc.Timestamp) time.Duration
}

// TableSource resolves a replicated table and its conflict rule.
type TableSource interface {
	// Table returns db.name as last read, and its rule.
	Table(ctx context.Context, db, name string) (*schema.Table, conflict.Rule, error)
	// Reload re-reads db.name from the server (after DDL) and returns it.
	Reload(ctx context.Context, db, name string) (*schema.Table, conflict.Rule, error)
}

// ErrResume is returned when a transaction streamed in pieces fails after
// pieces of it were consumed: they cannot be replayed from memory. Restart
// the tailer from Applier.Checkpoint and run the applier again.
var ErrResume = errors.New("a transaction streamed in pieces failed part way: restart the tailer from the applier's checkpoint")

// ErrPieceOrder is returned when the pieces of a large transaction arrive
// out of order or interleaved with another transaction (a tailer bug).
var ErrPieceOrder = errors.New("transaction pieces out of order: restart the tailer from the applier's checkpoint")

// maxBatchBytes bounds the memory of the source transactions gathered into
// one local commit.
const maxBatchBytes = 32 << 20

// Status is a snapshot of an applier's progress.
type Status struct {
	Peer   string
	PeerID uint16
	// Pos is the end of the last committed source transaction (from the
	// checkpoint once Run has started).
	Pos binlog.Position
	// SourceTime is that transaction's source commit time; AppliedAt when
	// this region committed it.
	SourceTime time.Time
	AppliedAt  time.Time
	// HLC is the highest stamp applied from the peer.
	HLC hlc.Timestamp
	// Txns, Rows and Conflicts count what this applier committed since it
	// was created (Txns: source transactions; Rows: remote row changes
	// decided).
	Txns      uint64
	Rows      uint64
	Conflicts uint64
	// Lag is AppliedAt - SourceTime of the last committed transaction: how
	// far behind the source this region was when it caught up to it.
	Lag time.Duration
	// Held, when set, is the table of a change held back because its stamp
	// is further ahead of local time than clock.max_offset allows, and
	// HeldAhead by how much; the link waits until the clock catches up.
	Held      string
	HeldAhead time.Duration
	// Stopped, when set, is the change the link is stopped at: a key the
	// conflict rule cannot place refused it (on_constraint: stop) in a
	// table whose order against others matters (foreign keys).
	Stopped *Stop
	// TableStops are the tables stopped alone at such a change (the
	// peer's other tables go on; tablestop.go), by table name.
	TableStops []Stop
	// RetryErr is the error of the batch being retried (deadlock, lost
	// connection, ...); nil once it committed.
	RetryErr error
}

// Applier applies one peer's stream. Run owns the session and the plans;
// Status and Checkpoint may be called from any goroutine.
type Applier struct {
	cfg    Config
	db     *sql.DB
	tables TableSource
	clock  Clock
	log    *zap.Logger
	m      *metrics
	peer   string   // metric label: the peer's name
	lim    *limiter // the batch limit, lowered under lock contention (yield.go)

	// Owned by Run's goroutine.
	conn  *sql.Conn              // the @_mlr_apply session; nil until used or after a loss
	stmts map[string]*sql.Stmt   // table-independent statements on conn
	plans map[tableKey]*plan     // compiled per table, reset on DDL
	newBO func() backoff.BackOff // retry schedule (tests shorten it)

	// uncertain is the batch whose COMMIT failed (it may have committed),
	// kept for the retry to publish if it did.
	uncertain *batchState
	// commitHook, when set (tests), runs after a successful COMMIT; an
	// error is treated as a COMMIT whose reply was lost.
	commitHook func() error
	// changeHook, when set (tests), runs as each row change is gathered,
	// before the statements of its segment run.
	changeHook func(*binlog.RowChange)
	// binlogLocked is set once the server refused SET sql_log_bin (the
	// user lacks BINLOG ADMIN): progress over batches without rows is then
	// saved only with the next batch that has rows.
	binlogLocked bool
	// unsaved counts source transactions of batches not saved that way.
	unsaved uint64
	// skipGTID, while a stopped link retries, is the source transaction an
	// operator asked to skip (its refused changes are logged and passed
	// over) and skipKey the hash of the one change to skip; skipBy who
	// asked.
	skipGTID, skipKey, skipBy string

	// stops are the peer's stopped tables (tablestop.go); tableScope is
	// false when the internal tables they need are missing; heldSeq is
	// the last sequence number given to a held change; nextPoll when
	// operators' requests for stopped tables are read next.
	stops      map[tableKey]*tableStop
	tableScope bool
	heldSeq    uint64
	nextPoll   time.Time
	poll       *time.Ticker // wakes an idle applier while tables are stopped

	// nowait, while a batch of whole transactions is applied, makes its
	// key lookups fail at once on a row a local client holds (FOR UPDATE
	// NOWAIT) instead of waiting for it while holding the batch's other
	// locks: the applier then rolls back and retries, and never closes a
	// deadlock cycle with a client in that phase (InnoDB would pick the
	// client, the smaller transaction, as the victim). A transaction
	// streamed in pieces waits as before (a retry would stream it again).
	nowait bool

	// holdPoll is how often a held batch re-checks the clock (tests
	// shorten it).
	holdPoll time.Duration

	// setup are statements run on a new session after SessionSetup
	// (a parallel worker's isolation level and lock wait timeout).
	setup []string

	// sessionID is the server's CONNECTION_ID() of the current session.
	sessionID atomic.Int64

	mu     sync.Mutex
	status Status // guarded by mu
}

// New returns an applier for cfg.Peer writing into db (the local server).
// log and reg may be nil.
func New(cfg Config, db *sql.DB, tables TableSource, clock Clock, log *zap.Logger, reg prometheus.Registerer) *Applier {
	if cfg.BatchTxns <= 0 {
		cfg.BatchTxns = 64
	}
	if log == nil {
		log = zap.NewNop()
	}
	a := &Applier{
		cfg:      cfg,
		db:       db,
		tables:   tables,
		clock:    clock,
		log:      log.With(zap.String("peer", cfg.Peer.Name)),
		m:        newMetrics(reg),
		peer:     cfg.Peer.Name,
		stmts:    map[string]*sql.Stmt{},
		plans:    map[tableKey]*plan{},
		holdPoll: time.Second,
		newBO: func() backoff.BackOff {
			b := backoff.NewExponentialBackOff()
			b.InitialInterval = 50 * time.Millisecond
			b.MaxInterval = 10 * time.Second
			return b // RandomizationFactor 0.5: jitter
		},
	}
	a.status.Peer, a.status.PeerID = cfg.Peer.Name, cfg.Peer.ID
	return a
}

// Checkpoint reads this peer's row of mlr.checkpoints: where the tailer
// must resume. Found is false when nothing was ever applied from the peer.
func (a *Applier) Checkpoint(ctx context.Context) (Checkpoint, error) {
	c, err := readCheckpoint(ctx, a.db, a.cfg.Peer.ID, "")
	if err != nil {
		return Checkpoint{}, fmt.Errorf("read checkpoint of peer %s: %w", a.cfg.Peer.Name, err)
	}
	return c, nil
}

// Status returns a snapshot of the applier's progress.
func (a *Applier) Status() Status {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.status
}

// Run applies transactions from in until ctx ends (returning ctx's error),
// in is closed (nil: a clean stop after everything received was
// committed), or an error that retrying cannot fix. Deadlocks, lock wait
// timeouts and a lost local connection roll back and retry the same batch
// with exponential backoff and jitter. Run must not be called twice at
// once.
func (a *Applier) Run(ctx context.Context, in <-chan *binlog.Txn) error {
	defer a.dropSession()
	ck, err := a.Checkpoint(ctx)
	if err != nil {
		return a.fail(err)
	}
	// The clock may have lost stamps accepted before a crash (it persists
	// them lazily): move it past everything ever applied from this peer.
	if ck.HLC != 0 {
		if err := a.clock.Update(ck.HLC); err != nil {
			a.m.clockAhead.WithLabelValues(a.peer).Inc()
			a.log.Warn("checkpoint stamp too far ahead of local time", zap.String("gtid", ck.Pos.GTID), zap.Error(err))
		}
	}
	a.mu.Lock()
	if a.status.Pos == (binlog.Position{}) {
		a.status.Pos, a.status.HLC, a.status.SourceTime, a.status.AppliedAt = ck.Pos, ck.HLC, ck.SourceTime, ck.AppliedAt
	}
	a.mu.Unlock()
	a.m.stopped.WithLabelValues(a.peer).Set(0) // exported from the start, for alerts
	a.poll = time.NewTicker(stopPoll)
	defer a.poll.Stop()
	if err := a.loadStops(ctx); err != nil {
		return a.fail(fmt.Errorf("apply from peer %s: %w", a.peer, err))
	}
	workers := max(a.cfg.Workers, 1)
	if workers > 1 {
		ok, err := a.internalTables(ctx, "markers")
		if err != nil {
			return a.fail(fmt.Errorf("apply from peer %s: look for mlr.markers: %w", a.peer, err))
		}
		if !ok {
			workers = 1
			a.log.Warn("mlr.markers is missing (run `mlproxy schema apply`): applying on one session, apply.workers ignored")
		}
	}
	a.lim = newLimiter(a.cfg.BatchTxns)
	a.m.batchLimit.WithLabelValues(a.peer).Set(float64(a.cfg.BatchTxns))
	wctx, stopWatch := context.WithCancel(ctx)
	watched := make(chan struct{})
	go func() { defer close(watched); a.watchContention(wctx, a.lim) }()
	defer func() { stopWatch(); <-watched }() // a restarted Run gets a new limiter
	a.log.Info("applier started", zap.Int("batch_txns", a.cfg.BatchTxns), zap.Int("workers", workers),
		zap.String("gtid", ck.Pos.GTID), zap.String("file", ck.Pos.File), zap.Uint32("pos", ck.Pos.Pos))
	if workers > 1 {
		return a.runParallel(ctx, in)
	}
	var carry *binlog.Txn
	for {
		if err := a.resumeDue(ctx); err != nil {
			return a.fail(err)
		}
		first := carry
		carry = nil
		if first == nil {
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-a.pollStops():
				continue
			case t, ok := <-in:
				if !ok {
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
			if err := a.applyPieces(ctx, first, in); err != nil {
				return a.fail(err)
			}
			continue
		}
		txns, next, closed := a.gather(first, in)
		carry = next
		if err := a.applyBatch(ctx, txns); err != nil {
			return a.fail(err)
		}
		if closed {
			a.log.Info("applier stopped: relay closed")
			return nil
		}
	}
}

// gather forms a batch: first and the whole transactions already waiting
// in the relay behind it, up to the batch limit and maxBatchBytes. A
// transaction streamed in pieces ends the batch and comes back as carry
// (applied on its own next); closed reports that the relay closed.
func (a *Applier) gather(first *binlog.Txn, in <-chan *binlog.Txn) (txns []*binlog.Txn, carry *binlog.Txn, closed bool) {
	txns = []*binlog.Txn{first}
	size := first.Size
	for len(txns) < a.lim.get() && size < maxBatchBytes {
		select {
		case t, ok := <-in:
			if !ok {
				return txns, nil, true
			}
			if !t.Last || t.Piece != 0 {
				return txns, t, false
			}
			txns = append(txns, t)
			size += t.Size
		default:
			return txns, nil, false
		}
	}
	return txns, nil, false
}

// fail counts and logs a stopping error (a cancellation is not one).
func (a *Applier) fail(err error) error {
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	a.m.applyErrors.WithLabelValues(a.peer).Inc()
	a.log.Error("applier stopped", redact.Err(err))
	return err
}

// applyBatch commits txns (whole source transactions) in one local
// transaction, retrying retryable failures.
func (a *Applier) applyBatch(ctx context.Context, txns []*binlog.Txn) error {
	if err := a.hold(ctx, txns); err != nil {
		return err
	}
	attempt := 0
	_, err := backoff.Retry(ctx, func() (struct{}, error) {
		attempt++
		err := a.commitBatch(ctx, txns, attempt > 1)
		a.mu.Lock()
		a.status.RetryErr = nil
		if err != nil && retryable(err) {
			a.status.RetryErr = err
		}
		a.mu.Unlock()
		switch {
		case err == nil:
			return struct{}{}, nil
		case ctx.Err() != nil:
			return struct{}{}, backoff.Permanent(ctx.Err())
		case !retryable(err):
			return struct{}{}, backoff.Permanent(err)
		}
		a.m.retries.WithLabelValues(a.peer).Inc()
		last := txns[len(txns)-1]
		logAt := a.log.Warn
		if errNumber(err) == 1205 && attempt < 10 {
			// A key a local client holds (the lookups do not wait): the
			// common case under client contention, counted, not logged.
			logAt = a.log.Debug
		}
		logAt("apply batch failed, retrying", zap.String("gtid", last.Pos.GTID),
			zap.Int("txns", len(txns)), zap.Int("attempt", attempt), redact.Err(err))
		return struct{}{}, err
	}, backoff.WithBackOff(a.newBO()), backoff.WithMaxElapsedTime(0))
	if a.scopeStop(ctx, err) {
		return a.applyBatch(ctx, txns) // again, holding the table's changes
	}
	var ce *constraintError
	if errors.As(err, &ce) {
		return a.stopped(ctx, txns, ce)
	}
	return err
}

// pollStops fires every stopPoll while tables are stopped (nil otherwise:
// the applier then waits for the relay alone).
func (a *Applier) pollStops() <-chan time.Time {
	if len(a.stops) == 0 {
		return nil
	}
	return a.poll.C
}

// hold waits while a change of txns is stamped further ahead of local time
// than clock.max_offset allows: applied, a region whose clock runs fast
// would win every conflict with writes made after its own. A held batch is
// counted and logged (peer, table, how far ahead) and shown in Status
// until the local clock catches up; the link behind it waits.
func (a *Applier) hold(ctx context.Context, txns []*binlog.Txn) error {
	logged := false
	for {
		var worst time.Duration
		var where string
		for _, t := range txns {
			for i := range t.Changes {
				rc := &t.Changes[i]
				if d := a.clock.Ahead(hlc.Timestamp(rc.Stamp)); d > worst {
					worst, where = d, rc.Schema+"."+rc.Table
				}
			}
		}
		a.mu.Lock()
		a.status.Held, a.status.HeldAhead = where, worst
		a.mu.Unlock()
		if worst == 0 {
			return nil
		}
		if !logged {
			logged = true
			a.m.held.WithLabelValues(a.peer).Inc()
			a.log.Warn("holding changes stamped further ahead of local time than clock.max_offset: the peer's clock runs fast (check NTP); applying when the local clock catches up",
				zap.String("table", where), zap.Duration("ahead", worst), zap.String("gtid", txns[len(txns)-1].Pos.GTID))
		}
		t := time.NewTimer(min(worst, a.holdPoll))
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-t.C:
		}
	}
}

// empty reports whether no source transaction of the batch carries a row
// change (transactions the tailer filtered: the peer's applier wrote them,
// or they held only DDL or mlproxy's own bookkeeping).
func empty(txns []*binlog.Txn) bool {
	for _, t := range txns {
		if len(t.Changes) > 0 {
			return false
		}
	}
	return true
}

// quiet switches binary logging off on the session for a batch without
// row changes, and returns the function that switches it back on. Logged,
// such a checkpoint-only transaction would land in this region's binlog,
// which every peer reads, filters to nothing and checkpoints in turn: two
// idle regions would ping-pong checkpoint updates forever. The loop marker
// is only needed on transactions that carry rows, and those are logged.
// Without the privilege to switch sql_log_bin (BINLOG ADMIN), ok is false
// and progress over empty transactions is not saved: after a restart the
// tailer reads them again and they are filtered again.
func (a *Applier) quiet(ctx context.Context) (restore func(), ok bool, err error) {
	if a.binlogLocked {
		return nil, false, nil
	}
	conn, err := a.session(ctx)
	if err != nil {
		return nil, false, err
	}
	if _, err := conn.ExecContext(ctx, "SET SESSION sql_log_bin = 0"); err != nil {
		var me *mysql.MySQLError
		if errors.As(err, &me) && (me.Number == 1227 || me.Number == 1044) { // ER_SPECIFIC_ACCESS_DENIED_ERROR, ER_DBACCESS_DENIED_ERROR
			a.binlogLocked = true
			a.log.Warn("cannot switch off binary logging for checkpoint-only updates (grant BINLOG ADMIN to mlproxy's user): "+
				"progress over transactions without changes is saved with the next change", zap.Error(err))
			return nil, false, nil
		}
		a.dropSession()
		return nil, false, fmt.Errorf("apply from peer %s: %w", a.peer, err)
	}
	return func() {
		if a.conn != conn {
			return // dropped meanwhile: the setting went with it
		}
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if _, err := conn.ExecContext(rctx, "SET SESSION sql_log_bin = 1"); err != nil {
			a.dropSession()
		}
	}, true, nil
}

// batchState accumulates one local transaction.
type batchState struct {
	ck       Checkpoint // the checkpoint as read at BEGIN
	gtid     string     // merged GTID position so far
	last     *binlog.Txn
	txns     uint64 // source transactions completed (Last pieces)
	rows     map[binlog.Op]uint64
	maxStamp hlc.Timestamp
	ahead    uint64
	aheadErr error // the last clock error of the batch, logged once
	confl    []conflictKey
	// park keeps changes to stopped tables in mlr.held (serial session);
	// held counts them by table.
	park bool
	held map[tableKey]int
	// started is when the batch began applying; sources when each source
	// transaction completed was written at the source (for the lag
	// histogram; newest is the newest stamp of the one in progress) and
	// traced those that carry a trace context.
	started time.Time
	sources []time.Time
	newest  uint64
	traced  []sourceTxn
}

type conflictKey struct {
	db, table, rule, outcome string
	// shadow is the table's shadow rule ("": none) and differs whether it
	// would have left another row.
	shadow  string
	differs bool
}

// commitBatch runs one attempt. retry says a previous attempt failed: if
// its COMMIT reached the server before the connection was lost, the
// checkpoint already points at the batch's end and nothing is applied.
func (a *Applier) commitBatch(ctx context.Context, txns []*binlog.Txn, retry bool) error {
	a.nowait = true // whole transactions: a lookup that would wait rolls back and retries
	defer func() { a.nowait = false }()
	if empty(txns) {
		restore, ok, err := a.quiet(ctx)
		if err != nil {
			return err
		}
		if !ok {
			a.unsaved += uint64(len(txns)) // counted with the next saved batch
			return nil
		}
		defer restore()
	}
	marked := !empty(txns)
	conn, st, err := a.begin(ctx, marked)
	if err != nil {
		return err
	}
	last := txns[len(txns)-1]
	uncertain := a.uncertain
	a.uncertain = nil
	if retry && st.ck.Found && last.Pos.File != "" && st.ck.Pos.File == last.Pos.File && st.ck.Pos.Pos == last.Pos.Pos {
		a.rollback(ctx, conn)
		a.log.Info("batch was committed before the connection was lost", zap.String("gtid", last.Pos.GTID))
		if uncertain == nil || uncertain.last != last {
			uncertain = &batchState{ck: st.ck, gtid: st.ck.Pos.GTID, last: last}
		}
		uncertain.ck = st.ck
		a.afterCommit(uncertain, st.ck.AppliedAt)
		return nil
	}
	err = a.applyTxns(ctx, conn, st, txns, false)
	if errors.Is(err, errSplit) {
		// A key constraint refused a multi-row write: apply the batch
		// again one change at a time, which fails (or not) exactly where
		// one-by-one apply does.
		a.rollback(ctx, conn)
		a.log.Info("multi-row write refused by a key constraint, applying the batch one change at a time",
			zap.String("gtid", last.Pos.GTID), zap.Int("txns", len(txns)), zap.Uint16("mysql_error", errNumber(err)))
		if conn, st, err = a.begin(ctx, marked); err != nil {
			return err
		}
		err = a.applyTxns(ctx, conn, st, txns, true)
	}
	if err != nil {
		a.rollback(ctx, conn)
		return err
	}
	return a.commit(ctx, conn, st)
}

// applyPieces applies a transaction that arrives in pieces, streaming each
// piece into one local transaction that commits after the last one.
func (a *Applier) applyPieces(ctx context.Context, first *binlog.Txn, in <-chan *binlog.Txn) error {
	conn, st, err := a.begin(ctx, true)
	if err != nil {
		return a.resumable(ctx, err)
	}
	cur := first
	for {
		if err := a.hold(ctx, []*binlog.Txn{cur}); err != nil {
			a.rollback(ctx, conn)
			return err
		}
		if err := a.applyTxns(ctx, conn, st, []*binlog.Txn{cur}, false); err != nil {
			a.rollback(ctx, conn)
			if a.scopeStop(ctx, err) {
				// The pieces applied so far are gone: stream the
				// transaction again from the checkpoint, holding the table.
				a.dropSession()
				return fmt.Errorf("%w: %w", ErrResume, err)
			}
			return a.resumable(ctx, err)
		}
		if cur.Last {
			break
		}
		var next *binlog.Txn
		select {
		case <-ctx.Done():
			a.rollback(ctx, conn)
			return ctx.Err()
		case t, ok := <-in:
			if !ok {
				a.rollback(ctx, conn)
				return fmt.Errorf("apply from peer %s: relay closed inside seq %d at piece %d: %w", a.peer, cur.Seq, cur.Piece, ErrResume)
			}
			next = t
		}
		if next.Seq != cur.Seq || next.Piece != cur.Piece+1 {
			a.rollback(ctx, conn)
			return fmt.Errorf("apply from peer %s: seq %d piece %d followed by seq %d piece %d: %w",
				a.peer, cur.Seq, cur.Piece, next.Seq, next.Piece, ErrPieceOrder)
		}
		cur = next
	}
	if err := a.commit(ctx, conn, st); err != nil {
		return a.resumable(ctx, err)
	}
	return nil
}

// resumable marks a failure of a streamed transaction: a retryable one
// becomes ErrResume (the pieces are gone); others pass through. A failure
// once ctx is done is the cancellation (the driver closed the connection
// under a statement: "connection is already closed").
func (a *Applier) resumable(ctx context.Context, err error) error {
	if err != nil && ctx.Err() != nil {
		return ctx.Err()
	}
	if err == nil || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	if retryable(err) {
		a.dropSession()
		return fmt.Errorf("%w: %w", ErrResume, err)
	}
	return err
}

// begin opens a local transaction on the session and reads (and locks)
// the peer's checkpoint row. marked writes the loop marker first: a
// transaction that will carry rows must say in its first row event that
// the applier wrote it, so that a tailer reading it in pieces never ships
// a piece on as this region's own writes.
func (a *Applier) begin(ctx context.Context, marked bool) (*sql.Conn, *batchState, error) {
	conn, err := a.session(ctx)
	if err != nil {
		return nil, nil, err
	}
	if _, err := conn.ExecContext(ctx, "START TRANSACTION"); err != nil {
		a.dropSession()
		return nil, nil, fmt.Errorf("begin apply from peer %s: %w", a.peer, err)
	}
	if marked {
		s, err := a.stmt(ctx, conn, markSQL)
		if err == nil {
			_, err = s.ExecContext(ctx, a.cfg.Peer.ID, a.cfg.Peer.Name)
		}
		if err != nil {
			a.rollback(ctx, conn)
			return nil, nil, fmt.Errorf("write loop marker for peer %s: %w", a.peer, err)
		}
	}
	s, err := a.stmt(ctx, conn, selectCheckpointSQL+" FOR UPDATE")
	if err == nil {
		var ck Checkpoint
		ck, err = readCheckpoint(ctx, stmtQueryer{s}, a.cfg.Peer.ID, "")
		if err == nil {
			return conn, &batchState{ck: ck, gtid: ck.Pos.GTID, rows: map[binlog.Op]uint64{}, park: true}, nil
		}
	}
	a.rollback(ctx, conn)
	return nil, nil, fmt.Errorf("read checkpoint of peer %s: %w", a.peer, err)
}

// stmtQueryer runs a prepared statement as readCheckpoint's query (its
// query text argument is the statement's own).
type stmtQueryer struct{ s *sql.Stmt }

func (q stmtQueryer) QueryRowContext(ctx context.Context, _ string, args ...any) *sql.Row {
	return q.s.QueryRowContext(ctx, args...)
}

// commit writes the checkpoint and commits; then publishes the batch.
func (a *Applier) commit(ctx context.Context, conn *sql.Conn, st *batchState) error {
	t := st.last
	file, pos := st.ck.Pos.File, st.ck.Pos.Pos
	if t.Pos.File != "" {
		file, pos = t.Pos.File, t.Pos.Pos
	}
	st.txns += a.unsaved
	if err := a.fence(ctx, conn); err != nil {
		a.rollback(ctx, conn)
		return fmt.Errorf("commit apply from peer %s: %w", a.peer, err)
	}
	s, err := a.stmt(ctx, conn, UpsertCheckpointSQL)
	if err == nil {
		_, err = s.ExecContext(ctx, a.cfg.Peer.ID, a.cfg.Peer.Name, st.gtid, file, pos,
			uint64(st.maxStamp), st.txns, unixArg(t.Timestamp))
	}
	if err != nil {
		a.rollback(ctx, conn)
		return fmt.Errorf("write checkpoint of peer %s at gtid %s: %w", a.peer, t.Pos.GTID, err)
	}
	_, err = conn.ExecContext(ctx, "COMMIT")
	if err == nil && a.commitHook != nil {
		err = a.commitHook()
	}
	if err != nil {
		// The COMMIT may or may not have reached the server: the retry
		// tells by the checkpoint, and publishes st if it did.
		a.uncertain = st
		a.dropSession()
		return fmt.Errorf("commit apply from peer %s at gtid %s: %w", a.peer, t.Pos.GTID, err)
	}
	a.unsaved = 0
	st.ck.Pos = binlog.Position{GTID: st.gtid, File: file, Pos: pos}
	a.afterCommit(st, time.Now())
	if ce := a.log.Check(zap.DebugLevel, "batch committed"); ce != nil {
		var rows uint64
		for _, n := range st.rows {
			rows += n
		}
		ce.Write(zap.String("gtid", st.gtid), zap.Uint64("txns", st.txns), zap.Uint64("rows", rows),
			zap.Int("conflicts", len(st.confl)))
	}
	return nil
}

// countRows adds a committed transaction's row changes and conflicts to
// the metrics and returns how many rows it changed.
func (a *Applier) countRows(st *batchState) (rows uint64) {
	for op, n := range st.rows {
		rows += n
		a.m.rows.WithLabelValues(a.peer, op.String()).Add(float64(n))
	}
	for _, c := range st.confl {
		a.m.conflicts.WithLabelValues(a.peer, c.db, c.table, c.rule, c.outcome).Inc()
		if c.shadow != "" {
			a.m.shadow.WithLabelValues(a.peer, c.db, c.table, c.shadow, fmt.Sprint(c.differs)).Inc()
		}
	}
	return rows
}

// afterCommit publishes a committed batch to Status and metrics.
func (a *Applier) afterCommit(st *batchState, appliedAt time.Time) {
	rows := a.countRows(st)
	if st.ahead > 0 {
		a.m.clockAhead.WithLabelValues(a.peer).Add(float64(st.ahead))
		a.log.Warn("applied stamps too far ahead of local time", zap.String("gtid", st.gtid), zap.Uint64("rows", st.ahead), zap.Error(st.aheadErr))
	}
	for tk, n := range st.held {
		if s := a.stops[tk]; s != nil {
			s.parked += n
			a.m.parked.WithLabelValues(a.peer, tk.db, tk.table).Set(float64(s.parked))
		}
	}
	a.observeLag(st, appliedAt)
	a.traceApplied(st, appliedAt)
	a.m.txns.WithLabelValues(a.peer).Add(float64(st.txns))
	a.m.batches.WithLabelValues(a.peer).Inc()
	a.m.batchTxns.WithLabelValues(a.peer).Observe(float64(st.txns))

	a.mu.Lock()
	defer a.mu.Unlock()
	s := &a.status
	s.Pos = st.ck.Pos
	if !st.last.Timestamp.IsZero() {
		s.SourceTime = st.last.Timestamp
		s.Lag = max(appliedAt.Sub(st.last.Timestamp), 0)
		a.m.lag.WithLabelValues(a.peer).Set(s.Lag.Seconds())
	}
	s.AppliedAt = appliedAt
	if st.maxStamp > s.HLC {
		s.HLC = st.maxStamp
	}
	if st.ck.HLC > s.HLC {
		s.HLC = st.ck.HLC
	}
	s.Txns += st.txns
	s.Rows += rows
	s.Conflicts += uint64(len(st.confl))
}

// rollback ends the open transaction; a session that cannot is dropped.
// It runs even when ctx is done (the driver then closed the connection).
func (a *Applier) rollback(ctx context.Context, conn *sql.Conn) {
	if ctx.Err() != nil {
		a.dropSession()
		return
	}
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	if _, err := conn.ExecContext(rctx, "ROLLBACK"); err != nil {
		a.dropSession()
	}
}

// session returns the applier's connection, opening it with SessionSetup
// when needed.
func (a *Applier) session(ctx context.Context) (*sql.Conn, error) {
	if a.conn != nil {
		return a.conn, nil
	}
	c, err := a.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to local server for peer %s: %w", a.peer, err)
	}
	var id int64
	_, err = c.ExecContext(ctx, SessionSetup)
	for _, q := range a.setup {
		if err == nil {
			_, err = c.ExecContext(ctx, q)
		}
	}
	if err == nil {
		err = c.QueryRowContext(ctx, "SELECT CONNECTION_ID()").Scan(&id)
	}
	if err != nil {
		discard(c)
		return nil, fmt.Errorf("set up apply session for peer %s: %w", a.peer, err)
	}
	a.conn = c
	a.sessionID.Store(id)
	a.log.Debug("apply session opened", zap.Int64("connection_id", id))
	return c, nil
}

// SessionSetup prepares the apply session:
//   - @_mlr_apply = 1: triggers keep the stamps the applier writes and
//     write no tombstone;
//   - time_zone UTC: the binlog decoder formats TIMESTAMP values in UTC;
//   - sql_mode: NO_AUTO_VALUE_ON_ZERO so an explicit 0 in an AUTO_INCREMENT
//     key stays 0 (as row-based replication does); strict, so a value the
//     local column cannot hold stops the applier instead of being changed
//     silently; zero dates allowed, as the source accepted them.
const SessionSetup = "SET @_mlr_apply = 1, time_zone = '+00:00', " +
	"sql_mode = 'STRICT_ALL_TABLES,NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION'"

// dropSession closes the session and every statement prepared on it. The
// connection is discarded, never returned to the pool: it carries
// @_mlr_apply, under which triggers do not stamp.
func (a *Applier) dropSession() {
	for _, p := range a.plans {
		p.closeStmts()
	}
	for k, s := range a.stmts {
		_ = s.Close()
		delete(a.stmts, k)
	}
	if a.conn != nil {
		discard(a.conn)
		a.conn = nil
	}
}

// discard closes c's driver connection instead of pooling it.
func discard(c *sql.Conn) {
	_ = c.Raw(func(any) error { return driver.ErrBadConn })
	_ = c.Close()
}

// stmt returns a table-independent statement prepared on conn.
func (a *Applier) stmt(ctx context.Context, conn *sql.Conn, text string) (*sql.Stmt, error) {
	if s, ok := a.stmts[text]; ok {
		return s, nil
	}
	s, err := conn.PrepareContext(ctx, text)
	if err != nil {
		return nil, err
	}
	a.stmts[text] = s
	return s, nil
}

// retryable reports a failure that rolling back and retrying can fix:
// deadlock, lock wait timeout, a lost or killed local connection.
func retryable(err error) bool {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case 1213, // ER_LOCK_DEADLOCK
			1205, // ER_LOCK_WAIT_TIMEOUT
			1053, // ER_SERVER_SHUTDOWN
			1317, // ER_QUERY_INTERRUPTED
			1927, // ER_CONNECTION_KILLED (MariaDB)
			2006, // CR_SERVER_GONE_ERROR
			2013, // CR_SERVER_LOST
			4031: // ER_CLIENT_INTERACTION_TIMEOUT (MySQL)
			return true
		}
		return false
	}
	var ne net.Error
	return errors.Is(err, driver.ErrBadConn) ||
		errors.Is(err, mysql.ErrInvalidConn) ||
		errors.Is(err, sql.ErrConnDone) ||
		errors.Is(err, io.EOF) ||
		errors.Is(err, io.ErrUnexpectedEOF) ||
		errors.Is(err, syscall.ECONNREFUSED) ||
		errors.Is(err, syscall.ECONNRESET) ||
		errors.Is(err, syscall.EPIPE) ||
		errors.As(err, &ne)
}
