package replicator

import (
	"context"
	"fmt"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
	"go.uber.org/zap/zaptest"

	"github.com/mlproxy/mlproxy/dbtest"
	"github.com/mlproxy/mlproxy/schema"
)

var srv *dbtest.Server

func TestMain(m *testing.M) {
	code := m.Run()
	if srv != nil {
		_ = srv.Destroy()
	}
	dbtest.Cleanup()
	os.Exit(code)
}

// server starts the package's server on first use (only the leader
// tests need one).
func server(t *testing.T) *dbtest.Server {
	t.Helper()
	if srv == nil {
		s, err := dbtest.Start(dbtest.Options{ServerID: 4501})
		require.NoError(t, err)
		srv = s
	}
	return srv
}

// instance is one mlproxy process's Leader, recording its terms.
type instance struct {
	name string
	l    *Leader
	stop context.CancelFunc
	done chan struct{}

	mu     sync.Mutex
	epochs []uint64 // every epoch it led under
	live   uint64   // the epoch it leads under now, 0 when not
}

func startInstance(t *testing.T, name string) *instance {
	db, err := server(t).Open("")
	require.NoError(t, err)
	t.Cleanup(func() { db.Close() })
	ctx, cancel := context.WithCancel(context.Background())
	in := &instance{name: name, l: NewLeader(db, "eu", name, zaptest.NewLogger(t), nil), stop: cancel, done: make(chan struct{})}
	go func() {
		defer close(in.done)
		in.l.Run(ctx, func(lctx context.Context, epoch uint64) {
			in.mu.Lock()
			in.epochs, in.live = append(in.epochs, epoch), epoch
			in.mu.Unlock()
			<-lctx.Done()
			in.mu.Lock()
			in.live = 0
			in.mu.Unlock()
		})
	}()
	t.Cleanup(func() { cancel(); <-in.done })
	return in
}

func (in *instance) leading() uint64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.live
}

// waitLeader waits until one instance leads under an epoch above after,
// and returns it.
func waitLeader(t *testing.T, after uint64, within time.Duration, ins ...*instance) (*instance, uint64) {
	t.Helper()
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		for _, in := range ins {
			if e := in.leading(); e > after {
				return in, e
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("no instance took the replicator over within %s", within)
	return nil, 0
}

// TestLeaderTakeover: of two instances exactly one runs the replicator;
// when its lock session is killed, it stops and one of them (whichever
// competes first) takes over within a few seconds under a higher epoch;
// when that one shuts down, the other takes over. mlr.replicator names the
// holder.
func TestLeaderTakeover(t *testing.T) {
	root, err := server(t).Open("")
	require.NoError(t, err)
	defer root.Close()
	_, err = root.Exec("CREATE DATABASE IF NOT EXISTS mlr")

	require.NoError(t, err)
	_, err = root.Exec(schema.InternalTables["replicator"])
	require.NoError(t, err)

	a, b := startInstance(t, "instance a"), startInstance(t, "instance b")
	first, e1 := waitLeader(t, 0, 5*time.Second, a, b)
	other := map[*instance]*instance{a: b, b: a}[first]
	time.Sleep(2 * LeaderCheck)
	require.Zero(t, other.leading(), "only one instance runs the replicator")
	var holder string
	require.NoError(t, root.QueryRow("SELECT holder FROM mlr.replicator WHERE id = 1").Scan(&holder))
	require.Equal(t, first.name, holder)

	// The holder loses its server session: the lock is released there.
	var id int64
	require.NoError(t, root.QueryRow("SELECT IS_USED_LOCK(?)", LockName("eu")).Scan(&id))
	killed := time.Now()
	_, err = root.Exec(fmt.Sprintf("KILL CONNECTION %d", id))
	require.NoError(t, err)
	second, e2 := waitLeader(t, e1, 5*time.Second, a, b)
	t.Logf("%s took over in %s (epoch %d -> %d)", second.name, time.Since(killed).Round(time.Millisecond), e1, e2)
	// The old holder notices at its next check (until then the epoch
	// fences its commits).
	require.Eventually(t, func() bool { return first.leading() != e1 }, 3*LeaderCheck, 50*time.Millisecond,
		"the term whose lock was lost ends")
	third := other
	if second == other {
		third = first
	}
	time.Sleep(2 * LeaderCheck)
	require.Zero(t, third.leading(), "only one instance runs the replicator")

	// A clean shutdown gives the lock back: the other takes over.
	second.stop()
	<-second.done
	_, e3 := waitLeader(t, e2, 5*time.Second, third)
	require.Greater(t, e3, e2)
	require.NoError(t, root.QueryRow("SELECT holder FROM mlr.replicator WHERE id = 1").Scan(&holder))
	require.Equal(t, third.name, holder)
}
