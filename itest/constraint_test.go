package itest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// TestUniqueKeyAcrossRegions: the same email inserted in two regions
// collides on a secondary unique key, which no conflict rule can place.
// With on_constraint stop (the default) the table stops at that change
// and `mlproxy status` names the row, while the peer's other tables go on;
// the table's later changes wait, also across a restart (nothing is
// lost); `mlproxy link skip` resumes it, the held changes arrive and the
// skipped change is in the conflict log. With on_constraint log,
// replication goes on and the refused change is listed as a conflict.
func TestUniqueKeyAcrossRegions(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startCluster(t, cluster.Options{Names: []string{"eu", "us"},
		Setup: appSetup + "CREATE TABLE app.users (id INT PRIMARY KEY, email VARCHAR(64) NOT NULL UNIQUE);" +
			"CREATE TABLE app.members (id INT PRIMARY KEY, email VARCHAR(64) NOT NULL UNIQUE);",
		Tables: appTables + "\n  - {schema: app, table: users, rule: lww}\n  - {schema: app, table: members, rule: lww, on_constraint: log}",
	})
	eu, us := c.Regions[0], c.Regions[1]
	cli := func(args ...string) (string, error) {
		out, err := c.Command(ctx, args...)
		return string(out), err
	}

	if err := c.StopProxy(us, false); err != nil {
		t.Fatal(err)
	}
	if err := execAll(ctx, openProxy(t, eu, 1),
		"INSERT INTO users VALUES (100, 'same@example.com')",
		"INSERT INTO members VALUES (100, 'member@example.com')"); err != nil {
		t.Fatal(err)
	}
	if err := execAll(ctx, openDirect(t, us),
		"INSERT INTO users VALUES (200, 'same@example.com')",
		"INSERT INTO members VALUES (200, 'member@example.com')"); err != nil {
		t.Fatal(err)
	}
	if err := c.StartProxy(us); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitProxy(ctx, us); err != nil {
		t.Fatal(err)
	}
	// Written at eu after the collision: the users row waits behind it at
	// us, the kv row does not.
	if err := execAll(ctx, openProxy(t, eu, 1),
		"INSERT INTO users VALUES (101, 'later@example.com')",
		"INSERT INTO kv VALUES (1, 'after the collision', 1)"); err != nil {
		t.Fatal(err)
	}

	stoppedAt := func(r *cluster.Region, peer string) string {
		t.Helper()
		var out string
		for deadline := time.Now().Add(30 * time.Second); time.Now().Before(deadline); time.Sleep(300 * time.Millisecond) {
			out, _ = cli("status", "-c", r.ConfigPath)
			for _, l := range strings.Split(out, "\n") {
				if strings.HasPrefix(l, peer+" ") && strings.Contains(l, "tables_stopped") && strings.Contains(l, "app.users stopped at key [") {
					return l
				}
			}
		}
		t.Fatalf("mlproxy status on %s: want the link from %s stopped at app.users, got:\n%s\nlog:\n%s", r.Name, peer, out, cluster.Tail(r.LogPath, 8))
		return ""
	}
	line := stoppedAt(us, "eu")
	t.Log(line)
	if !strings.Contains(line, "app.users stopped at key [100]") || !strings.Contains(line, "1062") {
		t.Errorf("us's status does not name the refused row (app.users key [100], error 1062):\n%s", line)
	}
	if n := metric(t, us, "mlproxy_applier_table_stopped"); n != 1 {
		t.Errorf("mlproxy_applier_table_stopped on us = %v, want 1", n)
	}
	if n := metric(t, us, "mlproxy_applier_link_stopped"); n != 0 {
		t.Errorf("mlproxy_applier_link_stopped on us = %v, want 0: only the table stops", n)
	}
	if err := c.WaitConverged(ctx, map[string]string{"app.kv": "k"}, "k, v, n, _mlr_hlc, _mlr_origin"); err != nil {
		t.Fatalf("the kv row written after the collision did not arrive while app.users is stopped: %v", err)
	}

	// A restart while stopped: still stopped at the same change.
	if err := c.StopProxy(us, false); err != nil {
		t.Fatal(err)
	}
	if err := c.StartProxy(us); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitProxy(ctx, us); err != nil {
		t.Fatal(err)
	}
	stoppedAt(us, "eu")
	var n int
	if err := openDirect(t, us).QueryRowContext(ctx, "SELECT COUNT(*) FROM users WHERE id = 101").Scan(&n); err != nil || n != 0 {
		t.Fatalf("users row 101, written at eu after the collision, at us while the table is stopped: %d (%v); want 0", n, err)
	}

	out, err := cli("link", "skip", "eu", "-c", us.ConfigPath)
	if err != nil {
		t.Fatalf("mlproxy link skip eu on us: %v\n%s", err, out)
	}
	if !strings.Contains(out, "resumed") {
		t.Errorf("link skip did not report the link resumed:\n%s", out)
	}
	if out, err := cli("link", "skip", "us", "-c", eu.ConfigPath); err != nil {
		t.Fatalf("mlproxy link skip us on eu: %v\n%s", err, out)
	}
	for deadline := time.Now().Add(45 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		if err := openDirect(t, us).QueryRowContext(ctx, "SELECT COUNT(*) FROM users WHERE id = 101").Scan(&n); err == nil && n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after the skip, the users row held behind it did not arrive at us")
		}
	}
	for _, r := range c.Regions {
		list, err := cli("conflicts", "list", "-c", r.ConfigPath)
		if err != nil {
			t.Fatal(err)
		}
		var skipped, rejected bool
		for _, l := range strings.Split(list, "\n") {
			skipped = skipped || (strings.Contains(l, "app.users") && strings.Contains(l, "skipped"))
			rejected = rejected || (strings.Contains(l, "app.members") && strings.Contains(l, "rejected"))
		}
		if !skipped || !rejected {
			t.Errorf("region %s: want the skipped app.users change and the rejected app.members change in the conflict log, got:\n%s", r.Name, list)
		}
		if out, _ := cli("status", "-c", r.ConfigPath); strings.Contains(out, "stopped") {
			t.Errorf("region %s still reports a stopped link:\n%s", r.Name, out)
		}
	}

	// The skipped rows wait for an operator (pending) and are resolved in
	// the conflict log: at us, eu's row 100 cannot be kept as it is (its
	// email is taken here by row 200), so it is kept with another email;
	// at eu, us's row 200 can then be kept as it is. Both resolutions
	// replicate, and the regions end identical.
	pendingSkip := func(r *cluster.Region) uint64 {
		t.Helper()
		out, err := cli("conflicts", "list", "-c", r.ConfigPath, "--status", "pending", "--table", "app.users", "-o", "json")
		if err != nil {
			t.Fatalf("conflicts list on %s: %v\n%s", r.Name, err, out)
		}
		var rows []struct {
			ID      uint64 `json:"id"`
			Outcome string `json:"outcome"`
			Status  string `json:"status"`
		}
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			t.Fatalf("conflicts list -o json on %s: %v\n%s", r.Name, err, out)
		}
		for _, c := range rows {
			if c.Outcome == "skipped" && c.Status == "pending" {
				return c.ID
			}
		}
		t.Fatalf("region %s: the skipped app.users change is not pending:\n%s", r.Name, out)
		return 0
	}
	id := fmt.Sprint(pendingSkip(us))
	out, err = cli("conflicts", "resolve", id, "--keep", "remote", "-c", us.ConfigPath)
	if err == nil || !strings.Contains(out, "unique or foreign key") || !strings.Contains(out, "--set") {
		t.Errorf("resolving to a version a unique key refuses: %v; want a clear error naming --set:\n%s", err, out)
	}
	if out, err := cli("conflicts", "resolve", id, "--keep", "remote", "--set", "email=moved@example.com", "-c", us.ConfigPath); err != nil {
		t.Fatalf("conflicts resolve %s --keep remote --set email=... on us: %v\n%s", id, err, out)
	}
	id = fmt.Sprint(pendingSkip(eu))
	if out, err := cli("conflicts", "resolve", id, "--keep", "remote", "-c", eu.ConfigPath); err != nil {
		t.Fatalf("conflicts resolve %s --keep remote on eu: %v\n%s", id, err, out)
	}
	wctx2, wcancel2 := context.WithTimeout(ctx, 45*time.Second)
	defer wcancel2()
	if err := c.WaitConverged(wctx2, map[string]string{"app.users": "id"}, "id, email, _mlr_hlc, _mlr_origin"); err != nil {
		t.Fatalf("after both resolutions the users tables differ: %v", err)
	}
	var email string
	if err := openDirect(t, eu).QueryRowContext(ctx, "SELECT email FROM users WHERE id = 100").Scan(&email); err != nil || email != "moved@example.com" {
		t.Errorf("users row 100 at eu after us's resolution: %q (%v); want moved@example.com", email, err)
	}

	// A reload that changes a table's rule takes effect without a
	// restart: with app.users under on_constraint log at us, the next
	// collision is logged and nothing stops. (The colliding row is
	// written at us by an administrator with sql_log_bin=0, so only eu's
	// insert travels.)
	conf := mustRead(t, us.ConfigPath)
	next := strings.Replace(conf, "{schema: app, table: users, rule: lww}", "{schema: app, table: users, rule: lww, on_constraint: log}", 1)
	if next == conf {
		t.Fatalf("no app.users rule to change in us's config:\n%s", conf)
	}
	mustWrite(t, us.ConfigPath, next)
	if err := c.Signal(us, syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(15 * time.Second); !strings.Contains(mustRead(t, us.LogPath), "config reloaded"); time.Sleep(200 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("us never logged the reload:\n%s", cluster.Tail(us.LogPath, 10))
		}
	}
	admin, err := openDirect(t, us).Conn(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close()
	if err := execAll(ctx, admin, "SET SESSION sql_log_bin = 0", "INSERT INTO users VALUES (300, 'reload@example.com')"); err != nil {
		t.Fatal(err)
	}
	if err := execAll(ctx, openProxy(t, eu, 1), "INSERT INTO users VALUES (301, 'reload@example.com')", "INSERT INTO kv VALUES (2, 'after the reload', 1)"); err != nil {
		t.Fatal(err)
	}
	wctx3, wcancel3 := context.WithTimeout(ctx, 45*time.Second)
	defer wcancel3()
	if err := c.WaitConverged(wctx3, map[string]string{"app.kv": "k"}, "k, v, n, _mlr_hlc, _mlr_origin"); err != nil {
		t.Fatalf("after the reload, eu's kv row did not arrive: %v", err)
	}
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(300 * time.Millisecond) {
		out, err := cli("conflicts", "list", "-c", us.ConfigPath, "--table", "app.users", "--outcome", "rejected", "-o", "json")
		if err == nil && strings.Contains(out, "301") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the collision after the reload is not logged as rejected at us: %v\n%s", err, out)
		}
	}
	if out, _ := cli("status", "-c", us.ConfigPath); strings.Contains(out, "stopped") {
		t.Errorf("us reports a stopped link or table under on_constraint log:\n%s", out)
	}
}
