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
	prepare := func(ctx context.Context, c *cluster.Cluster) error {
		_, err := sysbench(ctx, c.Regions[0].Server.Addr(), "oltp_read_write", "prepare")
		return err
	}
	c, err := cluster.Start(ctx, cluster.Options{Bin: bin, Names: []string{"eu"}, Setup: "CREATE DATABASE sbtest;", Tables: sbTables, Prepare: prepare})
	if err != nil {
		return err
	}
	defer c.Close()
	r := c.Regions[0]
	relay, err := startRelay(r.Server.Addr())
	if err != nil {
		return err
	}
	defer relay.Close()
	secs := fmt.Sprintf("--time=%d", int(dur.Seconds()))
	w := tabwriter.NewWriter(os.Stdout, 2, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "test\tthreads\tdirect tps\tproxy tps\tratio\trelay tps\tratio\tdirect avg ms\tproxy avg ms\tadded µs/stmt\trelay added µs/stmt\t")
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
			b, err := run(ctx, relay.Addr(), test, secs, th)
			if err != nil {
				return err
			}
			perTxn := p.Queries / p.Txns
			added := (p.AvgLatencyMs - d.AvgLatencyMs) * 1000 / perTxn
			relayAdded := (b.AvgLatencyMs - d.AvgLatencyMs) * 1000 / perTxn
			fmt.Fprintf(w, "%s\t%d\t%.0f\t%.0f\t%.2fx\t%.0f\t%.2fx\t%.3f\t%.3f\t%.1f\t%.1f\t\n", test, threads, d.TPS, p.TPS, p.TPS/d.TPS,
				b.TPS, b.TPS/d.TPS, d.AvgLatencyMs, p.AvgLatencyMs, added, relayAdded)
			w.Flush()
		}
	}
	fmt.Println("ratio = tps / direct tps; added µs/stmt = (proxy or relay - direct) average transaction latency / statements per transaction;")
	fmt.Println("relay = a bare TCP byte copier in the bench process (io.Copy both ways): the cost of one extra hop on this machine, the floor for any proxy")
	return nil
}
