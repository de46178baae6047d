package applier

import (
	"context"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/hlc"
	"github.com/mlproxy/mlproxy/schema"
)

func TestGCTombstones(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, "t_gc")
	other := *e
	other.peer = config.Peer{Name: "other", ID: e.peer.ID + 1000}
	peers := []uint16{e.peer.ID, other.peer.ID}
	tables, err := schema.Inspect(ctx, db, []config.TableRule{{Schema: e.db, Table: "*"}})
	require.NoError(t, err)

	// Tombstones at +0s, +1s and +5s, all from the first peer.
	e.runAll(64,
		e.txn(1, e.del(1, 0, 0, stamp(0, 0), peerOrigin)),
		e.txn(2, e.del(2, 0, 0, stamp(1000, 0), peerOrigin)),
		e.txn(3, e.del(3, 0, 0, stamp(5000, 0), peerOrigin)),
	)

	// The other peer was never applied from: its changes may still come.
	h, err := GCHorizon(ctx, db, peers, 0)
	require.NoError(t, err)
	require.Zero(t, h)
	n, err := GCTombstones(ctx, db, tables, h, 10, nil)
	require.NoError(t, err)
	require.Zero(t, n)

	// The other peer committed a (change-less) transaction at +2s: nothing
	// it sends from now on is stamped much below that.
	ping := other.txn(1)
	ping.Timestamp = time.UnixMilli(base + 2000)
	other.runAll(64, ping)

	h, err = GCHorizon(ctx, db, peers, 500*time.Millisecond)
	require.NoError(t, err)
	require.Equal(t, hlc.New(base+1500, 0), h, "min over peers (+5s by stamp, +2s by commit time) minus slack")
	n, err = GCTombstones(ctx, db, tables, h, 1, nil) // batch of 1: loops
	require.NoError(t, err)
	require.Equal(t, int64(2), n)
	_, _, ok := e.tomb(1)
	require.False(t, ok)
	_, _, ok = e.tomb(2)
	require.False(t, ok)
	_, _, ok = e.tomb(3)
	require.True(t, ok, "a tombstone above the horizon stays")

	// Slack larger than what peers have applied: nothing is collected.
	h, err = GCHorizon(ctx, db, peers, time.Duration(base+10_000)*time.Millisecond)
	require.NoError(t, err)
	require.Zero(t, h)
}

func TestRunTombstoneGC(t *testing.T) {
	e := newEnv(t, "t_rungc")
	tables, err := schema.Inspect(context.Background(), db, []config.TableRule{{Schema: e.db, Table: "*"}})
	require.NoError(t, err)
	old := e.txn(1, e.del(1, 0, 0, stamp(0, 0), peerOrigin))
	old.Timestamp = time.UnixMilli(base + 60_000) // the peer has moved a minute on since
	e.runAll(64, old)
	_, _, ok := e.tomb(1)
	require.True(t, ok)

	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- RunTombstoneGC(ctx, db, func(context.Context) ([]*schema.Table, error) { return tables, nil }, func() []uint16 { return []uint16{e.peer.ID} }, time.Second, 10*time.Millisecond, nil)
	}()
	for {
		if _, _, ok := e.tomb(1); !ok {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	require.ErrorIs(t, <-done, context.Canceled)
}
