package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// benchSeed measures how fast `mlproxy region add` (as `region reseed`,
// so it can run again) copies a region, against the floor a DBA would use:
// `mariadb-dump --single-transaction | mariadb` of the same tables between
// the same two servers. sysbench's 4 tables, interleaved runs, medians.
func benchSeed(ctx context.Context, bin string, runs int) error {
	fmt.Println("\n== seeding a region: mlproxy region reseed (one consistent snapshot, 2 writers) against mariadb-dump --single-transaction | mariadb, eu's sbtest into ap")
	prepare := func(ctx context.Context, c *cluster.Cluster) error {
		for _, r := range c.Regions {
			if _, err := sysbench(ctx, r.Server.Addr(), "oltp_write_only", "prepare"); err != nil {
				return err
			}
		}
		// ap starts with the tables, empty.
		db, err := c.Regions[1].Direct("sbtest")
		if err != nil {
			return err
		}
		defer db.Close()
		for i := 1; i <= 4; i++ {
			if _, err := db.ExecContext(ctx, fmt.Sprintf("DELETE FROM sbtest%d", i)); err != nil {
				return err
			}
		}
		return nil
	}
	c, err := cluster.Start(ctx, cluster.Options{Bin: bin, Names: []string{"eu", "ap"}, Later: []string{"ap"},
		Setup: "CREATE DATABASE sbtest;", Tables: sbTables, Prepare: prepare})
	if err != nil {
		return err
	}
	defer c.Close()
	eu, ap := c.Regions[0], c.Regions[1]
	if err := c.Join(ctx, ap); err != nil {
		return err
	}
	var rows int64
	reRows := regexp.MustCompile(`: (\d+) rows`)
	var seedRate, dumpRate []float64
	for i := range runs {
		start := time.Now()
		out, err := c.Command(ctx, "region", "reseed", "-c", ap.ConfigPath, "--from", eu.Name, "--force")
		took := time.Since(start)
		if err != nil {
			return fmt.Errorf("region reseed: %v\n%s", err, out)
		}
		m := reRows.FindStringSubmatch(string(out))
		if m == nil {
			return fmt.Errorf("region reseed printed no row count:\n%s", out)
		}
		rows, _ = strconv.ParseInt(m[1], 10, 64)
		seedRate = append(seedRate, float64(rows)/took.Seconds())

		ad, err := ap.Direct("")
		if err != nil {
			return err
		}
		_, err = ad.ExecContext(ctx, "DROP DATABASE IF EXISTS sbdump; CREATE DATABASE sbdump")
		ad.Close()
		if err != nil {
			return err
		}
		eh, ep, _ := strings.Cut(eu.Server.Addr(), ":")
		ah, apn, _ := strings.Cut(ap.Server.Addr(), ":")
		pipe := fmt.Sprintf("mariadb-dump --no-defaults -h %s -P %s -u root --single-transaction --skip-triggers sbtest | mariadb --no-defaults -h %s -P %s -u root sbdump", eh, ep, ah, apn)
		start = time.Now()
		if out, err := exec.CommandContext(ctx, "bash", "-o", "pipefail", "-c", pipe).CombinedOutput(); err != nil {
			return fmt.Errorf("%s: %v\n%s", pipe, err, out)
		}
		dumpRate = append(dumpRate, float64(rows)/time.Since(start).Seconds())
		fmt.Printf("run %d: region reseed %.0f rows/s, mariadb-dump | mariadb %.0f rows/s\n", i+1, seedRate[i], dumpRate[i])
	}
	s, d := med(seedRate), med(dumpRate)
	fmt.Printf("%d rows (sysbench 4 tables, with tombstone tables and metadata columns); medians of %d runs: region reseed %.0f rows/s, mariadb-dump | mariadb %.0f rows/s: %.2fx\n"+
		"(run 1 copies into empty tables; later reseeds first empty the previous copy with DELETE, inside the time; the dump's DROP DATABASE is outside it)\n",
		rows, runs, s, d, s/d)
	return nil
}
