package main

import (
	"context"
	"fmt"
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
	const row = "%-18s %7v %10v %10v %6v %10v %6v %13v %12v %14v %20v\n"
	fmt.Printf(row, "test", "threads", "direct tps", "proxy tps", "ratio", "relay tps", "ratio", "direct avg ms", "proxy avg ms", "added µs/stmt", "relay added µs/stmt")
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
			fmt.Printf(row, test, threads, fmt.Sprintf("%.0f", d.TPS), fmt.Sprintf("%.0f", p.TPS), fmt.Sprintf("%.2fx", p.TPS/d.TPS),
				fmt.Sprintf("%.0f", b.TPS), fmt.Sprintf("%.2fx", b.TPS/d.TPS), fmt.Sprintf("%.3f", d.AvgLatencyMs),
				fmt.Sprintf("%.3f", p.AvgLatencyMs), fmt.Sprintf("%.1f", added), fmt.Sprintf("%.1f", relayAdded))
		}
	}
	fmt.Println("ratio = tps / direct tps; added µs/stmt = (proxy or relay - direct) average transaction latency / statements per transaction;")
	fmt.Println("relay = a bare TCP byte copier in the bench process (io.Copy both ways): the cost of one extra hop on this machine, the floor for any proxy")
	return nil
}
