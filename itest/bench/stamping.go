package main

import (
	"context"
	"fmt"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// benchStamping measures what stamping costs writes: sysbench
// oltp_write_only through mlproxy into replicated tables (the proxy's
// stamp, the triggers, tombstones) against HAProxy in front of the same
// server into identical tables that do not replicate (no triggers), and
// directly into both, interleaved, medians of runs. The target is mlproxy
// with stamping >= 0.85x HAProxy without it.
func benchStamping(ctx context.Context, bin string, dur time.Duration, runs int, threads []int) error {
	fmt.Println("\n== stamping cost: sysbench oltp_write_only, replicated tables (sbtest: triggers) against plain ones (sbplain), through mlproxy, HAProxy and directly")
	prepare := func(ctx context.Context, c *cluster.Cluster) error {
		for _, db := range []string{"sbtest", "sbplain"} {
			if _, err := sysbenchOn(ctx, c.Regions[0].Server.Addr(), db, "oltp_write_only", "prepare"); err != nil {
				return err
			}
		}
		return nil
	}
	c, err := cluster.Start(ctx, cluster.Options{Bin: bin, Names: []string{"eu"}, Setup: "CREATE DATABASE sbtest; CREATE DATABASE sbplain;",
		Tables: sbTables, Prepare: prepare, ServerArgs: []string{"--max-connections=500"}})
	if err != nil {
		return err
	}
	defer c.Close()
	r := c.Regions[0]
	ha, err := startHAProxy(r.Server.Addr())
	if err != nil {
		return err
	}
	defer ha.Close()
	type variant struct{ name, addr, db string }
	variants := []variant{
		{"direct, no triggers", r.Server.Addr(), "sbplain"},
		{"direct, triggers", r.Server.Addr(), "sbtest"},
		{"haproxy, no triggers", ha.addr, "sbplain"},
		{"mlproxy, stamped", r.ProxyAddr, "sbtest"},
	}
	secs := fmt.Sprintf("--time=%d", int(dur.Seconds()))
	fmt.Printf("%-8s %14s %14s %14s %14s | %18s %16s\n", "threads", variants[0].name, variants[1].name, variants[2].name, variants[3].name, "ml stamped / ha", "triggers / none")
	for _, th := range threads {
		res := map[string][]measured{}
		for i := 0; i < runs; i++ {
			for _, v := range variants {
				out, err := sysbenchOn(ctx, v.addr, v.db, "oltp_write_only", "run", secs, fmt.Sprintf("--threads=%d", th))
				if err != nil {
					return err
				}
				sb, err := parseSysbench(out)
				if err != nil {
					return err
				}
				res[v.name] = append(res[v.name], measured{qps: sb.TPS})
			}
		}
		m := func(i int) float64 { return median(res[variants[i].name]).qps }
		fmt.Printf("%-8d %14.0f %14.0f %14.0f %14.0f | %17.2fx %15.2fx\n", th, m(0), m(1), m(2), m(3), m(3)/m(2), m(1)/m(0))
	}
	fmt.Printf("transactions per second, medians of %d interleaved runs of %s; target: mlproxy stamped >= 0.85x HAProxy without triggers\n", runs, dur)
	return nil
}
