package applier

import (
	"context"
	"database/sql"
	"fmt"
	"hash/maphash"
	"math/rand"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/hlc"
	"github.com/mlproxy/mlproxy/schema"
)

// histOp is one change of a generated history.
type histOp struct {
	kind      binlog.Op
	id        int64
	name      string
	qty       int64
	h, ph     uint64
	exists    bool // the key had a live row before (update, delete)
	beforeRow bool
}

// randomHistory is a stream of n source transactions of the peer over
// keys ids 0..keys-1, each of 1..maxChanges changes (one in eight, none:
// filtered by the tailer), every change causally
// after the previous version of its key (inserts, updates, deletes,
// re-inserts), stamps increasing.
func randomHistory(r *rand.Rand, n, keys, maxChanges int) [][]histOp {
	type ver struct {
		h    uint64
		live bool
		v    int
	}
	state := map[int64]*ver{}
	var tick uint16
	ms := int64(0)
	next := func() uint64 {
		tick++
		if tick == 1000 {
			tick, ms = 0, ms+1
		}
		return stamp(ms, tick)
	}
	out := make([][]histOp, n)
	for i := range out {
		k := 1 + r.Intn(maxChanges)
		if i > 0 && r.Intn(8) == 0 {
			k = 0 // a transaction the tailer filtered to nothing
		}
		for ; k > 0; k-- {
			id := int64(r.Intn(keys))
			s := state[id]
			if s == nil {
				s = &ver{}
				state[id] = s
			}
			s.v++
			op := histOp{id: id, name: fmt.Sprintf("k%d-v%d", id, s.v), qty: int64(s.v), h: next(), ph: s.h}
			switch {
			case !s.live:
				op.kind = binlog.Insert
				s.live = true
			case r.Intn(4) == 0:
				op.kind = binlog.Delete
				s.live = false
			default:
				op.kind = binlog.Update
			}
			s.h = op.h
			out[i] = append(out[i], op)
		}
	}
	return out
}

// build turns a history into e's source transactions.
func (e *env) build(hist [][]histOp) []*binlog.Txn {
	txns := make([]*binlog.Txn, len(hist))
	for i, ops := range hist {
		var chs []binlog.RowChange
		for _, op := range ops {
			switch op.kind {
			case binlog.Insert:
				rc := e.ins(op.id, op.name, op.qty, op.h, peerOrigin)
				rc.Meta = vector(op.ph, peerOrigin, op.h, peerOrigin)
				chs = append(chs, rc)
			case binlog.Update:
				chs = append(chs, e.upd(op.id, op.ph, peerOrigin, op.name, op.qty, op.h, peerOrigin))
			case binlog.Delete:
				chs = append(chs, e.del(op.id, op.ph, peerOrigin, op.h, peerOrigin))
			}
		}
		txns[i] = e.txn(uint64(i+1), chs...)
	}
	return txns
}

// dump renders the test table, its tombstones and the peer's checkpoint.
func (e *env) dump() string {
	e.t.Helper()
	var b strings.Builder
	q := func(query string, args ...any) {
		rows, err := db.Query(query, args...)
		require.NoError(e.t, err)
		defer rows.Close()
		cols, _ := rows.Columns()
		vals := make([]sql.NullString, len(cols))
		ptrs := make([]any, len(cols))
		for i := range vals {
			ptrs[i] = &vals[i]
		}
		for rows.Next() {
			require.NoError(e.t, rows.Scan(ptrs...))
			for _, v := range vals {
				fmt.Fprintf(&b, "%s|", v.String)
			}
			b.WriteString("\n")
		}
		require.NoError(e.t, rows.Err())
	}
	q("SELECT id, name, qty, _mlr_hlc, _mlr_origin, _mlr_vv FROM " + schema.Quote(e.db) + ".items ORDER BY id")
	b.WriteString("--\n")
	q("SELECT id, _mlr_hlc, _mlr_origin, _mlr_vv FROM mlr." + schema.Quote(schema.TombstoneTable(e.db, "items")) + " ORDER BY id")
	b.WriteString("--\n")
	q("SELECT gtid, file, pos, hlc, txns FROM mlr.checkpoints WHERE peer_id = ?", e.peer.ID)
	b.WriteString("--\n")
	q("SELECT COUNT(*) FROM mlr.conflicts WHERE db = ?", e.db)
	return b.String()
}

// workerCommits counts, per worker row of mlr.markers, the peer's
// transactions committed by parallel workers.
func (e *env) workerCommits() (workers int, batches int64) {
	e.t.Helper()
	require.NoError(e.t, db.QueryRow("SELECT COUNT(*), COALESCE(SUM(batches), 0) FROM mlr.markers WHERE peer_id = ? AND batches > 0", e.peer.ID).
		Scan(&workers, &batches))
	return workers, batches
}

// TestParallelMatchesSerial: random histories with overlapping keys end
// identical (rows, stamps, vectors, tombstones, checkpoint, no conflicts)
// applied by 4 workers and by one session, and the work was really spread
// over several workers.
func TestParallelMatchesSerial(t *testing.T) {
	for i, c := range []struct{ n, keys, maxChanges, batch int }{
		{300, 200, 3, 4},  // mostly independent batches
		{300, 12, 2, 2},   // hot keys: many dependencies
		{200, 40, 5, 1},   // one source transaction per batch
		{150, 500, 8, 64}, // large batches
	} {
		t.Run(fmt.Sprintf("n%d_keys%d_batch%d", c.n, c.keys, c.batch), func(t *testing.T) {
			hist := randomHistory(rand.New(rand.NewSource(int64(42+i))), c.n, c.keys, c.maxChanges)
			serial := newEnv(t, fmt.Sprintf("t_par_s%d", i))
			serial.runAll(c.batch, serial.build(hist)...)
			par := newEnv(t, fmt.Sprintf("t_par_p%d", i))
			par.workers = 4
			// Both envs' peer ids differ; compare everything else.
			par.peer.ID = serial.peer.ID + 1000
			par.peer.Name = fmt.Sprintf("peer%d", par.peer.ID)
			a := par.runAll(c.batch, par.build(hist)...)
			want := strings.ReplaceAll(serial.dump(), fmt.Sprintf("7-%d-", serial.peer.ID), "7-X-")
			got := strings.ReplaceAll(par.dump(), fmt.Sprintf("7-%d-", par.peer.ID), "7-X-")
			require.Equal(t, want, got)
			require.Equal(t, uint64(c.n), a.Status().Txns)
			if c.batch < 64 {
				w, _ := par.workerCommits()
				require.Greater(t, w, 1, "batches were committed by more than one worker")
			}
			if c.keys < 20 {
				require.Positive(t, testutil.ToFloat64(a.m.depWaits.WithLabelValues(a.peer)), "hot keys: batches waited for their dependencies")
			}
			require.Zero(t, testutil.ToFloat64(a.m.workersBusy.WithLabelValues(a.peer)), "no worker busy after Run")
			n, _ := serial.workerCommits()
			require.Zero(t, n, "serial apply writes no worker marker")
		})
	}
}

// TestParallelKeepsRowOrder: a trigger of the test's own records every
// version written to a row, in the order the server wrote them; for every
// key they appear in source order (set-based batches may skip versions a
// later change in the same batch replaced, never reorder them).
func TestParallelKeepsRowOrder(t *testing.T) {
	e := newEnv(t, "t_par_order")
	e.workers = 4
	q := schema.Quote(e.db)
	_, err := db.Exec("CREATE TABLE " + q + ".seen (n BIGINT AUTO_INCREMENT PRIMARY KEY, id INT NOT NULL, v INT NOT NULL)")
	require.NoError(t, err)
	for _, ev := range []string{"INSERT", "UPDATE"} {
		_, err = db.Exec("CREATE TRIGGER " + q + ".seen_" + strings.ToLower(ev) + " AFTER " + ev + " ON " + q + ".items FOR EACH ROW INSERT INTO " + q + ".seen (id, v) VALUES (NEW.id, NEW.qty)")
		require.NoError(t, err)
	}
	hist := randomHistory(rand.New(rand.NewSource(7)), 400, 30, 3)
	e.runAll(3, e.build(hist)...)

	rows, err := db.Query("SELECT id, v FROM " + q + ".seen ORDER BY n")
	require.NoError(t, err)
	defer rows.Close()
	last := map[int64]int64{}
	seen := 0
	for rows.Next() {
		var id, v int64
		require.NoError(t, rows.Scan(&id, &v))
		// Equal versions: an upsert fires the trigger of both events.
		require.GreaterOrEqual(t, v, last[id], "key %d: version %d written after version %d", id, v, last[id])
		last[id] = v
		seen++
	}
	require.NoError(t, rows.Err())
	require.Greater(t, seen, 100)
	require.Empty(t, e.conflicts())
	w, _ := e.workerCommits()
	require.Greater(t, w, 1)
}

// TestParallelCancelResumesExactlyOnce cancels a parallel applier in the
// middle (commits in flight on several workers), resumes from the
// checkpoint as the tailer would, and loses the reply to one COMMIT on the
// way: the result equals serial apply, every source transaction counted
// once.
func TestParallelCancelResumesExactlyOnce(t *testing.T) {
	hist := randomHistory(rand.New(rand.NewSource(99)), 300, 100, 3)
	serial := newEnv(t, "t_par_cancel_s")
	serial.runAll(4, serial.build(hist)...)

	e := newEnv(t, "t_par_cancel_p")
	e.workers = 4
	e.peer.ID = serial.peer.ID + 1000
	txns := e.build(hist)
	for round := 0; ; round++ {
		ck, err := e.applier(4).Checkpoint(context.Background())
		require.NoError(t, err)
		var rest []*binlog.Txn
		for _, x := range txns {
			if !ck.Found || x.Pos.Pos > ck.Pos.Pos {
				rest = append(rest, x)
			}
		}
		if len(rest) == 0 {
			break
		}
		require.Less(t, round, 50, "no progress")
		ctx, cancel := context.WithCancel(context.Background())
		a := e.applier(4)
		var commits atomic.Int32
		a.commitHook = func() error {
			switch commits.Add(1) {
			case 3:
				if round == 0 {
					return fmt.Errorf("read reply: %w", mysql.ErrInvalidConn) // it did commit
				}
			case 8:
				cancel()
			}
			return nil
		}
		in := make(chan *binlog.Txn, len(rest))
		for _, x := range rest {
			in <- x
		}
		close(in)
		err = a.Run(ctx, in)
		cancel()
		if err != nil {
			require.ErrorIs(t, err, context.Canceled)
		}
	}
	want := strings.ReplaceAll(serial.dump(), fmt.Sprintf("7-%d-", serial.peer.ID), "7-X-")
	got := strings.ReplaceAll(e.dump(), fmt.Sprintf("7-%d-", e.peer.ID), "7-X-")
	require.Equal(t, want, got, "checkpoint txns counts each source transaction once")
}

// TestParallelRetryKeepsOrder: a local transaction holds a row a batch
// needs for longer than the workers' lock wait timeout; that batch retries
// while later batches (already applied on other workers) yield, and the
// result equals serial apply.
func TestParallelRetryKeepsOrder(t *testing.T) {
	hist := randomHistory(rand.New(rand.NewSource(5)), 120, 60, 2)
	// Key 0 lives from the first transaction on and is written again late.
	hist[0] = append([]histOp{{kind: binlog.Insert, id: 1000, name: "held", qty: 1, h: stamp(-1, 1)}}, hist[0]...)
	hist[60] = append(hist[60], histOp{kind: binlog.Update, id: 1000, name: "held2", qty: 2, h: stamp(-1, 2), ph: stamp(-1, 1)})
	serial := newEnv(t, "t_par_retry_s")
	serial.runAll(2, serial.build(hist)...)

	e := newEnv(t, "t_par_retry_p")
	e.workers = 4
	e.peer.ID = serial.peer.ID + 1000
	txns := e.build(hist)
	e.runAll(2, txns[:10]...)

	ctx := context.Background()
	conn, err := db.Conn(ctx)
	require.NoError(t, err)
	defer conn.Close()
	_, err = conn.ExecContext(ctx, "START TRANSACTION")
	require.NoError(t, err)
	var one int
	require.NoError(t, conn.QueryRowContext(ctx, "SELECT 1 FROM "+schema.Quote(e.db)+".items WHERE id = 1000 FOR UPDATE").Scan(&one))
	go func() {
		time.Sleep(time.Duration(workerLockWait)*time.Second + 2*time.Second)
		_, _ = conn.ExecContext(ctx, "ROLLBACK")
	}()
	start := time.Now()
	a := e.runAll(2, txns[10:]...)
	require.Greater(t, time.Since(start), time.Duration(workerLockWait)*time.Second, "the batch waited for the local lock")
	require.NoError(t, a.Status().RetryErr)

	want := strings.ReplaceAll(serial.dump(), fmt.Sprintf("7-%d-", serial.peer.ID), "7-X-")
	got := strings.ReplaceAll(e.dump(), fmt.Sprintf("7-%d-", e.peer.ID), "7-X-")
	require.Equal(t, want, got)
}

// TestWritesetKeys: the keys of a change are its table's primary key and
// non-NULL unique keys, from both images; text folds case and trailing
// spaces.
func TestWritesetKeys(t *testing.T) {
	seed := maphash.MakeSeed()
	tk := tableKey{"d", "t"}
	key := func(kind string, cols []string, img binlog.Row) (uint64, bool) {
		var b strings.Builder
		if !keyText(&b, kind, tk, cols, img) {
			return 0, false
		}
		return maphash.String(seed, b.String()), true
	}
	a, ok := key("p", []string{"id"}, binlog.Row{"id": "Ab "})
	require.True(t, ok)
	b, _ := key("p", []string{"id"}, binlog.Row{"id": []byte("aB")})
	require.Equal(t, a, b)
	c, _ := key("p", []string{"id"}, binlog.Row{"id": "ac"})
	require.NotEqual(t, a, c)
	d, _ := key("u0", []string{"id"}, binlog.Row{"id": "ab"})
	require.NotEqual(t, a, d, "a unique key's value is not the primary key's")
	_, ok = key("u0", []string{"email"}, binlog.Row{"email": nil})
	require.False(t, ok, "NULL never collides in a unique key")
	x, _ := key("p", []string{"a", "b"}, binlog.Row{"a": int64(1), "b": int64(23)})
	y, _ := key("p", []string{"a", "b"}, binlog.Row{"a": int64(12), "b": int64(3)})
	require.NotEqual(t, x, y)
}

// TestParallelConstraintStopsAndLogs: a remote change refused by a unique
// key the rule cannot place, in the middle of parallel batches. Under
// on_constraint log it is recorded and the rest applies; under stop its
// table stops (the table has no foreign keys): the checkpoint goes on,
// the table's later changes are held, and once the local row goes they
// apply in order: every source transaction applied once.
func TestParallelConstraintStopsAndLogs(t *testing.T) {
	defer func(r, p time.Duration) { stopRetry, stopPoll = r, p }(stopRetry, stopPoll)
	stopRetry, stopPoll = 300*time.Millisecond, 50*time.Millisecond
	for _, mode := range []string{"log", "stop"} {
		t.Run(mode, func(t *testing.T) {
			e := newEnvRule(t, "t_par_constraint_"+mode, withOnConstraint(mode))
			e.workers = 4
			_, err := db.Exec("ALTER TABLE " + schema.Quote(e.db) + ".items ADD UNIQUE KEY (name)")
			require.NoError(t, err)
			e.local(stamp(0, 1), "INSERT INTO "+schema.Quote(e.db)+".items (id, name, qty) VALUES (900, 'taken', 1)")
			var txns []*binlog.Txn
			for i := 1; i <= 60; i++ {
				name := fmt.Sprintf("n%d", i)
				if i == 30 {
					name = "taken"
				}
				txns = append(txns, e.txn(uint64(i), e.ins(int64(i), name, int64(i), stamp(1, uint16(i)), peerOrigin)))
			}
			a := e.applier(2)
			in := make(chan *binlog.Txn, len(txns))
			for _, x := range txns {
				in <- x
			}
			done := make(chan error, 1)
			go func() { done <- a.Run(context.Background(), in) }()
			if mode == "stop" {
				require.Eventually(t, func() bool { return len(a.Status().TableStops) == 1 }, 20*time.Second, 20*time.Millisecond)
				require.Eventually(t, func() bool { ck, _ := a.Checkpoint(context.Background()); return ck.Pos.Pos == 60*100 }, 20*time.Second, 20*time.Millisecond,
					"the checkpoint passes the held changes")
				_, ok := e.get(31)
				require.False(t, ok, "a later change to the stopped table is held")
				_, err = db.Exec("DELETE FROM " + schema.Quote(e.db) + ".items WHERE id = 900")
				require.NoError(t, err)
				require.Eventually(t, func() bool { return len(a.Status().TableStops) == 0 }, 20*time.Second, 20*time.Millisecond,
					"the table resumes on its own once the local row is gone")
			}
			close(in)
			select {
			case err := <-done:
				require.NoError(t, err)
			case <-time.After(60 * time.Second):
				t.Fatal("applier did not finish")
			}
			ck, err := a.Checkpoint(context.Background())
			require.NoError(t, err)
			require.Equal(t, uint64(60), ck.Txns)
			require.Equal(t, uint32(60*100), ck.Pos.Pos)
			_, ok := e.get(30)
			require.Equal(t, mode == "stop", ok, "the refused row is applied once the local row is gone (stop), logged and passed over (log)")
			for _, id := range []int64{1, 29, 31, 60} {
				_, ok := e.get(id)
				require.True(t, ok, "row %d", id)
			}
			var rejected int
			require.NoError(t, db.QueryRow("SELECT COUNT(*) FROM mlr.conflicts WHERE db = ? AND outcome = 'rejected'", e.db).Scan(&rejected))
			require.Equal(t, map[string]int{"log": 1, "stop": 0}[mode], rejected)
		})
	}
}

func withOnConstraint(mode string) config.TableRule {
	return config.TableRule{Table: "*", Rule: "lww", OnConstraint: mode}
}

// TestParallelUniqueSwap: two rows swap a unique value through a third,
// one source transaction per batch: the batches share unique-key values
// (from their before and after images) and apply in order.
func TestParallelUniqueSwap(t *testing.T) {
	e := newEnv(t, "t_par_uniqswap")
	e.workers = 4
	_, err := db.Exec("ALTER TABLE " + schema.Quote(e.db) + ".items ADD UNIQUE KEY (name)")
	require.NoError(t, err)
	s0 := stamp(0, 1)
	upd := func(id int64, from, to string, ph, h uint64) binlog.RowChange {
		rc := e.upd(id, ph, peerOrigin, to, 1, h, peerOrigin)
		rc.Before["name"] = from
		return rc
	}
	a := e.runAll(1,
		e.txn(1, e.ins(1, "a", 1, s0, peerOrigin), e.ins(2, "b", 1, s0, peerOrigin)),
		e.txn(2, upd(1, "a", "tmp", s0, stamp(1, 0))),
		e.txn(3, upd(2, "b", "a", s0, stamp(2, 0))),
		e.txn(4, upd(1, "tmp", "b", stamp(1, 0), stamp(3, 0))),
	)
	r, _ := e.get(1)
	require.Equal(t, row{"b", 1, stamp(3, 0), peerOrigin}, r)
	r, _ = e.get(2)
	require.Equal(t, row{"a", 1, stamp(2, 0), peerOrigin}, r)
	require.Empty(t, e.conflicts())
	ck, err := a.Checkpoint(t.Context())
	require.NoError(t, err)
	require.Equal(t, uint64(4), ck.Txns)
}

// TestParallelHeldAndDDL: with workers, a change stamped too far ahead
// holds the link at its batch (earlier batches commit, nothing after it
// does) until the clock catches up; a column added here and at the source
// is found by re-reading the table on every worker's plan; a column the
// local table lacks makes the table wait for the DDL, its changes held.
func TestParallelHeldAndDDL(t *testing.T) {
	e := newEnv(t, "t_par_held")
	e.workers = 4
	var mu sync.Mutex
	wall := time.UnixMilli(base)
	e.clock = hlc.NewClock(hlc.Options{Now: func() time.Time { mu.Lock(); defer mu.Unlock(); return wall }, MaxOffset: time.Second})
	var txns []*binlog.Txn
	for i := 1; i <= 30; i++ {
		h := stamp(0, uint16(i))
		if i == 21 {
			h = stamp(60_000, 0) // a minute ahead
		}
		txns = append(txns, e.txn(uint64(i), e.ins(int64(i), "x", 1, h, peerOrigin)))
	}
	a := e.applier(1)
	a.holdPoll = 10 * time.Millisecond
	in := make(chan *binlog.Txn, len(txns))
	for _, x := range txns {
		in <- x
	}
	close(in)
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background(), in) }()
	require.Eventually(t, func() bool { return a.Status().Held != "" }, 10*time.Second, 10*time.Millisecond)
	require.Eventually(t, func() bool { _, ok := e.get(20); return ok }, 10*time.Second, 10*time.Millisecond, "batches before the held one commit")
	time.Sleep(50 * time.Millisecond)
	for _, id := range []int64{21, 22, 30} {
		_, ok := e.get(id)
		require.False(t, ok, "row %d applied while its predecessor is held", id)
	}
	mu.Lock()
	wall = wall.Add(time.Minute)
	mu.Unlock()
	require.NoError(t, <-done)
	require.Equal(t, 30, e.count())

	_, err := db.Exec("ALTER TABLE " + schema.Quote(e.db) + ".items ADD COLUMN color VARCHAR(16) NULL")
	require.NoError(t, err)
	txns = nil
	for i := 31; i <= 50; i++ {
		ch := e.ins(int64(i), "y", 1, stamp(60_000, uint16(i)), peerOrigin)
		ch.After["color"] = "red"
		txns = append(txns, e.txn(uint64(i), ch))
	}
	e.runAll(1, txns...)
	var n int
	require.NoError(t, db.QueryRow("SELECT COUNT(*) FROM "+schema.Quote(e.db)+".items WHERE color = 'red'").Scan(&n))
	require.Equal(t, 20, n)

	ch := e.ins(60, "z", 1, stamp(60_000, 100), peerOrigin)
	ch.After["size"] = int64(3)
	e.waitsForDDL(func() {
		_, err := db.Exec("ALTER TABLE " + schema.Quote(e.db) + ".items ADD COLUMN size INT NULL")
		require.NoError(t, err)
	}, []int64{51}, []int64{60, 53}, []string{"size"},
		e.txn(51, e.ins(51, "w", 1, stamp(60_000, 99), peerOrigin)), e.txn(52, ch), e.txn(53, e.ins(53, "w", 1, stamp(60_000, 101), peerOrigin)))
}
