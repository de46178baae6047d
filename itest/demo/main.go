// Command demo starts three local regions (three mariadbd servers and three
// `mlproxy run` processes), writes to all of them at once, including
// conflicting updates and deletes of the same rows, and shows that every
// region ends with identical data and how each conflict was resolved.
// It exits 0 only if the regions converged, and cleans up after itself,
// on Ctrl-C too. Run it with `make demo`.
package main

import (
	"context"
	"database/sql"
	"flag"
	"fmt"
	"math/rand"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"text/tabwriter"
	"time"

	_ "github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/hlc"
	"github.com/mlproxy/mlproxy/itest/cluster"
)

const setup = `
CREATE DATABASE shop;
CREATE TABLE shop.products (id INT PRIMARY KEY, name VARCHAR(64) NOT NULL, price DECIMAL(10,2) NOT NULL);
CREATE TABLE shop.stock (id INT PRIMARY KEY, quantity INT NOT NULL);
`

const tables = `  - schema: shop
    table: products
    rule: lww
  - schema: shop
    table: stock
    rule: counter
    columns: [quantity]`

func main() {
	bin := flag.String("bin", "", "mlproxy binary (default: build it)")
	dur := flag.Duration("duration", 10*time.Second, "how long to write")
	keep := flag.Bool("keep", false, "keep the regions running after the demo, until Ctrl-C (to look at their status pages)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	// Everything the demo creates (the servers' data, the template data
	// directory dbtest installs once, configs and logs) goes under one
	// private temporary directory, removed at the end.
	tmp, err := os.MkdirTemp("", "mlproxy-demo-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
	os.Setenv("TMPDIR", tmp)
	err = run(ctx, *bin, *dur, *keep)
	if os.Getenv("DBTEST_KEEP") == "" {
		os.RemoveAll(tmp)
	} else {
		fmt.Println("  kept", tmp, "(DBTEST_KEEP is set)")
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "demo:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, bin string, dur time.Duration, keep bool) error {
	say("starting three regions (eu, us, ap): a mariadbd and an mlproxy each ...")
	c, err := cluster.Start(ctx, cluster.Options{Bin: bin, Setup: setup, Tables: tables})
	if err != nil {
		return err
	}
	defer func() {
		say("stopping regions and removing their data ...")
		c.Close()
	}()
	for _, r := range c.Regions {
		fmt.Printf("  region %-3s id %d  proxy %s  server %s  metrics http://%s/metrics  status page http://%[5]s/\n", r.Name, r.ID, r.ProxyAddr, r.Server.Addr(), r.Metrics)
	}

	dbs := map[string]*sql.DB{}
	for _, r := range c.Regions {
		db, err := sql.Open("mysql", r.DSN("shop"))
		if err != nil {
			return err
		}
		defer db.Close()
		dbs[r.Name] = db
	}
	eu := dbs["eu"]
	say("seeding 10 products and their stock through the eu proxy ...")
	for i := 1; i <= 10; i++ {
		if _, err := eu.ExecContext(ctx, "INSERT INTO products VALUES (?, ?, ?)", i, fmt.Sprintf("product-%d", i), 10+i); err != nil {
			return err
		}
		if _, err := eu.ExecContext(ctx, "INSERT INTO stock VALUES (?, 1000)", i); err != nil {
			return err
		}
	}
	if err := waitConverged(ctx, c, 30*time.Second); err != nil {
		return err
	}

	say(fmt.Sprintf("writing at all three proxies for %v: renames, price changes, deletes and re-inserts of the same rows (lww), stock decrements (counter) ...", dur))
	// The writers stop starting statements at the deadline but let the one
	// under way finish: a statement cancelled mid-flight may still commit
	// without being counted, and the stock check below would fail.
	until := time.Now().Add(dur)
	var wg sync.WaitGroup
	var mu sync.Mutex
	counts := map[string]int{}
	decrements := 0
	for _, r := range c.Regions {
		wg.Add(1)
		go func(name string, db *sql.DB, seed int64) {
			defer wg.Done()
			rng := rand.New(rand.NewSource(seed))
			for i := 0; ctx.Err() == nil && time.Now().Before(until); i++ {
				id := 1 + rng.Intn(10)
				var err error
				kind := ""
				switch op := rng.Intn(10); {
				case op < 4:
					kind = "update"
					_, err = db.ExecContext(ctx, "UPDATE products SET name = ?, price = ? WHERE id = ?", fmt.Sprintf("%s-edit-%d", name, i), 5+rng.Intn(50), id)
				case op < 5:
					kind = "delete"
					_, err = db.ExecContext(ctx, "DELETE FROM products WHERE id = ?", id)
				case op < 6:
					kind = "insert"
					_, err = db.ExecContext(ctx, "INSERT INTO products VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE name = VALUES(name)", id, fmt.Sprintf("%s-new-%d", name, i), 9.99)
				default:
					kind = "stock-1"
					_, err = db.ExecContext(ctx, "UPDATE stock SET quantity = quantity - 1 WHERE id = ?", id)
				}
				if err == nil {
					mu.Lock()
					counts[name+" "+kind]++
					if kind == "stock-1" {
						decrements++
					}
					mu.Unlock()
				}
			}
		}(r.Name, dbs[r.Name], int64(r.ID))
	}
	wg.Wait()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	for _, r := range c.Regions {
		fmt.Printf("  %s: %d updates, %d deletes, %d inserts, %d stock decrements\n", r.Name,
			counts[r.Name+" update"], counts[r.Name+" delete"], counts[r.Name+" insert"], counts[r.Name+" stock-1"])
	}

	say("waiting for the regions to apply everything and converge ...")
	// First every region's checkpoints reach its peers' binlog ends (all
	// applied), then the rows are compared (polling a little longer, in
	// case a checkpoint lags what was applied).
	actx, acancel := context.WithTimeout(ctx, 90*time.Second)
	err = c.WaitApplied(actx)
	acancel()
	if err != nil && ctx.Err() == nil {
		fmt.Println("  note:", err)
	}
	if err := waitConverged(ctx, c, 30*time.Second); err != nil {
		return err
	}
	say("every region holds identical rows (compared row by row, stamps included):")
	if err := showProducts(ctx, c); err != nil {
		return err
	}
	var total int
	if err := dbs["us"].QueryRowContext(ctx, "SELECT SUM(quantity) FROM stock").Scan(&total); err != nil {
		return err
	}
	fmt.Printf("\n  stock: %d units left = 10000 - %d decrements made across all regions (counter rule: concurrent decrements all count)\n", total, decrements)
	if total != 10000-decrements {
		return fmt.Errorf("stock total %d, want %d: counter merge lost or doubled decrements", total, 10000-decrements)
	}
	say("conflicts each region detected and how its rule resolved them (mlr.conflicts):")
	if err := showConflicts(ctx, c); err != nil {
		return err
	}
	first := c.Regions[0]
	say("the operator's view: `mlproxy conflicts list -c eu.yaml --limit 3` and `mlproxy checksum -c eu.yaml`:")
	for _, args := range [][]string{{"conflicts", "list", "-c", first.ConfigPath, "--limit", "3"}, {"checksum", "-c", first.ConfigPath}} {
		out, err := c.Command(ctx, args...)
		fmt.Print(indent(string(out)))
		if err != nil {
			return fmt.Errorf("mlproxy %s: %w", strings.Join(args[:2], " "), err)
		}
	}
	say("converged. demo OK")
	if !keep {
		say("status pages (the regions stop now; `go run ./itest/demo -keep` keeps them running until Ctrl-C):")
	} else {
		say("status pages (the regions keep running until Ctrl-C):")
	}
	for _, r := range c.Regions {
		fmt.Printf("  status page: http://%s/  (region %s)\n", r.Metrics, r.Name)
	}
	if keep {
		<-ctx.Done()
	}
	return nil
}

func say(s string) { fmt.Printf("\n== %s\n", s) }

func indent(s string) string {
	var b strings.Builder
	for _, l := range strings.Split(strings.TrimRight(s, "\n"), "\n") {
		b.WriteString("  " + l + "\n")
	}
	return b.String()
}

func waitConverged(ctx context.Context, c *cluster.Cluster, d time.Duration) error {
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	return c.WaitConverged(wctx, map[string]string{
		"shop.products": "id",
		"shop.stock":    "id",
	}, "*, _mlr_hlc, _mlr_origin")
}

func showProducts(ctx context.Context, c *cluster.Cluster) error {
	rows, err := c.Regions[0].Dump(ctx, "shop.products", "id, name, price, _mlr_origin, _mlr_hlc", "id")
	if err != nil {
		return err
	}
	names := map[string]string{}
	for _, r := range c.Regions {
		names[fmt.Sprint(r.ID)] = r.Name
	}
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "  id\tname\tprice\twritten in\tstamp (wall time + logical)")
	for _, row := range rows {
		f := strings.Split(row, "|")
		fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%s\n", f[0], f[1], f[2], names[f[3]], readable(f[4]))
	}
	return w.Flush()
}

func showConflicts(ctx context.Context, c *cluster.Cluster) error {
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', 0)
	fmt.Fprintln(w, "  region\ttable\trule\toutcome\tcount")
	for _, r := range c.Regions {
		db, err := r.Direct("")
		if err != nil {
			return err
		}
		rows, err := db.QueryContext(ctx, "SELECT tbl, rule, outcome, COUNT(*) FROM mlr.conflicts GROUP BY tbl, rule, outcome ORDER BY tbl, outcome")
		if err != nil {
			db.Close()
			return err
		}
		for rows.Next() {
			var tbl, rule, outcome string
			var n int
			if err := rows.Scan(&tbl, &rule, &outcome, &n); err != nil {
				rows.Close()
				db.Close()
				return err
			}
			fmt.Fprintf(w, "  %s\t%s\t%s\t%s\t%d\n", r.Name, tbl, rule, outcome, n)
		}
		rows.Close()
		db.Close()
	}
	return w.Flush()
}

// readable shows a stamp as its wall-clock time and logical counter.
func readable(stamp string) string {
	n, err := strconv.ParseUint(stamp, 10, 64)
	if err != nil {
		return stamp
	}
	ts := hlc.Timestamp(n)
	return fmt.Sprintf("%s +%d", ts.Time().UTC().Format("15:04:05.000"), ts.Logical())
}
