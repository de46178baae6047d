package applier

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/binlog"
)

// TestFencedApplierCommitsNothing: an applier whose epoch is no longer
// the region's (another instance took the replicator over) commits
// nothing, its checkpoint included; under the current epoch it applies.
func TestFencedApplierCommitsNothing(t *testing.T) {
	e := newEnv(t, "t_fenced")
	_, err := db.Exec("INSERT INTO mlr.replicator (id, epoch, holder, since) VALUES (1, 7, 'another instance', NOW(6)) " +
		"ON DUPLICATE KEY UPDATE epoch = 7, holder = VALUES(holder)")
	require.NoError(t, err)
	t.Cleanup(func() { _, _ = db.Exec("DELETE FROM mlr.replicator") })

	run := func(epoch uint64) (*Applier, error) {
		in := make(chan *binlog.Txn, 1)
		in <- e.txn(1, e.ins(1, "a", 1, stamp(0, 1), peerOrigin))
		close(in)
		a := New(Config{Self: self, Peer: e.peer, Epoch: epoch}, db, e.tables, e.clock, nil, nil)
		return a, a.Run(context.Background(), in)
	}
	a, err := run(6)
	require.ErrorIs(t, err, ErrFenced)
	require.Zero(t, e.count(), "a fenced applier wrote no row")
	ck, err := a.Checkpoint(context.Background())
	require.NoError(t, err)
	require.False(t, ck.Found, "nor its checkpoint")

	_, err = run(7)
	require.NoError(t, err)
	require.Equal(t, 1, e.count())
}
