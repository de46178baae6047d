package itest

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// TestReadYourWritesAcrossRegions: a write in eu, its token presented in
// us: the next read there sees the write (waiting for it if need be).
// With us's apply of eu's changes held back (a table lock where they
// land), a read under a newer token times out with ERR 1969 naming eu and
// does not run; once released, the same read sees the write.
func TestReadYourWritesAcrossRegions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startCluster(t, cluster.Options{})
	eu, us := c.Regions[0], c.Regions[1]
	euConn, err := openProxy(t, eu, 1).Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer euConn.Close()
	usConn, err := openProxy(t, us, 1).Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer usConn.Close()

	writeAndToken := func(id int, body string) string {
		t.Helper()
		if _, err := euConn.ExecContext(ctx, "INSERT INTO events (id, region, seq, body) VALUES (?, 'eu', ?, ?)", id, id, body); err != nil {
			t.Fatal(err)
		}
		var tok string
		if err := euConn.QueryRowContext(ctx, "SELECT mlr_token()").Scan(&tok); err != nil {
			t.Fatal(err)
		}
		return tok
	}
	readAfter := func(tok string, id int) (string, error) {
		t.Helper()
		if _, err := usConn.ExecContext(ctx, "SET @mlr_after = '"+tok+"'"); err != nil {
			t.Fatal(err)
		}
		var body string
		err := usConn.QueryRowContext(ctx, "SELECT body FROM events WHERE id = ?", id).Scan(&body)
		return body, err
	}

	for i := 1; i <= 20; i++ {
		tok := writeAndToken(i, "written in eu")
		if !strings.HasPrefix(tok, "mlr1:") {
			t.Fatalf("token %q", tok)
		}
		body, err := readAfter(tok, i)
		if err != nil || body != "written in eu" {
			t.Fatalf("read %d in us under eu's token %s: %q, %v; want the write", i, tok, body, err)
		}
	}

	// The server's own last GTID (what it puts in the OK packet for a
	// session tracking last_gtid) is a token too.
	for i := 21; i <= 30; i++ {
		if _, err := euConn.ExecContext(ctx, "INSERT INTO events (id, region, seq, body) VALUES (?, 'eu', ?, 'by gtid')", i, i); err != nil {
			t.Fatal(err)
		}
		var gtid string
		if err := euConn.QueryRowContext(ctx, "SELECT @@last_gtid").Scan(&gtid); err != nil {
			t.Fatal(err)
		}
		if body, err := readAfter(gtid, i); err != nil || body != "by gtid" {
			t.Fatalf("read %d in us after eu's last GTID %s: %q, %v; want the write", i, gtid, body, err)
		}
	}

	// Hold us's apply of eu's changes: they wait on a table lock.
	lock, err := openDirect(t, us).Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if _, err := lock.ExecContext(ctx, "LOCK TABLES app.events WRITE"); err != nil {
		t.Fatal(err)
	}
	tok := writeAndToken(100, "held back")
	start := time.Now()
	_, err = readAfter(tok, 100)
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1969 || !strings.Contains(me.Message, "region eu (id 1)") {
		t.Fatalf("read in us while eu's changes are held back: %v; want ERR 1969 naming region eu", err)
	}
	t.Logf("timed out after %s: %s", time.Since(start).Round(time.Millisecond), me.Message)
	if _, err := lock.ExecContext(ctx, "UNLOCK TABLES"); err != nil {
		t.Fatal(err)
	}
	var body string
	if err := usConn.QueryRowContext(ctx, "SELECT body FROM events WHERE id = 100").Scan(&body); err != nil || body != "held back" {
		t.Fatalf("the same read once us caught up: %q, %v", body, err)
	}
}
