// Command bench measures mlproxy side by side with the alternative in the
// same run, on the same machine, and prints ratios (this machine is shared
// and noisy; absolute numbers drift, ratios hold better):
//
//   - proxy vs direct: sysbench oltp_point_select and oltp_read_write at 1,
//     4 and 16 threads through the proxy and straight to the server;
//   - replication: sysbench oltp_write_only on one region at a fixed rate and
//     at full speed; the apply rate at the peer as a ratio of the source's
//     commit rate, replication lag p50/p99, catch-up after a backlog; and a
//     native MariaDB replica of the same source under the same load, for
//     each -workers value (apply.workers; the native replica runs as many
//     slave_parallel_threads in optimistic mode), side by side;
//   - stamping: writes through mlproxy into replicated tables against
//     HAProxy into tables without triggers;
//   - deadlocks: client deadlocks the applier causes at 64 client threads;
//   - breaking point: the highest write rate a peer applies with lag < 1 s.
//
// Run it with `make bench`.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	_ "github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

func main() {
	bin := flag.String("bin", "", "mlproxy binary (default: build it)")
	dur := flag.Duration("duration", 10*time.Second, "length of each sysbench run")
	backlog := flag.Duration("backlog", 60*time.Second, "how long the peer is stopped to build a backlog")
	only := flag.String("only", "", "run only 'proxy', 'replication', 'stamping', 'homes', 'tracing', 'seed', 'deadlocks' or 'breaking'")
	runs := flag.Int("runs", 3, "interleaved runs per figure (the median is printed)")
	threadList := flag.String("threads", "1,16,64", "sysbench thread counts for the proxy bench")
	modeList := flag.String("modes", "text,prepared", "sysbench statement modes for the proxy bench: text, prepared")
	plotPath := flag.String("plot", "", "a file (.svg, .png, .pdf): plot the proxy bench's ratios to HAProxy there")
	profileDir := flag.String("cpuprofile", "", "a directory: save a CPU profile of mlproxy over its last run of each proxy bench figure there")
	workloadList := flag.String("workloads", "oltp_point_select,oltp_read_write,oltp_write_only", "sysbench workloads for the proxy bench")
	extra := flag.String("extra", "", "YAML appended to the regions' configs in the deadlock bench (e.g. $'apply:\\n  batch_txns: 16')")
	workerList := flag.String("workers", "1,4", "apply.workers values for the replication bench, run side by side (the native replica gets as many slave_parallel_threads, optimistic)")
	replRuns := flag.Int("repl-runs", 1, "replication bench runs per worker count (the median is printed)")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	code := 0
	if *only == "" || *only == "proxy" {
		var threads []int
		for _, t := range strings.Split(*threadList, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(t))
			if err != nil || n < 1 {
				fmt.Fprintf(os.Stderr, "bench: -threads %q: want numbers like 1,16,64\n", *threadList)
				os.Exit(2)
			}
			threads = append(threads, n)
		}
		if err := benchProxy(ctx, *bin, *dur, *runs, threads, strings.Split(*modeList, ","), strings.Split(*workloadList, ","), *profileDir, *plotPath); err != nil {
			fmt.Fprintln(os.Stderr, "bench proxy:", err)
			code = 1
		}
	}
	if code == 0 && (*only == "" || *only == "replication") {
		var workers []int
		for _, w := range strings.Split(*workerList, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(w))
			if err != nil || n < 1 {
				fmt.Fprintf(os.Stderr, "bench: -workers %q: want numbers like 1,4\n", *workerList)
				os.Exit(2)
			}
			workers = append(workers, n)
		}
		if err := benchReplications(ctx, *bin, *dur, *backlog, workers, max(*replRuns, 1)); err != nil {
			fmt.Fprintln(os.Stderr, "bench replication:", err)
			code = 1
		}
	}
	if code == 0 && (*only == "" || *only == "stamping") {
		if err := benchStamping(ctx, *bin, *dur, *runs, []int{1, 16}); err != nil {
			fmt.Fprintln(os.Stderr, "bench stamping:", err)
			code = 1
		}
	}
	if code == 0 && (*only == "" || *only == "homes") {
		if err := benchHomes(ctx, *bin, *dur, *runs, []int{1, 8}); err != nil {
			fmt.Fprintln(os.Stderr, "bench homes:", err)
			code = 1
		}
	}
	if code == 0 && (*only == "" || *only == "tracing") {
		if err := benchTracing(ctx, *bin, *dur, *runs, []int{1, 16}); err != nil {
			fmt.Fprintln(os.Stderr, "bench tracing:", err)
			code = 1
		}
	}
	if code == 0 && (*only == "" || *only == "seed") {
		if err := benchSeed(ctx, *bin, *runs); err != nil {
			fmt.Fprintln(os.Stderr, "bench seed:", err)
			code = 1
		}
	}
	if code == 0 && (*only == "" || *only == "deadlocks") {
		if err := benchDeadlocks(ctx, *bin, *dur, *extra); err != nil {
			fmt.Fprintln(os.Stderr, "bench deadlocks:", err)
			code = 1
		}
	}
	if code == 0 && (*only == "" || *only == "breaking") {
		if err := benchBreakingPoint(ctx, *bin, *dur); err != nil {
			fmt.Fprintln(os.Stderr, "bench breaking point:", err)
			code = 1
		}
	}
	cluster.Cleanup() // the binary, the CA and the server template
	os.Exit(code)
}
