package main

import (
	"context"
	"fmt"
	"os"
	"text/tabwriter"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

const sbTables = `  - schema: sbtest
    table: "*"
    rule: lww`

// benchProxy runs sysbench through the proxy and directly, alternating, in
// one run, and prints throughput ratios and latency added per statement.
func benchProxy(ctx context.Context, bin string, dur time.Duration) error {
	fmt.Println("== proxy vs direct (sysbench, 4 tables x 10000 rows, replicated tables stamped)")
	c, err := cluster.Start(ctx, cluster.Options{Bin: bin, Names: []string{"eu"}, Setup: "CREATE DATABASE sbtest;", Tables: sbTables})
	if err != nil {
		return err
	}
	defer c.Close()
	r := c.Regions[0]
	if _, err := sysbench(ctx, r.Server.Addr(), "oltp_read_write", "prepare"); err != nil {
		return err
	}
	if out, err := c.Command(ctx, "schema", "apply", "-c", r.ConfigPath); err != nil {
		return fmt.Errorf("schema apply: %v\n%s", err, out)
	}
	secs := fmt.Sprintf("--time=%d", int(dur.Seconds()))
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "test\tthreads\tdirect tps\tproxy tps\tratio\tdirect avg ms\tproxy avg ms\tadded µs/stmt\t")
	for _, test := range []string{"oltp_point_select", "oltp_read_write"} {
		for _, threads := range []int{1, 4, 16} {
			th := fmt.Sprintf("--threads=%d", threads)
			d, err := run(ctx, r.Server.Addr(), test, secs, th)
			if err != nil {
				return err
			}
			p, err := run(ctx, r.ProxyAddr, test, secs, th)
			if err != nil {
				return err
			}
			perTxn := p.Queries / p.Txns
			added := (p.AvgLatencyMs - d.AvgLatencyMs) * 1000 / perTxn
			fmt.Fprintf(w, "%s\t%d\t%.0f\t%.0f\t%.2fx\t%.3f\t%.3f\t%.1f\t\n", test, threads, d.TPS, p.TPS, p.TPS/d.TPS, d.AvgLatencyMs, p.AvgLatencyMs, added)
			w.Flush()
		}
	}
	fmt.Println("ratio = proxy tps / direct tps; added µs/stmt = (proxy - direct) average transaction latency / statements per transaction")
	return nil
}
