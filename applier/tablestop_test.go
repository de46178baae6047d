package applier

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/change"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/schema"
)

// addTable creates db.name with ddl's columns and prepares it like the
// env's own table.
func (e *env) addTable(ddl string, rule config.TableRule) {
	e.t.Helper()
	ctx := context.Background()
	_, err := db.ExecContext(ctx, ddl)
	require.NoError(e.t, err)
	rule.Schema = e.db
	ts, err := schema.Inspect(ctx, db, []config.TableRule{rule})
	require.NoError(e.t, err)
	_, err = schema.Apply(ctx, db, schema.Stamping{Region: self}, ts, nil)
	require.NoError(e.t, err)
}

// other is an insert into the env's second table, others (id, v).
func (e *env) other(id, v int64, h uint64) binlog.RowChange {
	return binlog.RowChange{Schema: e.db, Table: "others", Op: binlog.Insert,
		After: binlog.Row{"id": id, "v": v, "_mlr_hlc": h, "_mlr_origin": int64(peerOrigin)},
		Stamp: h, Origin: change.Origin(peerOrigin), Meta: vector(0, 0, h, peerOrigin)}
}

func (e *env) countOf(table string) int {
	e.t.Helper()
	var n int
	require.NoError(e.t, db.QueryRow("SELECT COUNT(*) FROM "+schema.Quote(e.db)+"."+schema.Quote(table)).Scan(&n))
	return n
}

func (e *env) held() int {
	e.t.Helper()
	var n int
	require.NoError(e.t, db.QueryRow("SELECT COUNT(*) FROM mlr.held WHERE peer_id = ?", e.peer.ID).Scan(&n))
	return n
}

// takenEnv is an env under on_constraint stop whose items.name is unique
// and holds 'taken' in local row 900.
func takenEnv(t *testing.T, name string) *env {
	t.Helper()
	e := newEnvRule(t, name, withOnConstraint("stop"))
	_, err := db.Exec("ALTER TABLE " + schema.Quote(e.db) + ".items ADD UNIQUE KEY (name)")
	require.NoError(t, err)
	e.local(stamp(0, 1), "INSERT INTO "+schema.Quote(e.db)+".items (id, name, qty) VALUES (900, 'taken', 1)")
	return e
}

// runOpen runs a over txns with the relay left open (the applier keeps
// running, as a link's does); the function it returns stops a and waits.
func runOpen(a *Applier, txns ...*binlog.Txn) (stop func()) {
	in := make(chan *binlog.Txn, len(txns))
	for _, x := range txns {
		in <- x
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx, in) }()
	return func() { cancel(); <-done }
}

// TestTableStopHoldsOnlyThatTable: a change a secondary unique key refuses
// stops its table alone: the peer's other table and the checkpoint go on,
// the stopped table's later changes are held (also across a restart of
// the applier), a retry that still fails keeps it stopped, and a skip
// records exactly the refused change in the conflict log and applies the
// held ones in order. Serial and parallel apply.
func TestTableStopHoldsOnlyThatTable(t *testing.T) {
	defer func(r, p time.Duration) { stopRetry, stopPoll = r, p }(stopRetry, stopPoll)
	stopRetry, stopPoll = time.Hour, 50*time.Millisecond // only requests resume it
	for _, workers := range []int{0, 4} {
		t.Run(fmt.Sprintf("workers=%d", workers), func(t *testing.T) {
			e := takenEnv(t, fmt.Sprintf("t_tstop_%d", workers))
			e.workers = workers
			e.addTable("CREATE TABLE "+schema.Quote(e.db)+".others (id INT PRIMARY KEY, v INT NOT NULL)", withOnConstraint("stop"))

			// Source transaction i writes items row i and others row i;
			// items row 10 collides with the local row 900.
			mk := func(i int) *binlog.Txn {
				name := fmt.Sprintf("n%d", i)
				if i == 10 {
					name = "taken"
				}
				return e.txn(uint64(i), e.ins(int64(i), name, int64(i), stamp(1, uint16(i)), peerOrigin), e.other(int64(i), int64(i), stamp(1, uint16(i))))
			}
			run := func(from, to int) (*Applier, context.CancelFunc, chan error) {
				a := e.applier(1) // one source transaction per commit: row 9 commits before row 10 stops the table
				in := make(chan *binlog.Txn, to-from+1)
				for i := from; i <= to; i++ {
					in <- mk(i)
				}
				ctx, cancel := context.WithCancel(context.Background())
				done := make(chan error, 1)
				go func() { done <- a.Run(ctx, in) }()
				return a, cancel, done
			}
			stopped := func(a *Applier) *Stop {
				if s := a.Status().TableStops; len(s) == 1 {
					return &s[0]
				}
				return nil
			}

			a, cancel, done := run(1, 40)
			require.Eventually(t, func() bool { return e.countOf("others") == 40 }, 20*time.Second, 20*time.Millisecond, "the other table goes on")
			require.Eventually(t, func() bool { return stopped(a) != nil }, 10*time.Second, 20*time.Millisecond)
			s := stopped(a)
			require.Equal(t, e.db+".items", s.Table)
			require.Equal(t, fmt.Sprintf("7-%d-10", e.peer.ID), s.GTID)
			require.Nil(t, a.Status().Stopped, "the link as a whole runs")
			require.Eventually(t, func() bool { ck, _ := a.Checkpoint(context.Background()); return ck.Txns == 40 }, 10*time.Second, 20*time.Millisecond)
			if e.countOf("items") != 10 {
				rows, _ := db.Query("SELECT id FROM " + schema.Quote(e.db) + ".items")
				for rows.Next() {
					var id int
					rows.Scan(&id)
					t.Log("row", id)
				}
				rows.Close()
			}
			require.Equal(t, 10, e.countOf("items"), "rows 1..9 and the local row 900")
			require.Equal(t, 31, e.held(), "items rows 10..40 wait in mlr.held")

			// A restart while stopped: the stop and the held changes
			// survive, and later changes to items join them.
			cancel()
			<-done
			a, cancel, done = run(41, 45)
			defer func() { cancel(); <-done }()
			require.Eventually(t, func() bool { return e.countOf("others") == 45 }, 20*time.Second, 20*time.Millisecond)
			require.NotNil(t, stopped(a), "the stop is read back at start")
			require.Equal(t, 36, e.held())

			// A retry that still meets the row keeps the table stopped.
			_, err := db.Exec("UPDATE mlr.table_stops SET request = 'retry', requested_by = 'test' WHERE peer_id = ?", e.peer.ID)
			require.NoError(t, err)
			require.Eventually(t, func() bool {
				var n int
				require.NoError(t, db.QueryRow("SELECT COUNT(*) FROM mlr.table_stops WHERE peer_id = ? AND request IS NULL", e.peer.ID).Scan(&n))
				return n == 1
			}, 10*time.Second, 20*time.Millisecond, "the retry is taken")
			require.Eventually(t, func() bool { return e.held() == 36 && stopped(a) != nil }, 5*time.Second, 20*time.Millisecond)

			// A skip: exactly row 10 is passed over and logged; the rest
			// applies in order.
			_, err = db.Exec("UPDATE mlr.table_stops SET request = 'skip', request_gtid = ?, requested_by = 'test' WHERE peer_id = ?", s.GTID, e.peer.ID)
			require.NoError(t, err)
			require.Eventually(t, func() bool { return stopped(a) == nil }, 20*time.Second, 20*time.Millisecond)
			require.Equal(t, 0, e.held())
			require.Equal(t, 45, e.countOf("items"), "rows 1..45 but 10, and 900")
			_, ok := e.get(10)
			require.False(t, ok)
			var n int
			require.NoError(t, db.QueryRow("SELECT COUNT(*) FROM mlr.table_stops WHERE peer_id = ?", e.peer.ID).Scan(&n))
			require.Zero(t, n)
			var skipped []conflictRow
			for _, c := range e.conflicts() {
				if c.Outcome == "skipped" {
					skipped = append(skipped, c)
				}
			}
			require.Len(t, skipped, 1)
			require.Equal(t, "[10]", skipped[0].PK)
		})
	}
}

// TestForeignKeyStopsLink: a table a foreign key ties to another cannot
// stop alone (the order of its changes against the other table's
// matters): a refused change there stops the whole link.
func TestForeignKeyStopsLink(t *testing.T) {
	defer func(r, p time.Duration) { stopRetry, stopPoll = r, p }(stopRetry, stopPoll)
	stopRetry, stopPoll = time.Hour, 50*time.Millisecond
	e := takenEnv(t, "t_tstop_fk")
	e.addTable("CREATE TABLE "+schema.Quote(e.db)+".others (id INT PRIMARY KEY, v INT NOT NULL, FOREIGN KEY (v) REFERENCES "+
		schema.Quote(e.db)+".items (id))", withOnConstraint("stop"))
	a := e.applier(8)
	defer runOpen(a, e.txn(1, e.ins(1, "taken", 1, stamp(1, 1), peerOrigin)), e.txn(2, e.other(1, 900, stamp(1, 2))))()
	require.Eventually(t, func() bool { return a.Status().Stopped != nil }, 10*time.Second, 20*time.Millisecond)
	require.Empty(t, a.Status().TableStops)
	time.Sleep(300 * time.Millisecond)
	require.Equal(t, 0, e.countOf("others"), "nothing after the refused change is applied")
}

// TestHeldChangeRoundTrip: a held change comes back with its values' Go
// types; an empty byte string stays empty (not NULL) and NULL stays NULL.
func TestHeldChangeRoundTrip(t *testing.T) {
	in := binlog.RowChange{Schema: "s", Table: "t", Op: binlog.Update,
		Before: binlog.Row{"id": int64(1), "b": []byte{}, "n": nil},
		After: binlog.Row{"id": int64(1), "b": []byte("x"), "e": []byte{}, "n": nil, "i8": int8(-3), "u": uint64(1 << 63),
			"f": float32(1.5), "d": float64(2.25), "s": "", "dec": "12.50"},
		Stamp: 42, Origin: change.NewOrigin(3, 1), Meta: `{"vv":{"3":42}}`, PrevUnknown: true}
	blob, err := encodeChange(&in)
	require.NoError(t, err)
	out, err := decodeChange(blob)
	require.NoError(t, err)
	require.Equal(t, in, out)
	require.NotNil(t, out.After["e"], "an empty BLOB is not NULL")
	require.Nil(t, out.After["n"])
}

// TestSkipTwoRefusalsInOneChunk: two refused changes held in one chunk
// (chunks made small): a skip of the first commits it and the changes
// after it up to the second, where the table stops again; a second skip
// gets past that one too. Every other change applies once, in order.
func TestSkipTwoRefusalsInOneChunk(t *testing.T) {
	defer func(r, p time.Duration, c, m int) { stopRetry, stopPoll, heldChunk, maxResumeChunks = r, p, c, m }(stopRetry, stopPoll, heldChunk, maxResumeChunks)
	stopRetry, stopPoll, heldChunk, maxResumeChunks = time.Hour, 20*time.Millisecond, 4, 2
	e := takenEnv(t, "t_tstop_two")
	e.local(stamp(0, 1), "INSERT INTO "+schema.Quote(e.db)+".items (id, name, qty) VALUES (901, 'taken2', 1)")
	names := map[int]string{3: "taken", 6: "taken2"}
	a := e.applier(1)
	var txns []*binlog.Txn
	for i := 1; i <= 20; i++ {
		name, ok := names[i]
		if !ok {
			name = fmt.Sprintf("n%d", i)
		}
		txns = append(txns, e.txn(uint64(i), e.ins(int64(i), name, int64(i), stamp(1, uint16(i)), peerOrigin)))
	}
	defer runOpen(a, txns...)()
	stop := func() *Stop {
		if s := a.Status().TableStops; len(s) == 1 {
			return &s[0]
		}
		return nil
	}
	skip := func(gtid string) {
		_, err := db.Exec("UPDATE mlr.table_stops SET request = 'skip', request_gtid = ?, requested_by = 'test' WHERE peer_id = ?", gtid, e.peer.ID)
		require.NoError(t, err)
	}
	require.Eventually(t, func() bool { return e.held() == 18 }, 10*time.Second, 10*time.Millisecond)
	first := stop().GTID
	require.Equal(t, fmt.Sprintf("7-%d-3", e.peer.ID), first)
	skip(first)
	require.Eventually(t, func() bool { s := stop(); return s != nil && s.GTID != first }, 10*time.Second, 10*time.Millisecond)
	require.Equal(t, fmt.Sprintf("7-%d-6", e.peer.ID), stop().GTID, "stopped again at the second refusal")
	require.Equal(t, 15, e.held(), "the skipped change and the two after it committed")
	for _, id := range []int64{4, 5} {
		_, ok := e.get(id)
		require.True(t, ok, "row %d", id)
	}
	skip(stop().GTID)
	require.Eventually(t, func() bool { return stop() == nil }, 10*time.Second, 10*time.Millisecond, "the rest resumes over several rounds")
	require.Equal(t, 0, e.held())
	require.Equal(t, 20, e.count(), "rows 1..20 but 3 and 6, and 900, 901")
	var skipped int
	require.NoError(t, db.QueryRow("SELECT COUNT(*) FROM mlr.conflicts WHERE db = ? AND outcome = 'skipped'", e.db).Scan(&skipped))
	require.Equal(t, 2, skipped)
}

// TestForwardingRegionStopsLink: a region that forwards what it applies
// (star hub, ring) never stops one table: its held changes would reach
// other regions late.
func TestForwardingRegionStopsLink(t *testing.T) {
	defer func(r, p time.Duration) { stopRetry, stopPoll = r, p }(stopRetry, stopPoll)
	stopRetry, stopPoll = time.Hour, 50*time.Millisecond
	e := takenEnv(t, "t_tstop_fwd")
	a := e.applier(1)
	a.cfg.Forwards = true
	defer runOpen(a, e.txn(1, e.ins(1, "taken", 1, stamp(1, 1), peerOrigin)), e.txn(2, e.ins(2, "free", 1, stamp(1, 2), peerOrigin)))()
	require.Eventually(t, func() bool { return a.Status().Stopped != nil }, 10*time.Second, 20*time.Millisecond)
	require.Empty(t, a.Status().TableStops)
	require.Zero(t, e.held())
}
