package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// benchTracing measures what tracing costs the proxy: two `mlproxy run`
// instances of one region in front of the same server, one with tracing
// off and one exporting to a local OTLP/HTTP receiver at the default 1%
// sampling, sysbench through each, interleaved, medians of runs. The
// traced instance's sampled writes also carry their context into the
// binlog (one mlr.traces row each).
func benchTracing(ctx context.Context, bin string, dur time.Duration, runs int, threads []int) error {
	fmt.Println("\n== tracing cost: sysbench through two proxies of one region, tracing off and on (OTLP/HTTP to a local receiver, sample_ratio 0.01)")
	var exports, bytes atomic.Int64
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	recv := &http.Server{ReadHeaderTimeout: 5 * time.Second, Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n, _ := io.Copy(io.Discard, r.Body)
		exports.Add(1)
		bytes.Add(n)
		w.Header().Set("Content-Type", "application/x-protobuf")
	})}
	go func() { _ = recv.Serve(ln) }()
	defer recv.Close()

	prepare := func(ctx context.Context, c *cluster.Cluster) error {
		_, err := sysbench(ctx, c.Regions[0].Server.Addr(), "oltp_write_only", "prepare")
		return err
	}
	c, err := cluster.Start(ctx, cluster.Options{Bin: bin, Names: []string{"eu"}, Setup: "CREATE DATABASE sbtest;",
		Tables: sbTables, Prepare: prepare, ServerArgs: []string{"--max-connections=500"}})
	if err != nil {
		return err
	}
	defer c.Close()
	c.Opts.Extra = fmt.Sprintf("tracing:\n  endpoint: \"http://%s/v1/traces\"\n  insecure: true\n  sample_ratio: 0.01\n", ln.Addr())
	traced, err := c.AddInstance(ctx, c.Regions[0], "traced")
	if err != nil {
		return err
	}
	type variant struct{ name, addr string }
	variants := []variant{{"tracing off", c.Regions[0].ProxyAddr}, {"tracing on 1%", traced.ProxyAddr}}
	secs := fmt.Sprintf("--time=%d", int(dur.Seconds()))
	fmt.Printf("%-18s %-8s %14s %14s | %8s\n", "workload", "threads", variants[0].name, variants[1].name, "on / off")
	for _, w := range []string{"oltp_point_select", "oltp_write_only"} {
		for _, th := range threads {
			qps := map[string][]float64{}
			for range runs {
				for _, v := range variants {
					res, err := run(ctx, v.addr, w, secs, fmt.Sprintf("--threads=%d", th))
					if err != nil {
						return err
					}
					qps[v.name] = append(qps[v.name], res.QPS)
				}
			}
			off, on := med(qps[variants[0].name]), med(qps[variants[1].name])
			fmt.Printf("%-18s %-8d %12.0f/s %12.0f/s | %7.2fx\n", w, th, off, on, on/off)
		}
	}
	time.Sleep(2 * time.Second) // the exporter's last batch
	fmt.Printf("queries per second, medians of %d interleaved runs of %s; the traced proxy exported %d batches (%d KiB) to the receiver\n",
		runs, dur, exports.Load(), bytes.Load()>>10)
	if exports.Load() == 0 {
		return fmt.Errorf("the traced proxy exported no spans: tracing was not on")
	}
	return nil
}
