package applier

import (
	"context"
	"database/sql"
	"fmt"
	"testing"

	"github.com/go-sql-driver/mysql"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/schema"
)

// TestCounterMerges applies a remote increment concurrent with a local
// one under the counter rule: both count, and the merged row keeps the
// newer version's stamp.
func TestCounterMerges(t *testing.T) {
	e := newEnvRule(t, "t_counter", config.TableRule{Table: "items", Rule: "counter", Columns: []string{"qty"}})
	s0 := stamp(0, 1)
	e.runAll(64, e.txn(1, e.ins(1, "c", 10, s0, peerOrigin)))
	e.local(stamp(10, 0), "UPDATE "+schema.Quote(e.db)+".items SET qty = qty + 5 WHERE id = 1")

	u := e.upd(1, s0, peerOrigin, "c", 13, stamp(5, 0), peerOrigin) // +3 at the peer
	u.Before["qty"], u.Before["name"] = int64(10), "c"
	e.runAll(64, e.txn(2, u))

	r, _ := e.get(1)
	require.Equal(t, row{"c", 18, stamp(10, 0), self}, r)
	cs := e.conflicts()
	require.Len(t, cs, 1)
	require.Equal(t, "merged", cs[0].Outcome)
	require.Equal(t, "counter", cs[0].Rule)
}

// TestManualKeepsLocalPending leaves a concurrent remote update to an
// operator: the local row stays, the conflict is logged as pending.
func TestManualKeepsLocalPending(t *testing.T) {
	e := newEnvRule(t, "t_manual", config.TableRule{Table: "*", Rule: "manual"})
	s0 := stamp(0, 1)
	e.runAll(64, e.txn(1, e.ins(1, "m", 1, s0, peerOrigin)))
	e.local(stamp(3, 0), "UPDATE "+schema.Quote(e.db)+".items SET qty = 2 WHERE id = 1")
	e.runAll(64, e.txn(2, e.upd(1, s0, peerOrigin, "remote", 9, stamp(9, 0), peerOrigin)))
	r, _ := e.get(1)
	require.Equal(t, row{"m", 2, stamp(3, 0), self}, r)
	cs := e.conflicts()
	require.Len(t, cs, 1)
	require.Equal(t, "pending", cs[0].Outcome)
	require.JSONEq(t, `{"id":1,"name":"remote","qty":9}`, cs[0].RemoteRow.String)
}

// TestConflictMetric counts each logged conflict once in the metric, by
// table, rule and outcome.
func TestConflictMetric(t *testing.T) {
	e := newEnv(t, "t_metric")
	reg := prometheus.NewRegistry()
	s0 := stamp(0, 1)
	in := make(chan *binlog.Txn, 1)
	in <- e.txn(1, e.ins(1, "a", 1, s0, peerOrigin), e.ins(2, "b", 1, s0, peerOrigin))
	close(in)
	require.NoError(t, New(Config{Self: self, Peer: e.peer}, db, e.tables, e.clock, nil, reg).Run(context.Background(), in))
	e.local(stamp(10, 0), "UPDATE "+schema.Quote(e.db)+".items SET qty = 7")
	in = make(chan *binlog.Txn, 2)
	in <- e.txn(2, e.upd(1, s0, peerOrigin, "x", 2, stamp(5, 0), peerOrigin))
	in <- e.txn(3, e.upd(2, s0, peerOrigin, "y", 2, stamp(6, 0), peerOrigin))
	close(in)
	// A second applier in the process shares the registered collectors.
	a := New(Config{Self: self, Peer: e.peer}, db, e.tables, e.clock, nil, reg)
	require.NoError(t, a.Run(context.Background(), in))
	require.Equal(t, uint64(2), a.Status().Conflicts)

	mfs, err := reg.Gather()
	require.NoError(t, err)
	var got float64
	var txns float64
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			switch mf.GetName() {
			case "mlproxy_applier_conflicts_total":
				require.Equal(t, map[string]string{"peer": e.peer.Name, "schema": e.db, "table": "items", "rule": "lww", "outcome": "local_won"}, labels)
				got += m.GetCounter().GetValue()
			case "mlproxy_applier_txns_total":
				txns += m.GetCounter().GetValue()
			}
		}
	}
	require.Equal(t, 2.0, got)
	require.Equal(t, 3.0, txns)
}

// TestUpdateChangesPrimaryKey moves a row to a new key.
func TestUpdateChangesPrimaryKey(t *testing.T) {
	e := newEnv(t, "t_pkmove")
	s0 := stamp(0, 1)
	u := e.upd(1, s0, peerOrigin, "moved", 1, stamp(1, 0), peerOrigin)
	u.After["id"] = int64(5)
	old := e.del(1, s0, peerOrigin, stamp(1, 0), peerOrigin) // the old key's tombstone, as the trigger writes it
	old.PrevUnknown = true
	e.runAll(64, e.txn(1, e.ins(1, "m", 1, s0, peerOrigin)), e.txn(2, old, u))
	_, ok := e.get(1)
	require.False(t, ok)
	r, ok := e.get(5)
	require.True(t, ok)
	require.Equal(t, row{"moved", 1, stamp(1, 0), peerOrigin}, r)
	require.Empty(t, e.conflicts())
}

func TestTableNotReplicated(t *testing.T) {
	e := newEnv(t, "t_notrepl")
	_, err := db.Exec("CREATE TABLE " + schema.Quote(e.db) + ".other (id INT PRIMARY KEY)")
	require.NoError(t, err)
	e.tables = NewTables(db, []config.TableRule{{Schema: e.db, Table: "items"}}, nil)
	ch := e.ins(1, "x", 1, stamp(0, 1), peerOrigin)
	ch.Table = "other"
	in := make(chan *binlog.Txn, 1)
	in <- e.txn(1, ch)
	close(in)
	err = e.applier(64).Run(context.Background(), in)
	require.ErrorIs(t, err, ErrNotReplicated)
	require.ErrorContains(t, err, e.db+".other")
	require.ErrorContains(t, err, e.peer.Name)
}

// TestSessionSettings: TIMESTAMP values arrive formatted in UTC whatever
// the server's time zone, and an explicit 0 in an AUTO_INCREMENT key stays 0.
func TestSessionSettings(t *testing.T) {
	e := newEnv(t, "t_session")
	_, err := db.Exec("CREATE TABLE " + schema.Quote(e.db) + ".ev (id INT AUTO_INCREMENT PRIMARY KEY, at TIMESTAMP NULL)")
	require.NoError(t, err)
	ts, err := schema.Inspect(context.Background(), db, []config.TableRule{{Schema: e.db, Table: "ev"}})
	require.NoError(t, err)
	_, err = schema.Apply(context.Background(), db, schema.Stamping{Region: self}, ts, nil)
	require.NoError(t, err)
	_, err = db.Exec("SET GLOBAL time_zone = '+05:00'")
	require.NoError(t, err)
	defer func() { _, _ = db.Exec("SET GLOBAL time_zone = 'SYSTEM'") }()

	ch := binlog.RowChange{Schema: e.db, Table: "ev", Op: binlog.Insert,
		After: binlog.Row{"id": int64(0), "at": "2024-01-02 03:04:05", "_mlr_hlc": stamp(0, 1), "_mlr_origin": int64(peerOrigin)},
		Stamp: stamp(0, 1), Origin: peerOrigin}
	e.runAll(64, e.txn(1, ch))
	var unix int64
	require.NoError(t, db.QueryRow("SELECT UNIX_TIMESTAMP(at) FROM "+schema.Quote(e.db)+".ev WHERE id = 0").Scan(&unix))
	require.Equal(t, int64(1704164645), unix)
}

// TestEmptyTxnsWithoutBinlogAdmin: a user that may not switch sql_log_bin
// leaves progress over change-less transactions unsaved (never binlogged,
// so no echo) until a transaction with rows carries it.
func TestEmptyTxnsWithoutBinlogAdmin(t *testing.T) {
	e := newEnv(t, "t_nobinlogadmin")
	_, err := db.Exec("CREATE USER IF NOT EXISTS 'applier'@'%' IDENTIFIED BY 'pw'; " +
		"GRANT SELECT, INSERT, UPDATE, DELETE ON *.* TO 'applier'@'%'")
	require.NoError(t, err)
	c := mysql.NewConfig()
	c.User, c.Passwd, c.Net, c.Addr = "applier", "pw", "tcp", srv.Addr()
	limited, err := sql.Open("mysql", c.FormatDSN())
	require.NoError(t, err)
	defer limited.Close()

	run := func(txns ...*binlog.Txn) *Applier {
		in := make(chan *binlog.Txn, len(txns))
		for _, tx := range txns {
			in <- tx
		}
		close(in)
		a := New(Config{Self: self, Peer: e.peer}, limited, NewTables(limited, []config.TableRule{{Schema: e.db, Table: "*"}}, nil), e.clock, nil, nil)
		require.NoError(t, a.Run(context.Background(), in))
		return a
	}
	a := run(e.txn(1), e.txn(2))
	ck, err := a.Checkpoint(context.Background())
	require.NoError(t, err)
	require.False(t, ck.Found, "not saved")

	// One applier run: the empty batch is counted with the next one.
	in := make(chan *binlog.Txn)
	a = New(Config{Self: self, Peer: e.peer}, limited, NewTables(limited, []config.TableRule{{Schema: e.db, Table: "*"}}, nil), e.clock, nil, nil)
	done := make(chan error, 1)
	go func() { done <- a.Run(context.Background(), in) }()
	in <- e.txn(1)
	in <- e.txn(2)
	in <- e.txn(3, e.ins(1, "a", 1, stamp(0, 1), peerOrigin))
	close(in)
	require.NoError(t, <-done)
	ck, err = a.Checkpoint(context.Background())
	require.NoError(t, err)
	require.Equal(t, uint32(300), ck.Pos.Pos)
	require.Equal(t, uint64(3), ck.Txns)
	_, ok := e.get(1)
	require.True(t, ok)
}

// TestPiecesLostConnectionResume: a retryable failure after pieces were
// consumed cannot be retried from memory: the applier stops with
// ErrResume and nothing of the transaction is applied.
func TestPiecesLostConnectionResume(t *testing.T) {
	e := newEnv(t, "t_piecesresume")
	in := make(chan *binlog.Txn, 3)
	for i := 0; i < 3; i++ {
		p := e.txn(1, e.ins(int64(i+1), "p", 1, stamp(1, uint16(i)), peerOrigin))
		p.Piece, p.Last = i, i == 2
		in <- p
	}
	close(in)
	a := e.applier(64)
	a.changeHook = func(rc *binlog.RowChange) {
		if rc.After["id"] == int64(2) {
			_, err := db.Exec("KILL CONNECTION " + fmt.Sprint(a.sessionID.Load()))
			require.NoError(t, err)
		}
	}
	err := a.Run(context.Background(), in)
	require.ErrorIs(t, err, ErrResume)
	require.Equal(t, 0, e.count())
	ck, err := a.Checkpoint(context.Background())
	require.NoError(t, err)
	require.False(t, ck.Found)
}

// TestTableNotPrepared: changes to a table without mlproxy's metadata
// columns wait, with a message that says to run schema apply, and apply
// once it ran; the peer's other tables go on meanwhile.
func TestTableNotPrepared(t *testing.T) {
	e := newEnv(t, "t_notprepared")
	_, err := db.Exec("CREATE TABLE " + schema.Quote(e.db) + ".bare (id INT PRIMARY KEY)")
	require.NoError(t, err)
	bare := func(id int64) binlog.RowChange {
		return binlog.RowChange{Schema: e.db, Table: "bare", Op: binlog.Insert, After: binlog.Row{"id": id}, Stamp: stamp(0, uint16(id)), Origin: peerOrigin}
	}
	e.waitsForDDL(func() {
		ts, err := schema.Inspect(context.Background(), db, []config.TableRule{{Schema: e.db, Table: "*", Rule: "lww"}})
		require.NoError(t, err)
		_, err = schema.Apply(context.Background(), db, schema.Stamping{Region: self}, ts, nil)
		require.NoError(t, err)
	}, []int64{7}, nil, []string{e.db + ".bare", "schema apply"},
		e.txn(1, bare(1)), e.txn(2, e.ins(7, "other table", 1, stamp(0, 7), peerOrigin)), e.txn(3, bare(2)))
	var n int
	require.NoError(t, db.QueryRow("SELECT COUNT(*) FROM "+schema.Quote(e.db)+".bare").Scan(&n))
	require.Equal(t, 2, n)
}
