package applier

import (
	"context"
	"fmt"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/binlog"
)

// The pair tells what batching buys: the same stream of one-row source
// transactions applied with one local commit each, and with up to 64
// gathered per commit. rows/s is the figure to compare.
func BenchmarkApplyBatch1(b *testing.B)  { benchmarkApply(b, 1, 0) }
func BenchmarkApplyBatch64(b *testing.B) { benchmarkApply(b, 64, 0) }

// The fenced pair is what the replicator epoch costs (applier.Config.Epoch:
// a locking read of mlr.replicator before every commit), against the pair
// above.
func BenchmarkApplyBatch1Fenced(b *testing.B)  { benchmarkApply(b, 1, 1) }
func BenchmarkApplyBatch64Fenced(b *testing.B) { benchmarkApply(b, 64, 1) }

func benchmarkApply(b *testing.B, batch int, epoch uint64) {
	e := newEnv(b, fmt.Sprintf("bench_%d_%d", batch, epoch))
	if epoch != 0 {
		_, err := db.Exec("INSERT INTO mlr.replicator (id, epoch, holder, since) VALUES (1, ?, 'bench', NOW(6)) ON DUPLICATE KEY UPDATE epoch = VALUES(epoch)", epoch)
		require.NoError(b, err)
		b.Cleanup(func() { _, _ = db.Exec("DELETE FROM mlr.replicator") })
	}
	in := make(chan *binlog.Txn, b.N)
	for i := 0; i < b.N; i++ {
		in <- e.txn(uint64(i+1), e.ins(int64(i+1), "bench", int64(i), stamp(int64(i/1000), uint16(i%1000)), peerOrigin))
	}
	close(in)
	a := e.applier(batch)
	a.cfg.Epoch = epoch
	b.ResetTimer()
	require.NoError(b, a.Run(context.Background(), in))
	b.StopTimer()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "rows/s")
	require.Equal(b, uint64(b.N), a.Status().Txns)
}
