package logx

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"testing/synctest"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"
)

// observed returns a logger limited by o (with stack traces on errors, as
// mlproxy's) and what it wrote.
func observed(o Options) (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(LimitRepeats(core, o), zap.AddStacktrace(zapcore.ErrorLevel)), logs
}

// repeated is a line's "repeated" field (0: a line as logged, not a summary).
func repeated(e observer.LoggedEntry) int {
	n, _ := e.ContextMap()["repeated"].(int64)
	return int(n)
}

var errRefused = errors.New("Access denied for user 'repl'")

func TestBurstIsOneLineAndOneCount(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log, logs := observed(Options{})
		link := log.With(zap.String("peer", "us"))
		for i := range 1000 {
			// attempt and gtid change every time: not part of the key.
			link.Error("binlog link down", zap.Int("attempt", i+1), zap.String("gtid", fmt.Sprintf("0-2-%d", i)), zap.Error(errRefused))
		}
		require.Equal(t, 1, logs.Len(), "repeats within the window are counted, not written")
		require.NoError(t, log.Sync())

		got := logs.All()
		require.Len(t, got, 2)
		assert.Equal(t, 0, repeated(got[0]))
		assert.Equal(t, int64(1), got[0].ContextMap()["attempt"])
		assert.NotEmpty(t, got[0].Stack)
		s := got[1]
		assert.Equal(t, zapcore.ErrorLevel, s.Level)
		assert.Equal(t, "binlog link down", s.Message)
		assert.Equal(t, 999, repeated(s))
		assert.Empty(t, s.Stack, "the count is one short line")
		m := s.ContextMap()
		assert.Equal(t, "10s", m["window"])
		assert.Equal(t, "us", m["peer"], "the summary keeps the logger's context")
		assert.Equal(t, int64(1000), m["attempt"], "the summary shows the last repeat's fields")
		assert.Equal(t, "0-2-999", m["gtid"])
		assert.Equal(t, errRefused.Error(), m["error"])

		require.NoError(t, log.Sync())
		assert.Equal(t, 2, logs.Len(), "a count is written once")
	})
}

func TestSummaryLineJSON(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		var buf bytes.Buffer
		enc := zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig())
		log := zap.New(LimitRepeats(zapcore.NewCore(enc, zapcore.AddSync(&buf), zapcore.InfoLevel), Options{Window: 30 * time.Second}))
		log = log.With(zap.String("region", "eu"), zap.String("peer", "us"))
		for range 3 {
			log.Warn("apply batch failed, retrying", zap.String("table", "shop.stock"), zap.String("error", "Lock wait timeout exceeded"))
		}
		require.NoError(t, log.Sync())
		lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
		require.Len(t, lines, 2, buf.String())
		var s map[string]any
		require.NoError(t, json.Unmarshal([]byte(lines[1]), &s))
		assert.Equal(t, map[string]any{
			"level": "warn", "ts": s["ts"], "msg": "apply batch failed, retrying",
			"region": "eu", "peer": "us", "table": "shop.stock", "error": "Lock wait timeout exceeded",
			"repeated": float64(2), "window": "30s",
		}, s)
	})
}

func TestWhatTellsLinesApart(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log, logs := observed(Options{})
		us, ap := log.With(zap.String("peer", "us")), log.With(zap.String("peer", "ap"))
		for range 3 {
			us.Error("link down", zap.Error(errRefused))
			ap.Error("link down", zap.Error(errRefused))                                     // another peer (from With)
			us.Error("link down", zap.Error(errors.New("connection refused")))               // another error
			us.Error("link down", zap.String("table", "shop.orders"), zap.Error(errRefused)) // another table
			us.Warn("link down", zap.Error(errRefused))                                      // another level
			us.Named("tailer").Error("link down", zap.Error(errRefused))                     // another logger
			us.Error("link stuck", zap.Error(errRefused))                                    // another message
		}
		assert.Equal(t, 7, logs.Len(), "each distinct line written once")
		require.NoError(t, us.Sync())
		sums := logs.FilterFieldKey("repeated").All()
		require.Len(t, sums, 7, "each counted apart, and Sync on one derived logger writes every count")
		peers := map[string]int{}
		for _, s := range sums {
			assert.Equal(t, 2, repeated(s))
			peers[s.ContextMap()["peer"].(string)]++
		}
		assert.Equal(t, map[string]int{"us": 6, "ap": 1}, peers)
	})
}

func TestInfoAndDebugUntouched(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log, logs := observed(Options{})
		for range 100 {
			log.Info("config reloaded", zap.String("peer", "us"))
			log.Debug("stopped table still refused", zap.String("peer", "us"))
		}
		require.NoError(t, log.Sync())
		assert.Equal(t, 200, logs.Len())
		assert.Zero(t, logs.FilterFieldKey("repeated").Len())
	})
}

func TestBurstThatStopsIsReportedByItself(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log, logs := observed(Options{Window: time.Second})
		for range 5 {
			log.Warn("retrying", zap.String("peer", "us"))
			time.Sleep(10 * time.Millisecond)
		}
		require.Equal(t, 1, logs.Len())
		time.Sleep(time.Second)
		synctest.Wait()
		require.Equal(t, 2, logs.Len(), "the window's end writes the count without Sync or another line")
		assert.Equal(t, 4, repeated(logs.All()[1]))

		// Later, the same line starts a new window: written as it is.
		time.Sleep(time.Minute)
		log.Warn("retrying", zap.String("peer", "us"))
		require.Equal(t, 3, logs.Len())
		assert.Equal(t, 0, repeated(logs.All()[2]))
	})
}

func TestEndlessRepeatIsOneCountPerWindow(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log, logs := observed(Options{Window: time.Second})
		const total = 35 // 100ms apart: 3.5 windows
		for range total {
			log.Error("link stuck", zap.String("peer", "us"))
			time.Sleep(100 * time.Millisecond)
		}
		require.NoError(t, log.Sync())
		got := logs.All()
		require.Len(t, got, 5, "the first line, a count at 1s, 2s and 3s, and Sync's")
		sum := 0
		for i, e := range got {
			assert.Equal(t, i > 0, repeated(e) > 0, "line %d", i)
			sum += max(repeated(e), 1) // a line as logged counts 1
		}
		assert.Equal(t, total, sum, "every line is written or counted exactly once")
	})
}

// The next line after a window whose timer has not run yet (a busy
// process) writes the window's count, and is counted in the next window as
// it would have been after the timer.
func TestLateTimerCountWrittenByNextLine(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		core, logs := observer.New(zapcore.DebugLevel)
		rc := LimitRepeats(core, Options{Window: time.Second}).(*repeatCore)
		log := zap.New(rc)
		for range 3 {
			log.Error("link down", zap.String("peer", "us"))
		}
		rc.l.mu.Lock()
		for _, r := range rc.l.keys.Values() {
			r.timer.Stop()
		}
		rc.l.mu.Unlock()
		time.Sleep(2 * time.Second)
		log.Error("link down", zap.String("peer", "us"))
		require.Equal(t, 2, logs.Len())
		require.NoError(t, log.Sync())
		got := logs.All()
		require.Len(t, got, 3)
		assert.Equal(t, []int{0, 2, 1}, []int{repeated(got[0]), repeated(got[1]), repeated(got[2])})
	})
}

func TestForgottenKeyCountIsWritten(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		log, logs := observed(Options{MaxKeys: 2})
		for _, table := range []string{"a", "a", "a", "b", "c"} { // c evicts a
			log.Warn("table stopped", zap.String("table", table))
		}
		got := logs.All()
		require.Len(t, got, 4)
		assert.Equal(t, "a", got[2].ContextMap()["table"])
		assert.Equal(t, 2, repeated(got[2]), "a's count is written when it is forgotten, before c's line")
		assert.Equal(t, "c", got[3].ContextMap()["table"])

		time.Sleep(time.Minute) // a's timer, armed before the eviction, does nothing
		synctest.Wait()
		assert.Equal(t, 4, logs.Len())
	})
}

// Concurrent loggers, derived from one another in every goroutine, with a
// short window so that timers, Sync and new windows race with writes: every
// line is written or counted exactly once, per peer (go test -race).
func TestConcurrentUse(t *testing.T) {
	log, logs := observed(Options{Window: time.Millisecond, MaxKeys: 3})
	const goroutines, each = 8, 500
	peers := []string{"us", "ap", "sa", "af"} // one more than MaxKeys: evictions too
	var wg sync.WaitGroup
	for g := range goroutines {
		wg.Go(func() {
			for i := range each {
				l := log.With(zap.String("peer", peers[(g+i)%len(peers)]))
				l.Error("link down", zap.Error(errRefused), zap.Int("attempt", i))
				if i%100 == 0 {
					_ = l.Sync()
				}
			}
		})
	}
	wg.Wait()
	require.NoError(t, log.Sync())
	want := map[string]int{}
	for _, p := range peers {
		want[p] = goroutines * each / len(peers)
	}
	count := func() map[string]int {
		got := map[string]int{}
		for _, e := range logs.All() {
			got[e.ContextMap()["peer"].(string)] += max(repeated(e), 1)
		}
		return got
	}
	// A timer that took its count just before Sync may still be writing it.
	assert.Eventually(t, func() bool { return assert.ObjectsAreEqual(want, count()) }, 5*time.Second, 10*time.Millisecond)
	assert.Equal(t, want, count())
}
