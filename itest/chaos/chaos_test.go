package chaos

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/go-sql-driver/mysql"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// Flags (`make chaos` passes them after -args). The defaults are what
// `make test` runs: two short schedules.
var (
	schedules = flag.Int("schedules", 2, "schedules to run")
	seedFlag  = flag.Uint64("seed", 0, "seed of the first schedule (schedule i uses seed+i); 0 = from the time")
	duration  = flag.Duration("duration", 8*time.Second, "write phase of each schedule, with faults")
	regions   = flag.Int("regions", 3, "regions per cluster (2 to 5)")
	workers   = flag.Int("workers", 2, "writers per region")
	summary   = flag.String("summary", "", "also write the markdown summary to this file")
)

func TestMain(m *testing.M) {
	flag.Parse()
	// The driver's own lines about connections the faults cut are noise
	// here; what the clients saw is in the ledger.
	_ = mysql.SetLogger(log.New(io.Discard, "", 0))
	if _, err := cluster.Build(); err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	cluster.Cleanup()
	os.Exit(code)
}

// TestChaos runs the schedules, prints the summary, and fails with every
// failing seed and how to replay it.
func TestChaos(t *testing.T) {
	if *regions < 2 || *regions > 5 {
		t.Fatalf("-regions %d: want 2 to 5", *regions)
	}
	base := *seedFlag
	if base == 0 {
		base = uint64(time.Now().UnixNano()%1_000_000_000) + 1
	}
	bin, err := cluster.Build()
	if err != nil {
		t.Fatal(err)
	}
	// An interrupt (or SIGTERM) cancels the schedule in progress, which
	// then stops what it started and removes its directories.
	sigCtx, stopSignals := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stopSignals()
	sum := &Summary{Duration: *duration}
	for i := 0; i < *schedules; i++ {
		seed := base + uint64(i)
		// A schedule needs its write phase plus a few minutes at most
		// (start, heal, convergence, checks); one that cannot finish
		// before go test's -timeout is not started, since the timeout's
		// panic would leave the servers' directories behind.
		need := *duration + 4*time.Minute
		if dl, ok := t.Deadline(); ok && time.Until(dl) < need {
			t.Errorf("stopping after %d of %d schedules: less than %v left before -timeout", i, *schedules, need)
			break
		}
		if sigCtx.Err() != nil {
			t.Errorf("interrupted after %d of %d schedules", i, *schedules)
			break
		}
		plan := NewPlan(seed, *duration, *regions, Classes)
		t.Logf("schedule %d/%d: %s", i+1, *schedules, plan)
		ctx, cancel := context.WithTimeout(sigCtx, need)
		res, err := Run(ctx, Options{Plan: plan, Bin: bin, Workers: *workers, Logf: t.Logf})
		cancel()
		if err != nil {
			// The harness failed (a cluster that did not start, writers
			// that could not open): a failed schedule all the same.
			res.problem("harness: %v", err)
		}
		sum.Add(res)
		if len(res.Problems) > 0 {
			t.Errorf("seed %d failed %d checks (replay: %s):\n  %s",
				seed, len(res.Problems), replay(seed), strings.Join(res.Problems, "\n  "))
		}
	}
	md := sum.Markdown()
	fmt.Println(md)
	if *summary != "" {
		if err := os.WriteFile(*summary, []byte(md), 0o644); err != nil {
			t.Error(err)
		}
	}
}

// replay is the command that runs schedule seed again.
func replay(seed uint64) string {
	cmd := fmt.Sprintf("make chaos SEED=%d SCHEDULES=1 DURATION=%v", seed, *duration)
	var args []string
	if *regions != 3 {
		args = append(args, fmt.Sprintf("-regions %d", *regions))
	}
	if *workers != 2 {
		args = append(args, fmt.Sprintf("-workers %d", *workers))
	}
	if len(args) > 0 {
		cmd += fmt.Sprintf(" CHAOS_ARGS='%s'", strings.Join(args, " "))
	}
	return cmd
}

// TestPlanDeterministic: a seed alone decides the plan, and a long plan
// covers every fault class with exclusive faults never overlapping.
func TestPlanDeterministic(t *testing.T) {
	a := NewPlan(42, 30*time.Second, 3, Classes)
	b := NewPlan(42, 30*time.Second, 3, Classes)
	if a.String() != b.String() {
		t.Fatalf("same seed, different plans:\n%s\n%s", a, b)
	}
	if c := NewPlan(43, 30*time.Second, 3, Classes); c.String() == a.String() {
		t.Fatalf("seeds 42 and 43 gave the same plan")
	}
	for seed := uint64(1); seed < 200; seed++ {
		p := NewPlan(seed, 30*time.Second, 3, Classes)
		seen := map[Class]bool{}
		var excl []Fault
		for _, f := range p.Faults {
			seen[f.Class] = true
			if f.At < 0 || f.At+f.For > p.Duration+8*time.Second || f.For <= 0 && f.Class != RestartProxy {
				t.Fatalf("seed %d: fault out of range: %s", seed, f)
			}
			if f.Class.Network() {
				continue
			}
			for _, e := range excl {
				if f.At < e.At+e.For && e.At < f.At+f.For {
					t.Fatalf("seed %d: process faults overlap: %s and %s", seed, e, f)
				}
			}
			excl = append(excl, f)
		}
		if network := len(p.Faults) - len(excl); network < 6 {
			t.Fatalf("seed %d: only %d link faults in 30s:\n%s", seed, network, p)
		}
		for _, c := range Classes {
			if c.Network() && !seen[c] {
				t.Fatalf("seed %d: no %s fault in a 30s plan:\n%s", seed, c, p)
			}
		}
	}
}
