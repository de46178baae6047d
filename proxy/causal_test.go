package proxy

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/causal"
)

// fakeCausal hands out one token and holds waits until released.
type fakeCausal struct {
	mu      sync.Mutex
	held    bool
	waited  []causal.Token
	current causal.Token
}

func (f *fakeCausal) Token(context.Context) (causal.Token, error) { return f.current, nil }

func (f *fakeCausal) Wait(_ context.Context, t causal.Token) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.waited = append(f.waited, t)
	if f.held {
		return &causal.Behind{Origin: 2, Have: causal.Position{2: 4}, Want: causal.Position{2: 9}, Waited: 5 * time.Second, Err: context.DeadlineExceeded}
	}
	return nil
}

// TestCausalTokens: SELECT mlr_token() is answered by the proxy (text and
// prepared); SET @mlr_after makes the next read wait once, a read that
// waits in vain gets ERR 1969 and does not run, a malformed token is
// refused with the SET.
func TestCausalTokens(t *testing.T) {
	f := &fakeCausal{current: causal.Token{7: {7: 120}, 2: {2: 9}}}
	p := startProxy(t, func(c *Config) { c.Causal = f })
	db := p.open(t, "app")
	conn, err := db.Conn(context.Background())
	require.NoError(t, err)
	defer conn.Close()

	var tok string
	require.NoError(t, conn.QueryRowContext(context.Background(), "select MLR_TOKEN() ;").Scan(&tok))
	assert.Equal(t, "mlr1:2=2-9;7=7-120", tok)
	require.NoError(t, conn.QueryRowContext(context.Background(), "SELECT 1").Scan(new(int)))
	assert.Empty(t, f.waited, "no token presented: reads do not wait")

	_, err = conn.ExecContext(context.Background(), "SET @mlr_after = '"+tok+"'")
	require.NoError(t, err)
	var v string
	require.NoError(t, conn.QueryRowContext(context.Background(), "SELECT @mlr_after").Scan(&v))
	assert.Equal(t, tok, v, "the SET reached the server too")
	require.Len(t, f.waited, 1, "the next read waited for the token")
	assert.Equal(t, f.current, f.waited[0])
	require.NoError(t, conn.QueryRowContext(context.Background(), "SELECT 2").Scan(new(int)))
	assert.Len(t, f.waited, 1, "once")

	f.held = true
	_, err = conn.ExecContext(context.Background(), "SET @mlr_after = '"+tok+"'")
	require.NoError(t, err)
	err = conn.QueryRowContext(context.Background(), "SELECT 3").Scan(new(int))
	var me *mysql.MySQLError
	require.True(t, errors.As(err, &me), "%v", err)
	assert.Equal(t, uint16(erStatementTimeout), me.Number)
	assert.Contains(t, me.Message, "region 2")
	// Prepared reads wait too; after the region caught up the read runs.
	stmt, err := conn.PrepareContext(context.Background(), "SELECT ? + 1")
	require.NoError(t, err)
	err = stmt.QueryRowContext(context.Background(), 1).Scan(new(int))
	require.True(t, errors.As(err, &me), "%v", err)
	f.held = false
	var n int
	require.NoError(t, stmt.QueryRowContext(context.Background(), 1).Scan(&n))
	assert.Equal(t, 2, n)
	stmt.Close()

	for _, bad := range []string{"SET @mlr_after = 'not a token'", "SET @mlr_after = @x", "SET @a = 1, @mlr_after = 'mlr1:1=1-1'"} {
		_, err = conn.ExecContext(context.Background(), bad)
		require.Error(t, err, bad)
		assert.Contains(t, err.Error(), "@mlr_after", bad)
	}
	_, err = conn.ExecContext(context.Background(), "SET @mlr_after = NULL")
	require.NoError(t, err)
}
