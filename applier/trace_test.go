package applier

import (
	"testing"
	"time"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/change"
)

func stampAt(t time.Time) uint64 { return uint64(t.UnixMilli()) << 16 }

// TestLagSources: a transaction's lag counts from its newest row's stamp
// over all its pieces, or from its commit when that is later (a long
// transaction keeps its first write's stamp); only completed ones count.
func TestLagSources(t *testing.T) {
	t0 := time.Date(2026, 12, 8, 1, 0, 0, 0, time.UTC)
	st := &batchState{}
	// Quick: stamp 0.5 s after the second its commit is stamped with.
	st.applied(&binlog.Txn{Last: true, Timestamp: t0, Changes: []change.Change{{Stamp: stampAt(t0.Add(500 * time.Millisecond))}}})
	// Long: written at t0, committed 40 s later.
	st.applied(&binlog.Txn{Last: true, Timestamp: t0.Add(40 * time.Second), Changes: []change.Change{{Stamp: stampAt(t0)}}})
	// In pieces: the newest stamp is in the first piece.
	st.applied(&binlog.Txn{Timestamp: t0, Changes: []change.Change{{Stamp: stampAt(t0.Add(900 * time.Millisecond))}}})
	st.applied(&binlog.Txn{Last: true, Timestamp: t0, Changes: []change.Change{{Stamp: stampAt(t0.Add(100 * time.Millisecond))}}})
	// No rows (loop-suppressed): no observation.
	st.applied(&binlog.Txn{Last: true, Timestamp: t0})
	// A piece without its last: not counted yet.
	st.applied(&binlog.Txn{Timestamp: t0, Changes: []change.Change{{Stamp: stampAt(t0)}}})

	want := []time.Time{t0.Add(500 * time.Millisecond), t0.Add(40 * time.Second), t0.Add(900 * time.Millisecond)}
	if len(st.sources) != len(want) {
		t.Fatalf("sources = %v, want %v", st.sources, want)
	}
	for i := range want {
		if !st.sources[i].Equal(want[i]) {
			t.Errorf("transaction %d counts from %s, want %s", i, st.sources[i], want[i])
		}
	}
}
