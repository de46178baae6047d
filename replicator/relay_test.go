package replicator

import (
	"context"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/binlog"
)

func startRelay(t *testing.T, maxTxns int, maxBytes int64) (*relay, prometheus.Gauge, prometheus.Gauge) {
	t.Helper()
	txns := prometheus.NewGauge(prometheus.GaugeOpts{Name: "txns"})
	bytes := prometheus.NewGauge(prometheus.GaugeOpts{Name: "bytes"})
	r := newRelay(maxTxns, maxBytes, txns, bytes)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { r.run(ctx); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return r, txns, bytes
}

// send offers t to the relay and reports whether it was taken within d.
func send(r *relay, t *binlog.Txn, d time.Duration) bool {
	select {
	case r.in <- t:
		return true
	case <-time.After(d):
		return false
	}
}

// TestRelayBoundsBytes: a tailer offering more than relay_bytes waits
// until the applier takes something; the gauges say what waits; order is
// kept; an entry larger than the bound passes alone.
func TestRelayBoundsBytes(t *testing.T) {
	r, txns, bytes := startRelay(t, 1024, 1000)
	for i := 1; i <= 4; i++ {
		require.True(t, send(r, &binlog.Txn{Seq: uint64(i), Size: 250}, time.Second), "txn %d fits", i)
	}
	// The fifth is taken from the tailer by the forwarder, which then
	// waits: the sixth cannot even be offered.
	require.True(t, send(r, &binlog.Txn{Seq: 5, Size: 250}, time.Second))
	require.False(t, send(r, &binlog.Txn{Seq: 6, Size: 250}, 100*time.Millisecond), "the relay holds 1000 bytes: the tailer must wait")
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(txns) == 4 && testutil.ToFloat64(bytes) == 1000
	}, time.Second, 5*time.Millisecond)

	got := <-r.out // the applier takes one: the fifth moves in
	require.EqualValues(t, 1, got.Seq)
	require.True(t, send(r, &binlog.Txn{Seq: 6, Size: 250}, time.Second))
	for want := uint64(2); want <= 6; want++ {
		got := <-r.out
		require.Equal(t, want, got.Seq, "source order kept")
	}
	// Larger than the whole bound: passes when the relay is empty.
	require.True(t, send(r, &binlog.Txn{Seq: 7, Size: 5000}, time.Second))
	require.EqualValues(t, 7, (<-r.out).Seq)
	require.Eventually(t, func() bool {
		return testutil.ToFloat64(txns) == 0 && testutil.ToFloat64(bytes) == 0
	}, 3*time.Second, 10*time.Millisecond, "gauges drop to zero once the applier took everything")
}

// TestRelayBoundsCount: small transactions are bounded by count too.
func TestRelayBoundsCount(t *testing.T) {
	r, _, _ := startRelay(t, 3, 1<<20)
	// 3 in the channel, 1 held by the forwarder, then the tailer waits.
	for i := 1; i <= 4; i++ {
		require.True(t, send(r, &binlog.Txn{Seq: uint64(i), Size: 10}, time.Second))
	}
	require.False(t, send(r, &binlog.Txn{Seq: 5, Size: 10}, 100*time.Millisecond))
}

// TestRelayCloses: what the tailer sent before it stopped reaches the
// applier, then the relay closes.
func TestRelayCloses(t *testing.T) {
	r, _, _ := startRelay(t, 8, 1<<20)
	require.True(t, send(r, &binlog.Txn{Seq: 1, Size: 10}, time.Second))
	require.True(t, send(r, &binlog.Txn{Seq: 2, Size: 10}, time.Second))
	close(r.in)
	var seqs []uint64
	for txn := range r.out {
		seqs = append(seqs, txn.Seq)
	}
	require.Equal(t, []uint64{1, 2}, seqs)
}

// BenchmarkRelay is the cost of the byte-bounded relay per transaction
// (tailer to applier) beside the plain buffered channel it replaced, with
// the applier draining as fast as it can.
func BenchmarkRelay(b *testing.B) {
	txn := &binlog.Txn{Size: 512}
	b.Run("channel", func(b *testing.B) {
		ch := make(chan *binlog.Txn, 1024)
		go func() {
			for i := 0; i < b.N; i++ {
				ch <- txn
			}
			close(ch)
		}()
		for range ch {
		}
	})
	b.Run("relay", func(b *testing.B) {
		g := prometheus.NewGauge(prometheus.GaugeOpts{Name: "g"})
		r := newRelay(1024, 64<<20, g, g)
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		go r.run(ctx)
		go func() {
			for i := 0; i < b.N; i++ {
				r.in <- txn
			}
			close(r.in)
		}()
		for range r.out {
		}
	})
}
