package itest

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// TestConflictsCLI: the same row changed concurrently in two regions under
// the manual rule is pending in the log; `mlproxy conflicts list` shows it
// (table and json), `show` prints both versions with the differing column
// marked, `resolve --keep remote` converges every region to that version
// with a stamp newer than both and closes the conflict in every region. A
// conflict under lww is listed with its outcome.
func TestConflictsCLI(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := startCluster(t, cluster.Options{
		Setup: appSetup + "CREATE TABLE app.docs (id INT PRIMARY KEY, body VARCHAR(64) NOT NULL);",
		// kv has a shadow: first-writer-wins on a table that records no
		// births compares the versions' own stamps, the older wins.
		Tables: strings.Replace(appTables, "table: kv\n    rule: lww", "table: kv\n    rule: lww\n    shadow: {rule: first-writer-wins}", 1) +
			"\n  - schema: app\n    table: docs\n    rule: manual",
	})
	eu, us := c.Regions[0], c.Regions[1]
	if err := execAll(ctx, openProxy(t, eu, 1), "INSERT INTO docs VALUES (1, 'first')", "INSERT INTO kv VALUES (1, 'first', 1)"); err != nil {
		t.Fatal(err)
	}
	wait := func() {
		t.Helper()
		wctx, wcancel := context.WithTimeout(ctx, 45*time.Second)
		defer wcancel()
		if err := c.WaitApplied(wctx); err != nil {
			t.Fatal(err)
		}
	}
	wait()

	// Concurrent edits: us is cut off while both regions write.
	concurrentEdits(ctx, t, c, eu, us,
		[]string{"UPDATE docs SET body = 'eu edit' WHERE id = 1", "UPDATE kv SET v = 'eu edit' WHERE k = 1"},
		[]string{"UPDATE docs SET body = 'us edit' WHERE id = 1", "UPDATE kv SET v = 'us edit' WHERE k = 1"})

	cli := func(args ...string) string {
		t.Helper()
		out, err := c.Command(ctx, args...)
		if err != nil {
			t.Fatalf("mlproxy %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	list := cli("conflicts", "list", "-c", eu.ConfigPath, "--table", "app.docs", "--status", "pending")
	lines := strings.Split(strings.TrimSpace(list), "\n")
	if len(lines) != 2 || !strings.Contains(lines[1], "app.docs") || !strings.Contains(lines[1], "manual") || !strings.Contains(lines[1], "pending") {
		t.Fatalf("conflicts list on eu: want one pending manual conflict on app.docs, got:\n%s", list)
	}
	id := strings.Fields(lines[1])[0]

	var rows []map[string]any
	if err := json.Unmarshal([]byte(cli("conflicts", "list", "-c", eu.ConfigPath, "-o", "json")), &rows); err != nil {
		t.Fatal(err)
	}
	outcomes := map[string]string{}
	for _, r := range rows {
		outcomes[r["table"].(string)] = r["outcome"].(string)
	}
	if outcomes["docs"] != "pending" || (outcomes["kv"] != "local_won" && outcomes["kv"] != "remote_won") {
		t.Errorf("conflicts list -o json on eu: outcomes %v; want docs pending and kv decided by lww", outcomes)
	}

	// Each filter keeps exactly what it names (eu's log holds the docs
	// conflict and the kv one, both met on the link from us).
	for _, f := range []struct {
		args       []string
		docs, kv   bool
		whatItKeep string
	}{
		{[]string{"--rule", "lww"}, false, true, "the lww conflict"},
		{[]string{"--rule", "manual"}, true, false, "the manual conflict"},
		{[]string{"--outcome", "pending"}, true, false, "the pending outcome"},
		{[]string{"--status", "decided"}, false, true, "what the rule decided"},
		{[]string{"--peer", "us"}, true, true, "both (met on the link from us)"},
		{[]string{"--peer", "ap"}, false, false, "nothing (no conflict came from ap)"},
		{[]string{"--since", "1h"}, true, true, "both (detected within the hour)"},
		{[]string{"--until", "1h"}, false, false, "nothing (none older than an hour)"},
		{[]string{"--since", time.Now().Add(time.Hour).UTC().Format(time.RFC3339)}, false, false, "nothing (none in the future)"},
	} {
		out := cli(append([]string{"conflicts", "list", "-c", eu.ConfigPath}, f.args...)...)
		if strings.Contains(out, "app.docs") != f.docs || strings.Contains(out, "app.kv") != f.kv {
			t.Errorf("conflicts list %s: want %s, got:\n%s", strings.Join(f.args, " "), f.whatItKeep, out)
		}
	}
	// The shadow: lww kept us's later edit, first-writer-wins would have
	// kept eu's earlier one.
	if out := cli("conflicts", "list", "-c", eu.ConfigPath, "--shadow"); strings.Contains(out, "app.docs") ||
		!strings.Contains(out, "remote_won") || !strings.Contains(out, "first-writer-wins  local_won") ||
		!strings.Contains(out, "app.kv: lww -> first-writer-wins: 1 of 1 conflicts listed would have left another row") {
		t.Errorf("conflicts list --shadow on eu: want the kv conflict, decided remote_won by lww and local_won by its shadow, counted as differing; got:\n%s", out)
	}
	if out, err := c.Command(ctx, "conflicts", "list", "-c", eu.ConfigPath, "--since", "yesterday"); err == nil || !strings.Contains(string(out), "RFC 3339") {
		t.Errorf("conflicts list --since yesterday: %v; want an error saying what it takes:\n%s", err, out)
	}
	// Newest first.
	var ids []float64
	for _, r := range rows {
		ids = append(ids, r["id"].(float64))
	}
	for i := 1; i < len(ids); i++ {
		if ids[i] > ids[i-1] {
			t.Errorf("conflicts list -o json: ids %v, want newest first", ids)
			break
		}
	}

	show := cli("conflicts", "show", "-c", eu.ConfigPath, id)
	t.Log(list, show)
	var bodyLine string
	for _, l := range strings.Split(show, "\n") {
		if strings.HasPrefix(l, "body") {
			bodyLine = l
		}
	}
	if !strings.Contains(bodyLine, "eu edit") || !strings.Contains(bodyLine, "us edit") || !strings.HasSuffix(strings.TrimSpace(bodyLine), "*") {
		t.Errorf("conflicts show %s: want the body column with both versions, marked as differing; got:\n%s", id, show)
	}
	if !strings.Contains(show, "vector") {
		t.Errorf("conflicts show %s prints no vectors:\n%s", id, show)
	}

	var before uint64
	if err := openDirect(t, eu).QueryRowContext(ctx, "SELECT GREATEST(MAX(local_hlc), MAX(remote_hlc)) FROM mlr.conflicts WHERE tbl = 'docs'").Scan(&before); err != nil {
		t.Fatal(err)
	}
	out := cli("conflicts", "resolve", "-c", eu.ConfigPath, id, "--keep", "remote")
	t.Log(out)
	wait()
	wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
	defer wcancel()
	if err := c.WaitConverged(wctx, map[string]string{"app.docs": "id"}, "id, body, _mlr_hlc, _mlr_origin, _mlr_vv"); err != nil {
		t.Fatal(err)
	}
	for _, r := range c.Regions {
		var body string
		var stamp uint64
		if err := openDirect(t, r).QueryRowContext(ctx, "SELECT body, _mlr_hlc FROM docs WHERE id = 1").Scan(&body, &stamp); err != nil {
			t.Fatal(err)
		}
		if body != "us edit" || stamp <= before {
			t.Errorf("region %s after resolve --keep remote: body %q stamp %d; want \"us edit\" stamped after %d", r.Name, body, stamp, before)
		}
		pending := cli("conflicts", "list", "-c", r.ConfigPath, "--status", "pending", "--table", "app.docs")
		if n := len(strings.Split(strings.TrimSpace(pending), "\n")); n != 1 {
			t.Errorf("region %s still has pending conflicts on app.docs after the resolution:\n%s", r.Name, pending)
		}
	}
	if after := cli("conflicts", "show", "-c", eu.ConfigPath, id); !strings.Contains(after, "resolved") {
		t.Errorf("conflict %s not marked resolved:\n%s", id, after)
	}
	if _, err := c.Command(ctx, "conflicts", "resolve", "-c", eu.ConfigPath, id, "--keep", "local"); err == nil {
		t.Errorf("resolving conflict %s twice succeeded", id)
	}
}

// execer is a *sql.DB or a *sql.Conn.
type execer interface {
	ExecContext(ctx context.Context, query string, args ...any) (sql.Result, error)
}

// execAll runs each statement in turn, stopping at the first error.
func execAll(ctx context.Context, db execer, stmts ...string) error {
	for _, q := range stmts {
		if _, err := db.ExecContext(ctx, q); err != nil {
			return fmt.Errorf("%s: %w", q, err)
		}
	}
	return nil
}
