// Package itest runs mlproxy end to end: real mariadbd servers, real
// `mlproxy run` processes, real clients. It checks what users see: rows
// converged across regions, nothing lost or applied twice, clear errors.
package itest

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"strconv"
	"testing"
	"time"

	_ "github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

func TestMain(m *testing.M) {
	if _, err := cluster.Build(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	cluster.Cleanup()
	os.Exit(code)
}

// soak is how long the randomized write phases run (MLPROXY_SOAK, e.g. 60s).
func soak(def time.Duration) time.Duration {
	if s := os.Getenv("MLPROXY_SOAK"); s != "" {
		if d, err := time.ParseDuration(s); err == nil {
			return d
		}
	}
	return def
}

const appSetup = `
CREATE DATABASE app;
CREATE TABLE app.kv (k INT PRIMARY KEY, v VARCHAR(64) NOT NULL, n INT NOT NULL);
CREATE TABLE app.events (id BIGINT PRIMARY KEY, region VARCHAR(8) NOT NULL, seq INT NOT NULL, body VARCHAR(64));
CREATE TABLE app.counters (id INT PRIMARY KEY, hits BIGINT NOT NULL DEFAULT 0);
CREATE TABLE app.local_only (id INT PRIMARY KEY AUTO_INCREMENT, note VARCHAR(64));
`

const appTables = `  - schema: app
    table: kv
    rule: lww
  - schema: app
    table: events
    rule: lww
  - schema: app
    table: counters
    rule: counter
    columns: [hits]`

// startCluster starts a cluster with the app schema, closed when t ends.
func startCluster(t *testing.T, opts cluster.Options) *cluster.Cluster {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	if opts.Setup == "" {
		opts.Setup = appSetup
	}
	if opts.Tables == "" {
		opts.Tables = appTables
	}
	c, err := cluster.Start(ctx, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, r := range c.Regions {
				t.Logf("region %s mlproxy log tail:\n%s", r.Name, cluster.Tail(r.LogPath, 30))
			}
		}
		c.Close()
	})
	return c
}

func openProxy(t *testing.T, r *cluster.Region, conns int) *sql.DB {
	t.Helper()
	db, err := sql.Open("mysql", r.DSN("app"))
	if err != nil {
		t.Fatal(err)
	}
	db.SetMaxOpenConns(conns)
	t.Cleanup(func() { db.Close() })
	return db
}

func openDirect(t *testing.T, r *cluster.Region) *sql.DB {
	t.Helper()
	db, err := r.Direct("app")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// binlogPos returns the server's current binlog file and position.
func binlogPos(ctx context.Context, db *sql.DB) (string, error) {
	rows, err := db.QueryContext(ctx, "SHOW MASTER STATUS")
	if err != nil {
		return "", err
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	vals := make([]sql.RawBytes, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if !rows.Next() {
		return "", fmt.Errorf("SHOW MASTER STATUS: no row (binlog off?)")
	}
	if err := rows.Scan(ptrs...); err != nil {
		return "", err
	}
	return string(vals[0]) + ":" + string(vals[1]), rows.Err()
}

func itoa(i int) string { return strconv.Itoa(i) }

// waitApplied waits until every region applied everything its peers
// committed (at most 45 s).
func waitApplied(ctx context.Context, t *testing.T, c *cluster.Cluster) {
	t.Helper()
	wctx, cancel := context.WithTimeout(ctx, 45*time.Second)
	defer cancel()
	if err := c.WaitApplied(wctx); err != nil {
		t.Fatal(err)
	}
}

// concurrentEdits makes conflicts: region cut's mlproxy is stopped while
// atFrom runs through from's proxy and atCut directly on cut's server,
// then cut comes back and every region applies everything.
func concurrentEdits(ctx context.Context, t *testing.T, c *cluster.Cluster, from, cut *cluster.Region, atFrom, atCut []string) {
	t.Helper()
	if err := c.StopProxy(cut, false); err != nil {
		t.Fatal(err)
	}
	if err := execAll(ctx, openProxy(t, from, 1), atFrom...); err != nil {
		t.Fatal(err)
	}
	if err := execAll(ctx, openDirect(t, cut), atCut...); err != nil {
		t.Fatal(err)
	}
	if err := c.StartProxy(cut); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitProxy(ctx, cut); err != nil {
		t.Fatal(err)
	}
	waitApplied(ctx, t, c)
}
