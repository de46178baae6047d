package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

var reIgnored = regexp.MustCompile(`ignored errors:\s+(\d+)`)

// ignoredErrors is sysbench's count of errors it ignored and retried the
// transaction after: deadlocks (1213) and lock wait timeouts (1205).
func ignoredErrors(out string) float64 {
	m := reIgnored.FindStringSubmatch(out)
	if m == nil {
		return 0
	}
	n, _ := strconv.ParseFloat(m[1], 64)
	return n
}

// startPair starts eu and us with sysbench's tables replicated (lww) and
// loaded in both.
func startPair(ctx context.Context, bin, extra string) (*cluster.Cluster, error) {
	prepare := func(ctx context.Context, c *cluster.Cluster) error {
		for _, r := range c.Regions {
			if _, err := sysbench(ctx, r.Server.Addr(), "oltp_write_only", "prepare", "--threads=1"); err != nil {
				return err
			}
		}
		return nil
	}
	return cluster.Start(ctx, cluster.Options{Bin: bin, Names: []string{"eu", "us"}, Setup: "CREATE DATABASE sbtest;", Tables: sbTables,
		Prepare: prepare, ServerArgs: []string{"--max-connections=500"}, Extra: extra})
}

// benchDeadlocks measures the client deadlocks the applier causes: sysbench
// oltp_write_only at 64 threads through eu's proxy, alone and then while us
// writes the same tables at 8 threads (its changes applied into eu). Both
// counts include the deadlocks 64 clients cause each other; the difference
// is the applier's share. extra is YAML added to both regions' configs
// (e.g. "apply:\n  batch_txns: 16\n" to see what batch size does).
func benchDeadlocks(ctx context.Context, bin string, dur time.Duration, extra string) error {
	fmt.Println("\n== client deadlocks caused by the applier: sysbench oltp_write_only, 64 threads through eu's proxy, alone and with us replicating into the same tables")
	c, err := startPair(ctx, bin, extra)
	if err != nil {
		return err
	}
	defer c.Close()
	eu, us := c.Regions[0], c.Regions[1]
	secs := fmt.Sprintf("--time=%d", int(dur.Seconds()))
	measure := func(withPeer bool) (txns, ignored float64, err error) {
		var wg sync.WaitGroup
		var peerErr error
		if withPeer {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, peerErr = sysbench(ctx, us.ProxyAddr, "oltp_write_only", "run", secs, "--threads=8", "--rand-seed=7")
			}()
		}
		out, err := sysbench(ctx, eu.ProxyAddr, "oltp_write_only", "run", secs, "--threads=64")
		wg.Wait()
		if err != nil {
			return 0, 0, err
		}
		if peerErr != nil {
			return 0, 0, peerErr
		}
		res, err := parseSysbench(out)
		return res.Txns, ignoredErrors(out), err
	}
	// Every deadlock goes to eu's error log, with the statements involved
	// and the victim (deadlocks.go): the applier's share is counted, not
	// estimated from the difference of two runs.
	logPath := filepath.Join(eu.Server.Dir, "error.log")
	if db, err := eu.Server.Open(""); err == nil {
		_, err = db.ExecContext(ctx, "SET GLOBAL innodb_print_all_deadlocks = ON")
		db.Close()
		if err != nil {
			return fmt.Errorf("innodb_print_all_deadlocks: %w", err)
		}
	}
	logSize := func() int64 {
		if fi, err := os.Stat(logPath); err == nil {
			return fi.Size()
		}
		return 0
	}
	logSince := func(off int64) string {
		b, err := os.ReadFile(logPath)
		if err != nil || int64(len(b)) < off {
			return ""
		}
		return string(b[off:])
	}
	fmt.Printf("%-34s %10s %14s %16s %14s %14s %14s\n", "run", "txns", "deadlocks", "per 10,000 txns", "client victim", "applier victim", "among clients")
	var per [2]float64
	var caused [2]deadlockCount
	var clientTxns [2]float64
	for i, withPeer := range []bool{false, true} {
		off := logSize()
		txns, ign, err := measure(withPeer)
		if err != nil {
			return err
		}
		name := "eu alone"
		if withPeer {
			name = "eu while us replicates into it"
		}
		per[i] = 1e4 * ign / max(txns, 1)
		caused[i], clientTxns[i] = countDeadlocks(logSince(off)), txns
		fmt.Printf("%-34s %10.0f %14.0f %16.2f %14d %14d %14d\n", name, txns, ign, per[i],
			caused[i].clientVictim, caused[i].applierVictim, caused[i].amongClients)
	}
	fmt.Printf("difference of the two runs: %.2f per 10,000 client transactions\n", max(0, per[1]-per[0]))
	fmt.Printf("caused by the applier (client rolled back in a deadlock with it, from eu's deadlock log): %d, %.2f per 10,000 client transactions (target < 1); %d unattributed\n",
		caused[1].clientVictim, 1e4*float64(caused[1].clientVictim)/max(clientTxns[1], 1), caused[1].unattributable)
	if db, err := eu.Server.Open(""); err == nil {
		var typ, name, status string
		if db.QueryRowContext(ctx, "SHOW ENGINE INNODB STATUS").Scan(&typ, &name, &status) == nil {
			if i := strings.Index(status, "LATEST DETECTED DEADLOCK"); i >= 0 {
				rest := status[i:]
				if j := strings.Index(rest, "\nTRANSACTIONS\n"); j >= 0 {
					rest = rest[:j]
				}
				fmt.Println("eu's latest detected deadlock (SHOW ENGINE INNODB STATUS):")
				fmt.Println(rest)
			}
		}
		db.Close()
	}
	return nil
}

// benchBreakingPoint finds the highest write rate at eu that us applies
// with a p99 lag under 1 s, beside eu's own maximum (sysbench
// oltp_write_only at 8 threads, full speed): rates are tried from a
// fraction of the maximum upwards, each for dur.
func benchBreakingPoint(ctx context.Context, bin string, dur time.Duration) error {
	fmt.Println("\n== breaking point: the highest sustained write rate at eu (sysbench oltp_write_only, 8 threads) at which us's replication lag p99 stays under 1 s")
	c, err := startPair(ctx, bin, "")
	if err != nil {
		return err
	}
	defer c.Close()
	eu, us := c.Regions[0], c.Regions[1]
	src, _ := eu.Server.Open("")
	defer src.Close()
	peer, _ := us.Server.Open("")
	defer peer.Close()
	sctx, stop := context.WithCancel(ctx)
	defer stop()
	var s sampler // eu is region 1: its domain and its checkpoint row at us
	go s.run(sctx, src, peer, nil, uint32(eu.ID), 20*time.Millisecond)
	secs := fmt.Sprintf("--time=%d", int(dur.Seconds()))
	step := func(rate int) (tps float64, p99 time.Duration, err error) {
		args := []string{secs, "--threads=8"}
		if rate > 0 {
			args = append(args, fmt.Sprintf("--rate=%d", rate))
		}
		start := time.Now()
		res, err := run(ctx, eu.ProxyAddr, "oltp_write_only", args...)
		end := time.Now()
		if err != nil {
			return 0, 0, err
		}
		// Wait for us to catch up so the lag of the last commits counts.
		for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
			if last := s.last(); last.peer >= last.source {
				break
			}
		}
		_, p99 = lags(s.between(start, time.Now()), start, end, func(x sample) int64 { return x.peer })
		return res.TPS, p99, nil
	}
	maxTPS, maxLag, err := step(0)
	if err != nil {
		return err
	}
	fmt.Printf("%-28s %10s %12s\n", "offered", "eu tps", "us lag p99")
	fmt.Printf("%-28s %10.0f %12v\n", "full speed (eu's maximum)", maxTPS, maxLag.Round(time.Millisecond))
	best := 0.0
	for _, f := range []float64{0.4, 0.55, 0.7, 0.85, 1.0} {
		rate := int(f * maxTPS)
		tps, p99, err := step(rate)
		if err != nil {
			return err
		}
		fmt.Printf("%-28s %10.0f %12v\n", fmt.Sprintf("%d tps (%.0f%% of maximum)", rate, 100*f), tps, p99.Round(time.Millisecond))
		if p99 >= time.Second {
			break
		}
		best = tps
	}
	if maxLag < time.Second {
		best = maxTPS
	}
	fmt.Printf("breaking point: %.0f tps sustained with us's lag p99 < 1 s = %.2fx eu's own maximum (%.0f tps)\n", best, best/maxTPS, maxTPS)
	return nil
}
