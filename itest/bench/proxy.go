package main

import (
	"context"
	"database/sql"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

const sbTables = `  - schema: sbtest
    table: "*"
    rule: lww`

type target struct {
	name string
	addr string
	pid  func() int // the proxy process, for CPU per statement (nil: none)
}

type measured struct {
	qps, p95ms, cpuPerStmt float64 // cpuPerStmt in µs
}

// benchProxy runs sysbench directly, through HAProxy (mode tcp) and
// through mlproxy against the same server in one run, interleaved, and
// prints medians: qps, p95 latency and the proxy process's CPU per
// statement, with mlproxy's ratios to HAProxy and to direct.
func benchProxy(ctx context.Context, bin string, dur time.Duration, runs int, threads []int, modes, workloads []string, profileDir, plotPath string) error {
	fmt.Println("== mlproxy vs HAProxy (mode tcp) vs direct (sysbench, 4 tables x 10000 rows, replicated tables stamped)")
	prepare := func(ctx context.Context, c *cluster.Cluster) error {
		_, err := sysbench(ctx, c.Regions[0].Server.Addr(), "oltp_read_write", "prepare")
		return err
	}
	c, err := cluster.Start(ctx, cluster.Options{Bin: bin, Names: []string{"eu"}, Setup: "CREATE DATABASE sbtest;", Tables: sbTables, Prepare: prepare,
		ServerArgs: []string{"--max-connections=1500"}, Pprof: true})
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
	targets := []target{{"direct", r.Server.Addr(), nil}, {"haproxy", ha.addr, ha.PID}, {"mlproxy", r.ProxyAddr, r.PID}}

	const row = "%-18s %-8s %7s | %9s %9s %9s | %7s %7s | %8s %8s %8s | %9s %9s %6s\n"
	fmt.Printf(row, "workload", "mode", "threads", "direct", "haproxy", "mlproxy", "ml/ha", "ml/dir", "p95 dir", "p95 ha", "p95 ml", "µs/st ha", "µs/st ml", "ratio")
	fmt.Printf(row, "", "", "", "qps", "qps", "qps", "", "", "ms", "ms", "ms", "cpu", "cpu", "")
	secs := fmt.Sprintf("--time=%d", int(dur.Seconds()))
	var ratios []ratio
	for _, test := range workloads {
		for _, mode := range modes {
			ps := "--db-ps-mode=disable"
			if mode == "prepared" {
				ps = "--db-ps-mode=auto"
			}
			for _, th := range threads {
				res := map[string][]measured{}
				for i := 0; i < runs; i++ {
					for _, tg := range targets { // interleaved: drift hits all alike
						var pid int
						if tg.pid != nil {
							pid = tg.pid()
						}
						var profiled chan error
						if profileDir != "" && tg.name == "mlproxy" && i == runs-1 {
							profiled = make(chan error, 1)
							path := filepath.Join(profileDir, fmt.Sprintf("%s-%s-%d.pprof", test, mode, th))
							go func() { profiled <- saveProfile(ctx, r.Metrics, max(dur-time.Second, time.Second), path) }()
						}
						before := cpuTime(ctx, pid)
						out, err := run(ctx, tg.addr, test, secs, fmt.Sprintf("--threads=%d", th), ps)
						if err != nil {
							return err
						}
						if profiled != nil {
							if err := <-profiled; err != nil {
								return err
							}
						}
						used := cpuTime(ctx, pid) - before
						m := measured{qps: out.QPS, p95ms: out.P95Ms}
						if pid != 0 && out.Queries > 0 {
							m.cpuPerStmt = float64(used.Microseconds()) / out.Queries
						}
						res[tg.name] = append(res[tg.name], m)
					}
				}
				d, h, m := median(res["direct"]), median(res["haproxy"]), median(res["mlproxy"])
				ratios = append(ratios, ratio{label: fmt.Sprintf("%s %s %d", strings.TrimPrefix(test, "oltp_"), mode, th), qps: m.qps / h.qps, cpu: m.cpuPerStmt / h.cpuPerStmt})
				fmt.Printf(row, test, mode, fmt.Sprint(th), f0(d.qps), f0(h.qps), f0(m.qps), f2(m.qps/h.qps), f2(m.qps/d.qps),
					f2(d.p95ms), f2(h.p95ms), f2(m.p95ms), f1(h.cpuPerStmt), f1(m.cpuPerStmt), f2(m.cpuPerStmt/h.cpuPerStmt))
			}
		}
	}
	if plotPath != "" {
		if err := plotRatios(plotPath, ratios); err != nil {
			return err
		}
	}
	fmt.Printf("medians of %d interleaved runs of %s each; ml/ha = mlproxy qps / HAProxy qps; µs/st cpu = the proxy process's user+system CPU per statement (from /proc)\n", runs, dur)

	// Memory of mlproxy with idle client connections open.
	for _, n := range []int{64, 1000} {
		db, err := sql.Open("mysql", r.DSN("sbtest"))
		if err != nil {
			return err
		}
		db.SetMaxOpenConns(n)
		db.SetMaxIdleConns(n)
		conns := make([]*sql.Conn, 0, n)
		for i := 0; i < n; i++ {
			cn, err := db.Conn(ctx)
			if err != nil {
				db.Close()
				return fmt.Errorf("open %d connections through mlproxy: %w", n, err)
			}
			if err := cn.PingContext(ctx); err != nil {
				db.Close()
				return err
			}
			conns = append(conns, cn)
		}
		fmt.Printf("mlproxy resident memory with %d client connections open: %.1f MiB\n", n, float64(rss(r.PID()))/(1<<20))
		for _, cn := range conns {
			cn.Close()
		}
		db.Close()
	}
	return nil
}

func median(ms []measured) measured {
	pick := func(f func(measured) float64) float64 {
		v := make([]float64, len(ms))
		for i, m := range ms {
			v[i] = f(m)
		}
		sort.Float64s(v)
		if len(v) == 0 {
			return 0
		}
		return v[len(v)/2]
	}
	return measured{
		qps:        pick(func(m measured) float64 { return m.qps }),
		p95ms:      pick(func(m measured) float64 { return m.p95ms }),
		cpuPerStmt: pick(func(m measured) float64 { return m.cpuPerStmt }),
	}
}

func f0(v float64) string { return fmt.Sprintf("%.0f", v) }
func f1(v float64) string { return fmt.Sprintf("%.1f", v) }
func f2(v float64) string {
	if v != v { // NaN
		return "-"
	}
	return fmt.Sprintf("%.2f", v)
}

// saveProfile fetches a CPU profile of length d from a pprof listener
// and writes it to path.
func saveProfile(ctx context.Context, addr string, d time.Duration, path string) error {
	url := fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", addr, int(d.Seconds()))
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("cpu profile: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("cpu profile: %s from %s", resp.Status, url)
	}
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("cpu profile: %w", err)
	}
	return os.WriteFile(path, b, 0o644)
}
