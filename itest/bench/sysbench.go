package main

import (
	"context"
	"fmt"
	"os/exec"
	"regexp"
	"strconv"
	"strings"
)

// sbResult is what one sysbench run printed.
type sbResult struct {
	TPS, QPS     float64 // transactions and queries per second
	AvgLatencyMs float64 // average transaction latency
	P95Ms        float64
	Txns         float64
	Queries      float64
}

var (
	reTxns    = regexp.MustCompile(`transactions:\s+(\d+)\s+\(([\d.]+) per sec`)
	reQueries = regexp.MustCompile(`queries:\s+(\d+)\s+\(([\d.]+) per sec`)
	reAvg     = regexp.MustCompile(`avg:\s+([\d.]+)`)
	reP95     = regexp.MustCompile(`95th percentile:\s+([\d.]+)`)
)

// parseSysbench reads the summary sysbench prints after `run`.
func parseSysbench(out string) (sbResult, error) {
	var r sbResult
	m := reTxns.FindStringSubmatch(out)
	q := reQueries.FindStringSubmatch(out)
	a := reAvg.FindStringSubmatch(out)
	if m == nil || q == nil || a == nil {
		return r, fmt.Errorf("unexpected sysbench output:\n%s", out)
	}
	r.Txns, _ = strconv.ParseFloat(m[1], 64)
	r.TPS, _ = strconv.ParseFloat(m[2], 64)
	r.Queries, _ = strconv.ParseFloat(q[1], 64)
	r.QPS, _ = strconv.ParseFloat(q[2], 64)
	r.AvgLatencyMs, _ = strconv.ParseFloat(a[1], 64)
	if p := reP95.FindStringSubmatch(out); p != nil {
		r.P95Ms, _ = strconv.ParseFloat(p[1], 64)
	}
	return r, nil
}

// sysbench runs one sysbench command against addr ("host:port"), on the
// database sbtest.
func sysbench(ctx context.Context, addr, test, command string, args ...string) (string, error) {
	return sysbenchOn(ctx, addr, "sbtest", test, command, args...)
}

// sysbenchOn runs one sysbench command against database db at addr.
func sysbenchOn(ctx context.Context, addr, db, test, command string, args ...string) (string, error) {
	host, port, _ := strings.Cut(addr, ":")
	base := []string{test,
		"--db-driver=mysql", "--mysql-host=" + host, "--mysql-port=" + port,
		"--mysql-user=root", "--mysql-db=" + db, "--tables=4", "--table-size=10000",
		"--rand-seed=1", "--report-interval=0", "--auto_inc=off", // explicit ids: every server loads identical rows
	}
	cmd := exec.CommandContext(ctx, "sysbench", append(append(base, args...), command)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("sysbench %s %s on %s: %v\n%s", test, command, addr, err, out)
	}
	return string(out), nil
}

func run(ctx context.Context, addr, test string, args ...string) (sbResult, error) {
	out, err := sysbench(ctx, addr, test, "run", args...)
	if err != nil {
		return sbResult{}, err
	}
	return parseSysbench(out)
}
