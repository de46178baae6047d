package chaos

import (
	"context"
	"fmt"
	"slices"
	"sync"
	"syscall"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// Options configures one schedule.
type Options struct {
	Plan Plan
	// Bin is the mlproxy binary (cluster.Build).
	Bin string
	// Workers per region.
	Workers int
	// ConvergeTimeout bounds the wait for convergence after the heal.
	ConvergeTimeout time.Duration
	// Logf receives progress lines (t.Logf).
	Logf func(format string, args ...any)
}

// Result is what one schedule did and found.
type Result struct {
	Seed     uint64
	Injected map[Class]int
	// Skipped counts planned faults not injected, by class, with why.
	Skipped map[Class]int
	Why     []string

	Txns                        int
	Acked, Refused, Failed      int
	InDoubt, InDoubtCommitted   int
	Lost, Duplicated, Phantom   int
	ExplainedErrors, ProxyExits int
	Converge                    time.Duration
	// SlowestStop is the longest graceful stop of an mlproxy (SIGTERM to
	// exit); reported, not checked beyond StopProxy's 30 s.
	SlowestStop time.Duration
	// Problems are failed checks; empty = the schedule passed.
	Problems []string
}

func (r *Result) problem(format string, args ...any) {
	r.Problems = append(r.Problems, fmt.Sprintf(format, args...))
}

// skewer is what a region offers to skew its mlproxy's wall clock
// ((*cluster.Region).SetClockOffset, MLPROXY_CLOCK_OFFSET_FILE). Without
// it, clock faults are skipped and the summary says so.
type skewer interface {
	SetClockOffset(d time.Duration) error
}

// regionState is what the injector did to a region and has not undone.
type regionState struct {
	proxyDown, proxyFrozen   bool
	serverDown, serverFrozen bool
	skewed                   bool
	// proxyStarted is when the injector last started the region's
	// mlproxy.
	proxyStarted time.Time
	// ownFaultUntil is when the last fault on the region's own server
	// (its process, or the link to it) ends: an mlproxy that exits before
	// then is explained by it.
	ownFaultUntil time.Time
}

// run is one schedule in progress.
type run struct {
	o     Options
	c     *cluster.Cluster
	net   *Net
	res   *Result
	state []regionState
	began time.Time
}

// Run starts a cluster behind the fault layer, writes through every
// region while the plan's faults happen, heals, waits for convergence
// and checks the data. A returned error means the harness itself failed
// (a cluster that does not start); failed checks are in Result.Problems.
func Run(ctx context.Context, o Options) (res *Result, err error) {
	if o.Workers == 0 {
		o.Workers = 2
	}
	if o.ConvergeTimeout == 0 {
		o.ConvergeTimeout = 3 * time.Minute
	}
	if o.Logf == nil {
		o.Logf = func(string, ...any) {}
	}
	res = &Result{Seed: o.Plan.Seed, Injected: map[Class]int{}, Skipped: map[Class]int{}}
	n := NewNet()
	defer n.Close()
	names := []string{"eu", "us", "ap", "sa", "af"}[:o.Plan.Regions]
	c, err := cluster.Start(ctx, cluster.Options{
		Names:  names,
		Setup:  Setup,
		Tables: Tables,
		Bin:    o.Bin,
		Via: func(from, to *cluster.Region) (string, error) {
			return n.Link(LinkName(from.Name, to.Name), to.Server.Addr())
		},
	})
	if err != nil {
		return res, err
	}
	defer c.Close()
	r := &run{o: o, c: c, net: n, res: res, state: make([]regionState, len(c.Regions))}
	defer func() {
		if len(res.Problems) > 0 || err != nil {
			for _, reg := range c.Regions {
				o.Logf("region %s mlproxy log tail:\n%s", reg.Name, cluster.Tail(reg.LogPath, 25))
			}
		}
	}()
	if err := r.prepare(ctx); err != nil {
		return res, err
	}

	ledger := &Ledger{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	errs := make(chan error, len(c.Regions)*o.Workers)
	for i, reg := range c.Regions {
		for w := 0; w < o.Workers; w++ {
			wr := &Writer{Region: reg, Index: i, Worker: w, Seed: o.Plan.Seed, Ledger: ledger}
			wg.Add(1)
			go func() { defer wg.Done(); errs <- wr.Run(stop) }()
		}
	}
	r.began = time.Now()
	r.inject(ctx)
	if err := r.heal(ctx); err != nil {
		close(stop)
		wg.Wait()
		res.problem("%v", err)
		return res, nil
	}
	close(stop)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			return res, err
		}
	}
	writesStopped := time.Now()
	o.Logf("seed %d: writes stopped %v after they began; waiting for convergence", o.Plan.Seed, writesStopped.Sub(r.began).Round(time.Millisecond))

	cctx, cancel := context.WithTimeout(ctx, o.ConvergeTimeout)
	defer cancel()
	if err := c.WaitApplied(cctx); err != nil {
		res.problem("no convergence within %v of the heal: %v", o.ConvergeTimeout, err)
		return res, nil
	}
	if err := c.WaitConverged(cctx, checkedTables, checkedColumns); err != nil {
		res.problem("no convergence within %v of the heal: %v", o.ConvergeTimeout, err)
		return res, nil
	}
	res.Converge = time.Since(writesStopped)
	o.Logf("seed %d: converged %v after writes stopped", o.Plan.Seed, res.Converge.Round(time.Millisecond))
	r.check(ctx, ledger.Txns())
	return res, nil
}

// checkedTables are compared across regions, with their key order.
var checkedTables = map[string]string{"app.events": "id", "app.counters": "id", "app.kv": "k", "app.hw": "k"}

// checkedColumns: user columns and the version each row holds.
const checkedColumns = "*, _mlr_hlc, _mlr_origin"

// prepare seeds the counter rows and waits until every region has them.
func (r *run) prepare(ctx context.Context) error {
	if err := SeedCounters(ctx, r.c.Regions[0]); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	return r.c.WaitConverged(wctx, map[string]string{"app.counters": "id"}, checkedColumns)
}

// action is a fault's start or its undoing.
type action struct {
	at    time.Duration
	f     Fault
	idx   int
	start bool
}

// inject carries out the plan in time order and returns when its
// duration has passed. While waiting it acts as a supervisor would: an
// mlproxy that exited by itself is recorded and started again.
func (r *run) inject(ctx context.Context) {
	var acts []action
	for i, f := range r.o.Plan.Faults {
		acts = append(acts, action{at: f.At, f: f, idx: i, start: true}, action{at: f.At + f.For, f: f, idx: i})
	}
	slices.SortStableFunc(acts, func(a, b action) int { return int(a.at - b.at) })
	undo := map[int]bool{} // fault index -> was injected (so undo it)
	for _, a := range acts {
		if !r.sleepUntil(ctx, a.at) {
			return
		}
		if a.start {
			if err := r.apply(a.f, a.idx, true); err != nil {
				r.skip(a.f, err)
				continue
			}
			undo[a.idx] = true
			r.res.Injected[a.f.Class]++
			r.o.Logf("seed %d: at %6.2fs: %s", r.o.Plan.Seed, time.Since(r.began).Seconds(), a.f)
			continue
		}
		if undo[a.idx] {
			if err := r.apply(a.f, a.idx, false); err != nil {
				r.o.Logf("seed %d: undo %s: %v (the heal retries)", r.o.Plan.Seed, a.f, err)
			}
		}
	}
	r.sleepUntil(ctx, r.o.Plan.Duration)
}

func (r *run) skip(f Fault, err error) {
	r.res.Skipped[f.Class]++
	r.o.Logf("seed %d: skipped %s: %v", r.o.Plan.Seed, f, err)
	why := fmt.Sprintf("%s: %v", f.Class, err)
	if !slices.Contains(r.res.Why, why) {
		r.res.Why = append(r.res.Why, why)
	}
}

// sleepUntil waits until at after the write phase began, supervising the
// proxies meanwhile; false when ctx ended.
func (r *run) sleepUntil(ctx context.Context, at time.Duration) bool {
	for {
		r.supervise()
		left := time.Until(r.began.Add(at))
		if left <= 0 {
			return true
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(min(left, 250*time.Millisecond)):
		}
	}
}

// supervise restarts an mlproxy that exited without being told to, and
// records whether a fault on its own server explains the exit.
func (r *run) supervise() {
	for i, reg := range r.c.Regions {
		if r.state[i].proxyDown || !reg.ProxyExited() {
			continue
		}
		r.res.ProxyExits++
		explained := time.Now().Before(r.state[i].ownFaultUntil.Add(10 * time.Second))
		r.o.Logf("seed %d: mlproxy of region %s exited by itself (explained by a fault on its own server: %v); starting it again", r.o.Plan.Seed, reg.Name, explained)
		if !explained {
			r.res.problem("mlproxy of region %s exited by itself at %v with no fault on its own server to explain it; log tail:\n%s",
				reg.Name, time.Since(r.began).Round(time.Millisecond), cluster.Tail(reg.LogPath, 15))
		}
		_ = r.c.StopProxy(reg, true)
		r.state[i].proxyStarted = time.Now()
		if err := r.c.StartProxy(reg); err != nil {
			r.o.Logf("seed %d: restart mlproxy of region %s: %v", r.o.Plan.Seed, reg.Name, err)
		}
	}
}

// toxics are the toxics fault idx adds to its link.
func toxicsFor(f Fault, idx int) []Toxic {
	var typ string
	var attrs map[string]int64
	switch f.Class {
	case Latency:
		typ, attrs = "latency", map[string]int64{"latency": f.Param, "jitter": f.Param / 2}
	case Bandwidth:
		typ, attrs = "bandwidth", map[string]int64{"rate": f.Param}
	case ResetPeer:
		typ, attrs = "reset_peer", map[string]int64{"timeout": f.Param}
	case Timeout:
		typ, attrs = "timeout", map[string]int64{"timeout": f.Param + 1}
	case PartitionOneWay, PartitionTwoWay:
		typ = "hold"
	}
	streams := []string{"upstream", "downstream"}
	if f.Stream != "" {
		streams = []string{f.Stream}
	}
	var out []Toxic
	for _, s := range streams {
		out = append(out, Toxic{Name: fmt.Sprintf("f%d-%s", idx, s), Type: typ, Stream: s, Attrs: attrs})
	}
	return out
}

// apply starts (start) or undoes fault f.
func (r *run) apply(f Fault, idx int, start bool) error {
	reg := r.c.Regions[f.Region]
	st := &r.state[f.Region]
	if f.Class.Network() {
		link := LinkName(reg.Name, r.c.Regions[f.Peer].Name)
		if f.Peer == f.Region {
			st.ownFaultUntil = time.Now().Add(f.For)
		}
		for _, t := range toxicsFor(f, idx) {
			var err error
			if start {
				err = r.net.Add(link, t)
			} else {
				err = r.net.Remove(link, t.Name)
			}
			if err != nil {
				return err
			}
		}
		return nil
	}
	if f.Class == KillServer || f.Class == StopServer || f.Class == RestartServer {
		st.ownFaultUntil = time.Now().Add(f.For)
	}
	switch f.Class {
	case KillProxy, RestartProxy:
		if start {
			// A SIGTERM in the first instants after exec, before the Go
			// runtime has installed mlproxy's handler, kills any process;
			// that proves nothing, so give a just-started mlproxy a second.
			if wait := time.Second - time.Since(st.proxyStarted); f.Class == RestartProxy && wait > 0 {
				time.Sleep(wait)
			}
			st.proxyDown = true
			began := time.Now()
			err := r.c.StopProxy(reg, f.Class == KillProxy)
			if f.Class == RestartProxy {
				r.res.SlowestStop = max(r.res.SlowestStop, time.Since(began))
			}
			if f.Class == RestartProxy && err != nil {
				// SIGTERM is a clean stop: it must exit 0, in time.
				r.res.problem("graceful stop of mlproxy in region %s: %v; log tail:\n%s", reg.Name, err, cluster.Tail(reg.LogPath, 10))
			}
			return nil
		}
		// Started, not waited for: the writers find out when it serves
		// (its own server may be unreachable now); the heal waits.
		st.proxyDown = false
		st.proxyStarted = time.Now()
		return r.c.StartProxy(reg)
	case StopProxy:
		sig := syscall.SIGCONT
		if start {
			sig = syscall.SIGSTOP
		}
		st.proxyFrozen = start
		return r.c.Signal(reg, sig)
	case KillServer, RestartServer:
		if start {
			st.serverDown = true
			if f.Class == RestartServer {
				return reg.Server.Stop()
			}
			return reg.Server.Kill()
		}
		if err := reg.Server.Restart(); err != nil {
			return err
		}
		st.serverDown = false
		return nil
	case StopServer:
		sig := syscall.SIGCONT
		if start {
			sig = syscall.SIGSTOP
		}
		st.serverFrozen = start
		return reg.Server.Signal(sig)
	case ClockSkew:
		sk, ok := any(reg).(skewer)
		if !ok {
			return fmt.Errorf("cluster.Region has no SetClockOffset (the clock hook is not merged)")
		}
		st.skewed = start
		d := time.Duration(f.Param) * time.Millisecond
		if !start {
			d = 0
		}
		return sk.SetClockOffset(d)
	}
	return fmt.Errorf("unknown fault class %q", f.Class)
}

// heal removes every fault: toxics off, frozen processes continued,
// clocks set right, dead servers and proxies started; it waits until every
// proxy serves.
func (r *run) heal(ctx context.Context) error {
	r.net.Heal()
	for i, reg := range r.c.Regions {
		st := &r.state[i]
		if st.proxyFrozen {
			_ = r.c.Signal(reg, syscall.SIGCONT)
			st.proxyFrozen = false
		}
		if st.serverFrozen {
			_ = reg.Server.Signal(syscall.SIGCONT)
			st.serverFrozen = false
		}
		if sk, ok := any(reg).(skewer); ok && st.skewed {
			if err := sk.SetClockOffset(0); err != nil {
				return fmt.Errorf("heal: clock of region %s: %w", reg.Name, err)
			}
			st.skewed = false
		}
	}
	for i, reg := range r.c.Regions {
		st := &r.state[i]
		if st.serverDown || reg.Server.PID() == 0 || reg.Server.Exited() {
			if reg.Server.Exited() && !st.serverDown {
				r.res.problem("mariadbd of region %s exited by itself: %s", reg.Name, reg.Server.ErrorLogTail(10))
			}
			if err := reg.Server.Restart(); err != nil {
				return fmt.Errorf("heal: restart mariadbd of region %s: %w", reg.Name, err)
			}
			st.serverDown = false
		}
	}
	r.supervise()
	for i, reg := range r.c.Regions {
		st := &r.state[i]
		if st.proxyDown || reg.PID() == 0 {
			if err := r.c.StartProxy(reg); err != nil {
				return fmt.Errorf("heal: %w", err)
			}
			st.proxyDown = false
		}
	}
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	for _, reg := range r.c.Regions {
		if err := r.c.WaitProxy(wctx, reg); err != nil {
			return fmt.Errorf("heal: %w", err)
		}
	}
	return nil
}
