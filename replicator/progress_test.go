package replicator

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/binlog"
)

// sample is one observation of a link, every 30 s (stuck_after 5 min is
// ten samples).
type sample struct {
	pos      string // applied gtid
	sent     uint64 // the tailer's sends
	restarts uint64 // the link's restarts
	failing  bool
	want     verdict
}

func runSamples(t *testing.T, samples []sample) {
	t.Helper()
	p := progress{after: 5 * time.Minute}
	now := time.Unix(0, 0)
	for i, s := range samples {
		got := p.observe(now, binlog.Position{GTID: s.pos}, s.sent, s.restarts, s.failing)
		require.Equal(t, s.want, got, "sample %d (%s)", i, now.Sub(time.Unix(0, 0)))
		now = now.Add(30 * time.Second)
	}
}

// repeat is n samples like s, sent growing by step each time.
func repeat(n int, s sample, step uint64) []sample {
	out := make([]sample, n)
	for i := range out {
		out[i] = s
		s.sent += step
	}
	return out
}

// TestProgressRestreamedTransaction: a large transaction streamed again
// after every failure (a restart every two minutes) looks healthy at
// most samples, but the position never moves and pieces keep coming:
// stuck ten samples after the first restart, once; progress clears it.
func TestProgressRestreamedTransaction(t *testing.T) {
	var s []sample
	for i := 0; i <= 16; i++ {
		s = append(s, sample{pos: "1-1-10", sent: uint64(100 + 40*i), restarts: uint64(i / 4)})
	}
	s[14].want = stuck // the first restart shows at sample 4
	s = append(s, sample{pos: "1-1-11", sent: 800, restarts: 4, want: recovered})
	runSamples(t, s)
}

// TestProgressLongHealthyTransaction: a large transaction that takes ten
// minutes to stream and never fails is not stuck.
func TestProgressLongHealthyTransaction(t *testing.T) {
	runSamples(t, repeat(25, sample{pos: "1-1-10", sent: 1}, 50))
}

// TestProgressIdleLink: a link with nothing to apply is never stuck, even
// after a peer outage it has recovered from.
func TestProgressIdleLink(t *testing.T) {
	s := repeat(5, sample{pos: "1-1-10", sent: 7}, 0)
	s = append(s, repeat(4, sample{pos: "1-1-10", sent: 7, failing: true}, 0)...) // peer down 2 min
	s = append(s, repeat(20, sample{pos: "1-1-10", sent: 7}, 0)...)               // back, idle
	runSamples(t, s)
}

// TestProgressPeerDown: a link failing at every sample for stuck_after is
// stuck (its peer is unreachable); it recovers when it goes idle again.
func TestProgressPeerDown(t *testing.T) {
	s := []sample{{pos: "1-1-10", sent: 7}}
	s = append(s, repeat(12, sample{pos: "1-1-10", sent: 7, failing: true}, 0)...)
	s[11].want = stuck
	s = append(s, sample{pos: "1-1-10", sent: 7, want: recovered})
	runSamples(t, s)
}

// TestProgressMoving: a link whose position moves at every sample is never
// stuck, however busy or troubled.
func TestProgressMoving(t *testing.T) {
	var s []sample
	for i := range 30 {
		s = append(s, sample{pos: "1-1-" + string(rune('a'+i)), sent: uint64(i * 100), restarts: uint64(i / 3), failing: i%3 == 0})
	}
	runSamples(t, s)
}
