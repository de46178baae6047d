package proxy

import (
	"context"
	"regexp"
	"strings"

	"github.com/go-mysql-org/go-mysql/mysql"
	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/causal"
)

// Causal, when set in Config, gives sessions read-your-writes across
// regions (package causal):
//
//	SELECT mlr_token()          -- answered by the proxy: a token covering
//	                            -- everything this region holds now
//	SET @mlr_after = 'mlr1:...' -- in another region: the next read waits
//	                            -- until that region holds it too
type Causal interface {
	// Token is the region's token now.
	Token(ctx context.Context) (causal.Token, error)
	// Wait returns once the region has applied everything t covers; it
	// gives up (a *causal.Behind) after the configured wait.
	Wait(ctx context.Context, t causal.Token) error
}

var (
	reTokenQuery = regexp.MustCompile(`(?i)^\s*select\s+mlr_token\s*\(\s*\)\s*;?\s*$`)
	reSetAfter   = regexp.MustCompile(`(?i)^\s*set\s+@mlr_after\s*:?=\s*(?:'([^'\\]*)'|(null))\s*;?\s*$`)
)

// erStatementTimeout is MariaDB's ER_STATEMENT_TIMEOUT: a read whose
// causal wait ran out gets it (SQLSTATE 70100), with what was missing.
const erStatementTimeout = 1969

// isTokenQuery reports whether sql is SELECT mlr_token(), cheaply for the
// statements that are not.
func isTokenQuery(sql string) bool {
	return len(sql) >= 17 && len(sql) <= 64 && sql[0]|0x20 == 's' && reTokenQuery.MatchString(sql)
}

// afterRefusal reads SET @mlr_after: the token it sets (nil: cleared), or
// the refusal of a statement that names @mlr_after otherwise; hit is false
// for statements that do not name it.
func afterRefusal(sql string) (t causal.Token, hit bool, refusal *class) {
	// Every BEGIN and COMMIT comes here: no copy unless it names a variable.
	if strings.IndexByte(sql, '@') < 0 || !strings.Contains(strings.ToLower(sql), "@mlr_after") {
		return nil, false, nil
	}
	m := reSetAfter.FindStringSubmatch(sql)
	if m == nil {
		return nil, true, refused("causal", "@mlr_after takes one token literal, alone in its statement: SET @mlr_after = 'mlr1:...' (or NULL)")
	}
	if m[2] != "" || m[1] == "" {
		return nil, true, nil
	}
	t, err := causal.Parse(m[1])
	if err != nil {
		return nil, true, refused("causal", "SET @mlr_after: "+err.Error())
	}
	return t, true, nil
}

// answerToken answers SELECT mlr_token() with a one-row result set.
func (c *conn) answerToken(next byte) error {
	t, err := c.s.cfg.Causal.Token(c.ctx)
	if err != nil {
		c.log.Warn("causal token not read", zap.Error(err))
		return c.sendRaw(errPacket(erUnknown, "HY000", "mlproxy: cannot read this region's causal token: "+err.Error()), next)
	}
	c.mu.Lock()
	st := c.status
	c.mu.Unlock()
	eof := []byte{mysql.EOF_HEADER, 0, 0, byte(st), byte(st >> 8)}
	seq := next
	for _, p := range [][]byte{
		{1},
		columnDef("mlr_token"),
		eof,
		appendLenenc(nil, t.String()),
		eof,
	} {
		if _, err := c.client.writePacket(p, seq); err != nil {
			return err
		}
		seq++
	}
	return c.flush()
}

// columnDef is a text column definition (Protocol::ColumnDefinition41).
func columnDef(name string) []byte {
	b := appendLenenc(nil, "def")
	for range 3 { // schema, table, org_table
		b = appendLenenc(b, "")
	}
	b = appendLenenc(b, name)
	b = appendLenenc(b, "")
	b = append(b, 0x0c, 33, 0) // fixed fields follow; utf8_general_ci
	b = append(b, 0, 4, 0, 0)  // column length
	b = append(b, mysql.MYSQL_TYPE_VAR_STRING, 0, 0, 0, 0, 0)
	return b
}

func appendLenenc(b []byte, s string) []byte {
	return append(mysql.AppendLengthEncodedInteger(b, uint64(len(s))), s...)
}

// waitAfter makes a read wait for the token a SET @mlr_after gave (then
// forgets it), or answers the read with the wait's error.
func (c *conn) waitAfter(next byte) (answered bool, err error) {
	if c.after == nil || c.s.cfg.Causal == nil {
		return false, nil
	}
	if werr := c.s.cfg.Causal.Wait(c.ctx, c.after); werr != nil {
		c.s.m.refused.WithLabelValues("causal_wait").Inc()
		return true, c.sendRaw(errPacket(erStatementTimeout, "70100",
			"mlproxy: this read waits for what @mlr_after's token covers, and this region does not hold it yet: "+werr.Error()+
				" (the read did not run; retry it, or SET @mlr_after = NULL to read what is here)"), next)
	}
	c.after = nil
	return false, nil
}
