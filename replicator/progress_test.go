package replicator

import (
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/binlog"
)

// sample is one observation of a link, every 30 s.
type sample struct {
	pos      string // applied gtid
	activity uint64
	failing  bool
	want     verdict
}

func runSamples(t *testing.T, samples []sample) {
	t.Helper()
	p := progress{after: 5 * time.Minute}
	now := time.Unix(0, 0)
	for i, s := range samples {
		got := p.observe(now, binlog.Position{GTID: s.pos}, s.activity, s.failing)
		require.Equal(t, s.want, got, "sample %d (%s)", i, now.Sub(time.Unix(0, 0)))
		now = now.Add(30 * time.Second)
	}
}

// repeat is n samples like s, the activity growing by step each time.
func repeat(n int, s sample, step uint64) []sample {
	out := make([]sample, n)
	for i := range out {
		out[i] = s
		s.activity += step
	}
	return out
}

// TestProgressRestreamedTransaction: a large transaction re-streamed after
// every failure looks healthy at most samples (the link is running, the
// applier is not retrying a batch), but pieces keep being offered and the
// position never moves: stuck after stuck_after, once; progress clears it.
func TestProgressRestreamedTransaction(t *testing.T) {
	s := []sample{{pos: "1-1-10", activity: 100}}
	for i := 1; i <= 12; i++ {
		s = append(s, sample{pos: "1-1-10", activity: uint64(100 + 40*i), failing: i%4 == 0})
	}
	s[10].want = stuck // 5 min after the first sample
	s = append(s, sample{pos: "1-1-10", activity: 700})
	s = append(s, sample{pos: "1-1-11", activity: 720, want: recovered})
	runSamples(t, s)
}

// TestProgressIdleLink: a link with nothing to apply is never stuck, even
// after a peer outage it has recovered from.
func TestProgressIdleLink(t *testing.T) {
	s := repeat(5, sample{pos: "1-1-10", activity: 7}, 0)
	s = append(s, repeat(4, sample{pos: "1-1-10", activity: 7, failing: true}, 0)...) // peer down 2 min
	s = append(s, repeat(20, sample{pos: "1-1-10", activity: 7}, 0)...)               // back, idle
	runSamples(t, s)
}

// TestProgressPeerDown: a link failing at every sample for stuck_after is
// stuck (its peer is unreachable); it recovers when it goes idle again.
func TestProgressPeerDown(t *testing.T) {
	s := []sample{{pos: "1-1-10", activity: 7}}
	s = append(s, repeat(12, sample{pos: "1-1-10", activity: 7, failing: true}, 0)...)
	s[10].want = stuck
	s = append(s, sample{pos: "1-1-10", activity: 7, want: recovered})
	runSamples(t, s)
}

// TestProgressMoving: a link whose position moves at every sample is never
// stuck, however busy.
func TestProgressMoving(t *testing.T) {
	var s []sample
	for i := range 30 {
		s = append(s, sample{pos: "1-1-" + string(rune('a'+i)), activity: uint64(i * 100), failing: i%3 == 0})
	}
	runSamples(t, s)
}
