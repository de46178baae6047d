package main

import (
	"context"
	"database/sql"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/dbtest"
	"github.com/mlproxy/mlproxy/itest/cluster"
)

// sample is one reading of how far the source has committed and how far
// each replica has applied, in source transactions (GTID sequence numbers
// of the source's domain).
type sample struct {
	at                   time.Time
	source, peer, native int64
}

// sampler reads the three positions every interval until stopped (the
// native replica's only when it is given).
type sampler struct {
	mu      sync.Mutex
	samples []sample
}

func (s *sampler) last() sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	if len(s.samples) == 0 {
		return sample{}
	}
	return s.samples[len(s.samples)-1]
}

func (s *sampler) between(from, to time.Time) []sample {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []sample
	for _, x := range s.samples {
		if !x.at.Before(from) && !x.at.After(to) {
			out = append(out, x)
		}
	}
	return out
}

func (s *sampler) run(ctx context.Context, src, peer, native *sql.DB, domain uint32, every time.Duration) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		x := sample{at: time.Now()}
		x.source = binlog.SeqNo(queryString(ctx, src, "SELECT @@gtid_binlog_pos"), domain)
		x.peer = binlog.SeqNo(queryString(ctx, peer, "SELECT gtid FROM mlr.checkpoints WHERE peer_id = 1"), domain)
		if native != nil {
			x.native = binlog.SeqNo(queryString(ctx, native, "SELECT @@gtid_slave_pos"), domain)
		}
		s.mu.Lock()
		s.samples = append(s.samples, x)
		s.mu.Unlock()
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func queryString(ctx context.Context, db *sql.DB, q string) string {
	var s sql.NullString
	_ = db.QueryRowContext(ctx, q).Scan(&s)
	return s.String
}

// phase summarises one load phase.
type phase struct {
	name                       string
	sourceRate                 float64 // source commits/s during the load
	peerRate, nativeRate       float64 // applied/s during the load
	peerP50, peerP99           time.Duration
	nativeP50, nativeP99       time.Duration
	peerCatchup, nativeCatchup time.Duration
}

// lags computes, for every sample where the source advanced, how long the
// replica took to reach that source position.
func lags(all []sample, from, to time.Time, replica func(sample) int64) (p50, p99 time.Duration) {
	var ds []time.Duration
	for i, x := range all {
		if x.at.Before(from) || x.at.After(to) || (i > 0 && all[i-1].source == x.source) {
			continue
		}
		for _, y := range all[i:] {
			if replica(y) >= x.source {
				ds = append(ds, y.at.Sub(x.at))
				break
			}
		}
	}
	if len(ds) == 0 {
		return 0, 0
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i] < ds[j] })
	return ds[len(ds)/2], ds[(len(ds)*99)/100]
}

// replResult is one run's catch-up after the backlog: source commit rate
// and each replica's apply rate while catching up, in source transactions
// per second.
type replResult struct {
	workers                    int
	source, peer, native       float64
	peerCatchup, nativeCatchup time.Duration
}

// benchReplications runs benchReplication runs times for every worker
// count (interleaved), then prints the catch-up ratios side by side
// (medians when runs > 1).
func benchReplications(ctx context.Context, bin string, dur, backlog time.Duration, workers []int, runs int) error {
	byWorkers := map[int][]replResult{}
	for r := 0; r < runs; r++ {
		for _, w := range workers {
			res, err := benchReplication(ctx, bin, dur, backlog, w)
			if err != nil {
				return err
			}
			byWorkers[w] = append(byWorkers[w], res)
		}
	}
	fmt.Printf("\n== replication catch-up after %v backlog, side by side (%d run(s); medians)\n", backlog, runs)
	fmt.Printf("%-8s %12s %14s %8s %14s %8s %14s\n", "workers", "source tps", "mlproxy tps", "ratio", "native tps", "ratio", "mlproxy/native")
	for _, w := range workers {
		rs := byWorkers[w]
		med := func(f func(replResult) float64) float64 {
			xs := make([]float64, len(rs))
			for i, r := range rs {
				xs[i] = f(r)
			}
			sort.Float64s(xs)
			return (xs[(len(xs)-1)/2] + xs[len(xs)/2]) / 2
		}
		src := med(func(r replResult) float64 { return r.source })
		peer := med(func(r replResult) float64 { return r.peer })
		nat := med(func(r replResult) float64 { return r.native })
		pr := med(func(r replResult) float64 { return r.peer / r.source })
		nr := med(func(r replResult) float64 { return r.native / r.source })
		pn := med(func(r replResult) float64 { return r.peer / r.native })
		fmt.Printf("%-8d %12.0f %14.0f %7.2fx %14.0f %7.2fx %13.2fx\n", w, src, peer, pr, nat, nr, pn)
	}
	fmt.Println("native: a MariaDB replica of the same source with slave_parallel_threads = workers, slave_parallel_mode = optimistic")
	return nil
}

func benchReplication(ctx context.Context, bin string, dur, backlog time.Duration, workers int) (replResult, error) {
	out := replResult{workers: workers}
	fmt.Printf("\n== replication (apply.workers %d; native slave_parallel_threads %d, optimistic): sysbench oltp_write_only through region eu's proxy; region us applies with mlproxy; a native MariaDB replica of eu for comparison\n", workers, workers)
	native, err := dbtest.Start(dbtest.Options{ServerID: 9})
	if err != nil {
		return out, err
	}
	defer native.Destroy()
	prepare := func(ctx context.Context, c *cluster.Cluster) error {
		for _, addr := range []string{c.Regions[0].Server.Addr(), c.Regions[1].Server.Addr()} {
			if _, err := sysbench(ctx, addr, "oltp_write_only", "prepare", "--threads=1"); err != nil {
				return err
			}
		}
		// The native replica gets the same data, then follows eu from here.
		ndb, _ := native.Open("")
		defer ndb.Close()
		if _, err := ndb.ExecContext(ctx, "CREATE DATABASE sbtest"); err != nil {
			return err
		}
		if _, err := sysbench(ctx, native.Addr(), "oltp_write_only", "prepare", "--threads=1"); err != nil {
			return err
		}
		src, _ := c.Regions[0].Server.Open("")
		defer src.Close()
		pos := queryString(ctx, src, "SELECT @@gtid_binlog_pos")
		_, err := ndb.ExecContext(ctx, fmt.Sprintf(
			"SET GLOBAL slave_parallel_threads = %d, slave_parallel_mode = 'optimistic'; "+
				"SET GLOBAL gtid_slave_pos = '%s'; CHANGE MASTER TO MASTER_HOST='127.0.0.1', MASTER_PORT=%d, MASTER_USER='root', MASTER_USE_GTID=slave_pos; START SLAVE",
			workers, pos, c.Regions[0].Server.Port))
		return err
	}
	c, err := cluster.Start(ctx, cluster.Options{Bin: bin, Names: []string{"eu", "us"}, Setup: "CREATE DATABASE sbtest;", Tables: sbTables, Prepare: prepare,
		Extra: fmt.Sprintf("apply:\n  workers: %d\n", workers)})
	if err != nil {
		return out, err
	}
	defer c.Close()
	eu, us := c.Regions[0], c.Regions[1]
	src, _ := eu.Server.Open("")
	defer src.Close()
	peer, _ := us.Server.Open("")
	defer peer.Close()
	ndb, _ := native.Open("")
	defer ndb.Close()

	sctx, stopSampling := context.WithCancel(ctx)
	defer stopSampling()
	var s sampler
	go s.run(sctx, src, peer, ndb, 1, 50*time.Millisecond)

	secs := fmt.Sprintf("--time=%d", int(dur.Seconds()))
	load := func(name string, args ...string) (phase, sbResult, error) {
		start := time.Now()
		res, err := run(ctx, eu.ProxyAddr, "oltp_write_only", append([]string{secs, "--threads=8"}, args...)...)
		end := time.Now()
		if err != nil {
			return phase{}, res, err
		}
		ph := phase{name: name}
		if err := waitCaughtUp(ctx, &s, 3*time.Minute); err != nil {
			return ph, res, fmt.Errorf("%w; native replica: %s", err, slaveErrors(ctx, ndb))
		}
		w := s.between(start, end)
		if len(w) < 2 {
			return ph, res, fmt.Errorf("too few samples")
		}
		secs := w[len(w)-1].at.Sub(w[0].at).Seconds()
		ph.sourceRate = float64(w[len(w)-1].source-w[0].source) / secs
		ph.peerRate = float64(w[len(w)-1].peer-w[0].peer) / secs
		ph.nativeRate = float64(w[len(w)-1].native-w[0].native) / secs
		all := s.between(start, time.Now())
		ph.peerP50, ph.peerP99 = lags(all, start, end, func(x sample) int64 { return x.peer })
		ph.nativeP50, ph.nativeP99 = lags(all, start, end, func(x sample) int64 { return x.native })
		return ph, res, nil
	}

	full, res, err := load("full speed")
	if err != nil {
		return out, err
	}
	half, _, err := load(fmt.Sprintf("fixed rate %.0f tps (half of full speed)", res.TPS/2), fmt.Sprintf("--rate=%d", int(res.TPS/2)))
	if err != nil {
		return out, err
	}

	// Backlog: the peer's mlproxy and the native replica's SQL thread stop
	// while the source runs at full speed; then both resume together.
	if err := c.StopProxy(us, false); err != nil {
		return out, fmt.Errorf("stop us: %w", err)
	}
	if _, err := ndb.ExecContext(ctx, "STOP SLAVE SQL_THREAD"); err != nil {
		return out, err
	}
	bstart := time.Now()
	if _, err := run(ctx, eu.ProxyAddr, "oltp_write_only", fmt.Sprintf("--time=%d", int(backlog.Seconds())), "--threads=8"); err != nil {
		return out, err
	}
	bend := time.Now()
	time.Sleep(200 * time.Millisecond)
	b := s.last()
	srcRate := float64(b.source-s.between(bstart, bend)[0].source) / bend.Sub(bstart).Seconds()
	resume := time.Now()
	if err := c.StartProxy(us); err != nil {
		return out, err
	}
	if _, err := ndb.ExecContext(ctx, "START SLAVE SQL_THREAD"); err != nil {
		return out, err
	}
	catch := phase{name: fmt.Sprintf("catch-up after %v backlog", backlog), sourceRate: srcRate}
	deadline := time.Now().Add(10 * time.Minute)
	for (catch.peerCatchup == 0 || catch.nativeCatchup == 0) && time.Now().Before(deadline) {
		x := s.last()
		if catch.peerCatchup == 0 && x.peer >= b.source {
			catch.peerCatchup = x.at.Sub(resume)
		}
		if catch.nativeCatchup == 0 && x.native >= b.source {
			catch.nativeCatchup = x.at.Sub(resume)
		}
		time.Sleep(50 * time.Millisecond)
	}
	backlogTxns := float64(b.source - b.peer)
	nativeBacklog := float64(b.source - b.native)

	fmt.Printf("\n%-40s %12s %14s %8s %12s %12s %14s %8s %12s %12s\n", "phase", "source tps", "mlproxy tps", "ratio", "lag p50", "lag p99", "native tps", "ratio", "lag p50", "lag p99")
	for _, ph := range []phase{full, half} {
		fmt.Printf("%-40s %12.0f %14.0f %7.2fx %12v %12v %14.0f %7.2fx %12v %12v\n", ph.name, ph.sourceRate,
			ph.peerRate, ph.peerRate/ph.sourceRate, ph.peerP50.Round(time.Millisecond), ph.peerP99.Round(time.Millisecond),
			ph.nativeRate, ph.nativeRate/ph.sourceRate, ph.nativeP50.Round(time.Millisecond), ph.nativeP99.Round(time.Millisecond))
	}
	rate := func(n float64, d time.Duration) float64 {
		if d <= 0 {
			return 0
		}
		return n / d.Seconds()
	}
	pr, nr := rate(backlogTxns, catch.peerCatchup), rate(nativeBacklog, catch.nativeCatchup)
	fmt.Printf("%-40s %12.0f %14.0f %7.2fx %12s %12s %14.0f %7.2fx\n", catch.name, srcRate, pr, pr/srcRate,
		"in "+catch.peerCatchup.Round(time.Millisecond).String(), fmt.Sprintf("%.0f txns", backlogTxns), nr, nr/srcRate)
	fmt.Println("tps in source transactions per second; ratio = apply rate / source commit rate; lag = time from the source committing a transaction to the replica having applied it (sampled every 50ms)")
	out.source, out.peer, out.native = srcRate, pr, nr
	out.peerCatchup, out.nativeCatchup = catch.peerCatchup, catch.nativeCatchup
	return out, nil
}

func waitCaughtUp(ctx context.Context, s *sampler, max time.Duration) error {
	deadline := time.Now().Add(max)
	time.Sleep(100 * time.Millisecond)
	for time.Now().Before(deadline) {
		x := s.last()
		if x.peer >= x.source && x.native >= x.source {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
	x := s.last()
	return fmt.Errorf("replicas not caught up after %v: source at %d, mlproxy applied %d, native applied %d", max, x.source, x.peer, x.native)
}

// slaveErrors returns the native replica's last replication errors.
func slaveErrors(ctx context.Context, db *sql.DB) string {
	rows, err := db.QueryContext(ctx, "SHOW SLAVE STATUS")
	if err != nil {
		return err.Error()
	}
	defer rows.Close()
	cols, _ := rows.Columns()
	vals := make([]sql.NullString, len(cols))
	ptrs := make([]any, len(cols))
	for i := range vals {
		ptrs[i] = &vals[i]
	}
	if !rows.Next() {
		return "not configured"
	}
	if err := rows.Scan(ptrs...); err != nil {
		return err.Error()
	}
	var out []string
	for i, c := range cols {
		if (c == "Last_IO_Error" || c == "Last_SQL_Error" || c == "Slave_SQL_Running" || c == "Slave_IO_Running") && vals[i].String != "" {
			out = append(out, c+"="+vals[i].String)
		}
	}
	return strings.Join(out, "; ")
}
