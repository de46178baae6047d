package replicator

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"math/rand/v2"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/zap"
)

// Several `mlproxy run` processes may serve one region (behind a TCP load
// balancer): all of them proxy clients, exactly one runs the replicator.
// Leader elects it with the region's own server as the only coordinator:
//
//   - the active instance holds GET_LOCK("mlproxy.replicator.<region>") on
//     a session of its own, checked every LeaderCheck; the others try to
//     take it at the same pace, so one of them takes over within a few
//     seconds of the holder's death (its session ends, the server releases
//     the lock) or of its losing the server;
//   - a lock is not a fence: an instance that lost it may still have an
//     apply in flight. So each takeover raises mlr.replicator's epoch, and
//     every applier commit first reads the epoch under a shared lock and
//     commits only under its own (applier.Config.Epoch): the old holder's
//     commits fail, the takeover's raise waits for any that is committing.

// LeaderCheck is how often the holder checks its lock and standbys try to
// take it.
const LeaderCheck = time.Second

// Leader runs a function while this instance holds the region's
// replicator lock. Create it with NewLeader.
type Leader struct {
	db     *sql.DB
	lock   string
	holder string
	log    *zap.Logger

	epoch     atomic.Uint64 // the epoch held now, 0 on standby
	active    prometheus.Gauge
	takeovers prometheus.Counter
}

// NewLeader elects among region's instances on db; holder names this one
// (mlr.replicator.holder, `mlproxy status`).
func NewLeader(db *sql.DB, region, holder string, log *zap.Logger, reg prometheus.Registerer) *Leader {
	l := &Leader{db: db, lock: LockName(region), holder: holder, log: log,
		active: prometheus.NewGauge(prometheus.GaugeOpts{Name: "mlproxy_replicator_active",
			Help: "1 while this instance runs the region's replicator (holds its lock), 0 on standby."}),
		takeovers: prometheus.NewCounter(prometheus.CounterOpts{Name: "mlproxy_replicator_takeovers_total",
			Help: "Times this instance took the region's replicator over (each raises mlr.replicator's epoch)."}),
	}
	if reg != nil {
		reg.MustRegister(l.active, l.takeovers)
	}
	return l
}

// LockName is the name of region's replicator lock (GET_LOCK).
func LockName(region string) string {
	name := "mlproxy.replicator." + region
	if len(name) > 64 {
		name = name[:64]
	}
	return name
}

// Epoch is the epoch this instance holds the replicator under, 0 while it
// stands by.
func (l *Leader) Epoch() uint64 { return l.epoch.Load() }

// Run competes for the lock until ctx ends; while it holds it, lead runs
// with the epoch of the takeover and a context that ends when the lock is
// lost (or ctx ends). Run returns after lead has.
func (l *Leader) Run(ctx context.Context, lead func(ctx context.Context, epoch uint64)) {
	for ctx.Err() == nil {
		conn, epoch, err := l.take(ctx)
		if err != nil {
			l.log.Warn("replicator lock: cannot compete; retrying", zap.Error(err))
		}
		if conn == nil {
			sleep(ctx, jitter(LeaderCheck))
			continue
		}
		l.epoch.Store(epoch)
		l.active.Set(1)
		l.takeovers.Inc()
		l.log.Info("replicator active: this instance holds the region's replicator lock", zap.Uint64("epoch", epoch), zap.String("holder", l.holder))
		lctx, cancel := context.WithCancel(ctx)
		done := make(chan struct{})
		go func() { defer close(done); lead(lctx, epoch) }()
		err = l.hold(lctx, conn)
		cancel()
		<-done
		l.epoch.Store(0)
		l.active.Set(0)
		l.release(conn)
		if ctx.Err() == nil {
			// A warning: the usual cause is the server restarting or a
			// standby's takeover, which the instance recovers from itself.
			l.log.Warn("replicator lock lost: the replicator stopped here; this or another instance takes over", zap.Uint64("epoch", epoch), zap.Error(err))
			sleep(ctx, jitter(LeaderCheck)) // compete again as a standby does
		}
	}
}

// take tries the lock once on a session of its own. Holding it, it raises
// the epoch and returns the session; otherwise nil.
func (l *Leader) take(ctx context.Context) (*sql.Conn, uint64, error) {
	conn, err := l.db.Conn(ctx)
	if err != nil {
		return nil, 0, err
	}
	var got sql.NullInt64
	if err := conn.QueryRowContext(ctx, "SELECT GET_LOCK(?, 0)", l.lock).Scan(&got); err != nil {
		discard(conn)
		return nil, 0, err
	}
	if got.Int64 != 1 {
		_ = conn.Close()
		return nil, 0, nil
	}
	// Autocommit: the raise waits for the shared locks of commits in
	// flight under the previous epoch, and is final before anything runs
	// under the new one.
	if _, err := conn.ExecContext(ctx, "INSERT INTO mlr.replicator (id, epoch, holder, since) VALUES (1, 1, ?, NOW(6)) "+
		"ON DUPLICATE KEY UPDATE epoch = epoch + 1, holder = VALUES(holder), since = VALUES(since)", l.holder); err != nil {
		l.release(conn)
		return nil, 0, fmt.Errorf("raise the replicator epoch: %w (did `mlproxy schema apply` of this release run?)", err)
	}
	var epoch uint64
	if err := conn.QueryRowContext(ctx, "SELECT epoch FROM mlr.replicator WHERE id = 1").Scan(&epoch); err != nil {
		l.release(conn)
		return nil, 0, fmt.Errorf("read the replicator epoch: %w", err)
	}
	return conn, epoch, nil
}

// errLockLost is the lock's session answering that it no longer holds it.
var errLockLost = errors.New("the lock's session no longer holds it")

// hold checks every LeaderCheck that conn still holds the lock; it
// returns when it does not (or its session fails), or when ctx ends.
func (l *Leader) hold(ctx context.Context, conn *sql.Conn) error {
	t := time.NewTicker(LeaderCheck)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
		cctx, cancel := context.WithTimeout(ctx, 2*LeaderCheck)
		var mine sql.NullInt64
		err := conn.QueryRowContext(cctx, "SELECT IS_USED_LOCK(?) = CONNECTION_ID()", l.lock).Scan(&mine)
		cancel()
		switch {
		case ctx.Err() != nil:
			return ctx.Err()
		case err != nil:
			return err
		case mine.Int64 != 1:
			return errLockLost
		}
	}
}

// release gives the lock back and closes its session; a session that
// cannot say it released is discarded, never returned to the pool.
func (l *Leader) release(conn *sql.Conn) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := conn.ExecContext(ctx, "DO RELEASE_LOCK(?)", l.lock); err != nil {
		discard(conn)
		return
	}
	_ = conn.Close()
}

// discard closes conn's session rather than returning it to the pool.
func discard(conn *sql.Conn) {
	_ = conn.Raw(func(any) error { return driver.ErrBadConn })
	_ = conn.Close()
}

// jitter is d ± 20%.
func jitter(d time.Duration) time.Duration {
	return d*8/10 + time.Duration(rand.Int64N(int64(d)*4/10+1))
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
