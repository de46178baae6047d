package itest

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// TestReloadOnSIGHUP: `mlproxy run` reloads its file on SIGHUP without
// dropping client connections: a peer removed from the file stops being
// pulled from, put back it catches up from its checkpoint, and a file
// with errors is refused with its file:line errors while the running
// configuration goes on.
func TestReloadOnSIGHUP(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startCluster(t, cluster.Options{})
	eu, ap := c.Regions[0], c.Regions[2]
	orig := mustRead(t, eu.ConfigPath)
	defer mustWrite(t, eu.ConfigPath, orig)

	// A client connection held open across every reload.
	held, err := openProxy(t, eu, 1).Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	useHeld := func(when string) {
		t.Helper()
		var one int
		if err := held.QueryRowContext(ctx, "SELECT 1").Scan(&one); err != nil {
			t.Fatalf("the client connection opened before the reload failed %s: %v", when, err)
		}
	}
	hup := func() {
		t.Helper()
		if err := c.Signal(eu, syscall.SIGHUP); err != nil {
			t.Fatal(err)
		}
	}
	waitLog := func(want string) {
		t.Helper()
		for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(200 * time.Millisecond) {
			if strings.Contains(mustRead(t, eu.LogPath), want) {
				return
			}
		}
		t.Fatalf("eu's log never said %q:\n%s", want, cluster.Tail(eu.LogPath, 10))
	}

	// Drop ap from eu's peers.
	i := strings.Index(orig, "  - name: ap\n")
	if i < 0 {
		t.Fatalf("no peer ap in eu's config:\n%s", orig)
	}
	j := strings.Index(orig[i+1:], "  - name: ")
	rest := ""
	if j >= 0 {
		rest = orig[i+1+j:]
	} else if k := strings.Index(orig[i:], "\n\n"); k >= 0 {
		rest = orig[i+k:]
	}
	mustWrite(t, eu.ConfigPath, orig[:i]+rest)
	hup()
	waitLog("stopped the link from ap")
	useHeld("after the reload that dropped a peer")
	if _, err := openProxy(t, ap, 1).ExecContext(ctx, "INSERT INTO kv VALUES (1, 'from ap', 1)"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	var n int
	if err := openDirect(t, eu).QueryRowContext(ctx, "SELECT COUNT(*) FROM kv WHERE k = 1").Scan(&n); err != nil || n != 0 {
		t.Fatalf("ap's row reached eu after ap was dropped from its peers: %d, %v", n, err)
	}

	// A broken file: refused, the running configuration kept.
	mustWrite(t, eu.ConfigPath, strings.Replace(orig, "region:\n", "region:\n  colour: red\n", 1))
	hup()
	waitLog("config reload refused")
	if log := mustRead(t, eu.LogPath); !strings.Contains(log, "eu.yaml:3: region.colour: unknown key") {
		t.Errorf("the refused reload does not name the file, line and key:\n%s", cluster.Tail(eu.LogPath, 5))
	}
	useHeld("after a refused reload")

	// ap back: its link resumes from the checkpoint and catches up.
	mustWrite(t, eu.ConfigPath, orig)
	hup()
	waitLog("started the link from ap")
	wctx, wcancel := context.WithTimeout(ctx, 45*time.Second)
	defer wcancel()
	if err := c.WaitConverged(wctx, map[string]string{"app.kv": "k"}, "k, v, n, _mlr_hlc, _mlr_origin"); err != nil {
		t.Fatal(err)
	}
	useHeld("after the last reload")
}

// TestDriftAndStuckLink: a peer sends rows for a table this region does
// not have (created in the peer's region only): that table waits for the
// DDL (status waiting_for_ddl, naming it) while the peer's other tables go
// on, and catches up once the table exists here. A link that cannot make
// progress at all (a local client holds the row the next change needs)
// reports itself stuck after apply.stuck_after (status, metric, log), and
// goes on once the lock is released.
func TestDriftAndStuckLink(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c := startCluster(t, cluster.Options{Names: []string{"eu", "us"},
		Tables: appTables + "\n  - {schema: app, table: \"*\", rule: lww}",
		Extra:  "apply:\n  stuck_after: 2s\n"})
	eu, us := c.Regions[0], c.Regions[1]
	// A table created in eu only, prepared there, written through eu.
	if err := execAll(ctx, openDirect(t, eu), "CREATE TABLE app.only_eu (id INT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Command(ctx, "schema", "apply", "-c", eu.ConfigPath); err != nil {
		t.Fatalf("schema apply on eu: %v\n%s", err, out)
	}
	var err error
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		if _, err = openProxy(t, eu, 1).ExecContext(ctx, "INSERT INTO only_eu VALUES (1)"); err == nil {
			break
		}
	}
	if err != nil {
		t.Fatal(err)
	}
	if err := execAll(ctx, openProxy(t, eu, 1), "INSERT INTO only_eu VALUES (2)", "INSERT INTO kv VALUES (1, 'beside the drift', 1)"); err != nil {
		t.Fatal(err)
	}
	var out []byte
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		out, _ = c.Command(ctx, "status", "-c", us.ConfigPath)
		if strings.Contains(string(out), "waiting_for_ddl") {
			break
		}
	}
	if !strings.Contains(string(out), "waiting_for_ddl") || !strings.Contains(string(out), "app.only_eu waits for DDL") {
		t.Fatalf("us's status: want app.only_eu waiting for DDL, got:\n%s\nlog:\n%s", out, cluster.Tail(us.LogPath, 8))
	}
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := c.WaitConverged(wctx, map[string]string{"app.kv": "k"}, "k, v, n, _mlr_hlc, _mlr_origin"); err != nil {
		t.Fatalf("the peer's other tables stopped while one waits for DDL: %v", err)
	}
	if n := metric(t, us, "mlproxy_link_stuck"); n != 0 {
		t.Errorf("mlproxy_link_stuck on us = %v while only a table waits, want 0", n)
	}
	// The table arrives: it catches up.
	if err := execAll(ctx, openDirect(t, us), "CREATE TABLE app.only_eu (id INT PRIMARY KEY)"); err != nil {
		t.Fatal(err)
	}
	if out, err := c.Command(ctx, "schema", "apply", "-c", us.ConfigPath); err != nil {
		t.Fatalf("schema apply on us: %v\n%s", err, out)
	}
	wctx2, wcancel2 := context.WithTimeout(ctx, 60*time.Second)
	defer wcancel2()
	if err := c.WaitConverged(wctx2, map[string]string{"app.only_eu": "id"}, "id, _mlr_hlc, _mlr_origin"); err != nil {
		t.Fatal(err)
	}

	// A local client holds the row eu's next change needs.
	lock, err := openDirect(t, us).Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close()
	if err := execAll(ctx, lock, "BEGIN", "SELECT * FROM kv WHERE k = 1 FOR UPDATE"); err != nil {
		t.Fatal(err)
	}
	if _, err := openProxy(t, eu, 1).ExecContext(ctx, "UPDATE kv SET n = n + 1 WHERE k = 1"); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
		out, _ = c.Command(ctx, "status", "-c", us.ConfigPath)
		if strings.Contains(string(out), "stuck") {
			break
		}
	}
	if !strings.Contains(string(out), "stuck") || !strings.Contains(string(out), "no progress at") {
		t.Fatalf("us's status: want the link from eu stuck, got:\n%s\nlog:\n%s", out, cluster.Tail(us.LogPath, 8))
	}
	if n := metric(t, us, "mlproxy_link_stuck"); n != 1 {
		t.Errorf("mlproxy_link_stuck on us = %v, want 1", n)
	}
	if !strings.Contains(mustRead(t, us.LogPath), "link stuck") {
		t.Errorf("us did not log the stuck link:\n%s", cluster.Tail(us.LogPath, 8))
	}
	if _, err := lock.ExecContext(ctx, "ROLLBACK"); err != nil {
		t.Fatal(err)
	}
	wctx3, wcancel3 := context.WithTimeout(ctx, 60*time.Second)
	defer wcancel3()
	if err := c.WaitConverged(wctx3, map[string]string{"app.kv": "k"}, "k, v, n, _mlr_hlc, _mlr_origin"); err != nil {
		t.Fatal(err)
	}
}
