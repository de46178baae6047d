package applier

import (
	"context"
	"database/sql"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/schema"
)

// TestShadowRuleLogsWhatItWouldDo: an lww table with a max shadow on qty.
// Two concurrent updates: lww keeps the newer (the live outcome), max would
// have kept the larger qty; the conflict log holds both outcomes and the
// row the shadow would have left, marked as differing, and the live row is
// lww's alone. A conflict both rules settle alike is not marked.
func TestShadowRuleLogsWhatItWouldDo(t *testing.T) {
	e := newEnvRule(t, "t_shadow", config.TableRule{Table: "items", Rule: "lww",
		Shadow: &config.Shadow{Rule: "max", Columns: []string{"qty"}}})
	s0 := stamp(0, 1)
	e.runAll(64, e.txn(1, e.ins(1, "c", 10, s0, peerOrigin), e.ins(2, "d", 10, s0, peerOrigin)))
	e.local(stamp(10, 0), "UPDATE "+schema.Quote(e.db)+".items SET qty = 12 WHERE id = 1")
	e.local(stamp(10, 0), "UPDATE "+schema.Quote(e.db)+".items SET name = 'local' WHERE id = 2")

	u := e.upd(1, s0, peerOrigin, "c", 13, stamp(5, 0), peerOrigin) // older stamp, larger qty
	u.Before["qty"], u.Before["name"] = int64(10), "c"
	u2 := e.upd(2, s0, peerOrigin, "remote", 10, stamp(5, 0), peerOrigin) // qty unchanged on both sides
	u2.Before["qty"], u2.Before["name"] = int64(10), "d"
	reg := prometheus.NewRegistry()
	in := make(chan *binlog.Txn, 1)
	in <- e.txn(2, u, u2)
	close(in)
	require.NoError(t, New(Config{Self: self, Peer: e.peer}, db, e.tables, e.clock, nil, reg).Run(context.Background(), in))

	r, _ := e.get(1)
	require.Equal(t, row{"c", 12, stamp(10, 0), self}, r, "the live rule (lww) decided: the newer local update")
	rows, err := db.Query("SELECT JSON_EXTRACT(pk, '$[0]'), rule, outcome, shadow_rule, shadow_outcome, shadow_row, shadow_differs FROM mlr.conflicts WHERE db = ? ORDER BY id", e.db)
	require.NoError(t, err)
	defer rows.Close()
	type logged struct {
		id                                   int
		rule, outcome, shadowRule, shadowOut string
		shadowRow                            sql.NullString
		differs                              bool
	}
	var got []logged
	for rows.Next() {
		var l logged
		require.NoError(t, rows.Scan(&l.id, &l.rule, &l.outcome, &l.shadowRule, &l.shadowOut, &l.shadowRow, &l.differs))
		got = append(got, l)
	}
	require.NoError(t, rows.Err())
	require.Len(t, got, 2)
	require.Equal(t, "lww", got[0].rule)
	require.Equal(t, "local_won", got[0].outcome)
	require.Equal(t, "max", got[0].shadowRule)
	require.Equal(t, "merged", got[0].shadowOut)
	require.JSONEq(t, `{"id":1,"name":"c","qty":13}`, got[0].shadowRow.String, "max would have kept the larger qty")
	require.True(t, got[0].differs)
	require.Equal(t, "local_won", got[1].outcome)
	require.JSONEq(t, `{"id":2,"name":"local","qty":10}`, got[1].shadowRow.String)
	require.False(t, got[1].differs, "both rules leave the same row")

	mfs, err := reg.Gather()
	require.NoError(t, err)
	counts := map[string]float64{}
	for _, mf := range mfs {
		if mf.GetName() != "mlproxy_applier_shadow_conflicts_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "differs" {
					counts[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	require.Equal(t, map[string]float64{"true": 1, "false": 1}, counts)
}
