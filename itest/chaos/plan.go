// Package chaos is mlproxy's fault-injection proof: three local regions
// take concurrent writes through their proxies while a seed-driven plan
// injects network faults (an in-process toxiproxy on every link), process
// faults (SIGKILL, SIGSTOP/SIGCONT, graceful restarts of mlproxy and
// mariadbd) and clock skew; then everything is healed and the data is
// checked: every acknowledged write present or superseded as its rule
// says, nothing applied twice, regions identical, no replication loop, no
// unexplained error in the logs. TestChaos runs it (`make chaos`).
package chaos

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"strings"
	"time"
)

// Class is a kind of fault.
type Class string

// The fault classes a plan draws from.
const (
	Latency         Class = "latency"          // delay (with jitter) on a link
	Bandwidth       Class = "bandwidth"        // a link limited to a few KB/s
	ResetPeer       Class = "reset_peer"       // connections reset (RST) after a few ms
	Timeout         Class = "timeout"          // data dropped, connection closed after a timeout
	PartitionOneWay Class = "partition_oneway" // one direction of a link held
	PartitionTwoWay Class = "partition_twoway" // both directions held
	KillProxy       Class = "sigkill_mlproxy"  // SIGKILL mlproxy, start it again later
	StopProxy       Class = "sigstop_mlproxy"  // SIGSTOP mlproxy, SIGCONT later
	RestartProxy    Class = "restart_mlproxy"  // SIGTERM mlproxy, wait for exit, start it
	KillServer      Class = "sigkill_mariadbd" // SIGKILL mariadbd, restart it later
	StopServer      Class = "sigstop_mariadbd" // SIGSTOP mariadbd, SIGCONT later
	RestartServer   Class = "restart_mariadbd" // SIGTERM mariadbd (clean shutdown), start it later
	ClockSkew       Class = "clock_skew"       // one region's wall clock off, within or beyond max_offset
)

// Classes lists every class in a fixed order (summaries print in it).
var Classes = []Class{Latency, Bandwidth, ResetPeer, Timeout, PartitionOneWay, PartitionTwoWay,
	KillProxy, StopProxy, RestartProxy, KillServer, StopServer, RestartServer, ClockSkew}

// Network reports whether c acts on a link (the fault layer).
func (c Class) Network() bool {
	switch c {
	case Latency, Bandwidth, ResetPeer, Timeout, PartitionOneWay, PartitionTwoWay:
		return true
	}
	return false
}

// Process reports whether c acts on a process.
func (c Class) Process() bool { return !c.Network() && c != ClockSkew }

// Fault is one planned fault: it starts At after the write phase began
// and is undone For later (a kill is followed by a start, a stop by a
// continue, a toxic is removed, the clock set back).
type Fault struct {
	At, For time.Duration
	Class   Class
	// Region is the index of the region acted on; for a link fault the
	// region whose connections cross it, and Peer the index of the region
	// whose server it reaches (Peer == Region: its own server).
	Region, Peer int
	// Stream is the direction of a one-way toxic: upstream (towards the
	// server) or downstream.
	Stream string
	// Param: latency ms, bandwidth KB/s, reset or timeout ms, clock skew ms.
	Param int64
}

func (f Fault) String() string {
	s := fmt.Sprintf("%6.2fs +%5.2fs %-17s region %d", f.At.Seconds(), f.For.Seconds(), f.Class, f.Region)
	if f.Class.Network() {
		s += fmt.Sprintf(" -> server %d", f.Peer)
		if f.Stream != "" {
			s += " " + f.Stream
		}
	}
	if f.Param != 0 {
		s += fmt.Sprintf(" param %d", f.Param)
	}
	return s
}

// Plan is a schedule's faults, ordered by start.
type Plan struct {
	Seed     uint64
	Duration time.Duration
	Regions  int
	Faults   []Fault
}

func (p Plan) String() string {
	var b strings.Builder
	fmt.Fprintf(&b, "plan seed %d, %v, %d regions, %d faults:\n", p.Seed, p.Duration, p.Regions, len(p.Faults))
	for _, f := range p.Faults {
		b.WriteString("  " + f.String() + "\n")
	}
	return b.String()
}

// clockSkews are the skews (ms) a ClockSkew fault picks from: within the
// default max_offset of 500ms, beyond it, and behind.
var clockSkews = []int64{200, 400, 800, 1500, 3000, -1000}

// NewPlan draws a plan from seed alone: the same seed, duration, region
// count and classes give the same plan. Faults start within the first 85%
// of the duration; every class in classes appears once before any appears
// twice (so a plan of at least len(classes) faults covers them all).
// Process faults and clock skews never overlap each other (at most one
// process is down or frozen at a time); link faults overlap freely.
func NewPlan(seed uint64, d time.Duration, regions int, classes []Class) Plan {
	rng := rand.New(rand.NewPCG(seed, 0x6d6c70726f7879))
	p := Plan{Seed: seed, Duration: d, Regions: regions}
	n := max(int(d/(1500*time.Millisecond)), 3)
	span := d * 85 / 100
	maxFor := min(max(d/4, time.Second), 8*time.Second)
	var order []Class
	for len(order) < n {
		perm := slices.Clone(classes)
		rng.Shuffle(len(perm), func(i, j int) { perm[i], perm[j] = perm[j], perm[i] })
		order = append(order, perm...)
	}
	order = order[:n]
	var exclusive []Fault // process faults and skews placed so far
	for _, c := range order {
		f := Fault{Class: c, Region: rng.IntN(regions)}
		f.At = time.Duration(rng.Int64N(int64(span)))
		f.For = time.Second/2 + time.Duration(rng.Int64N(int64(maxFor-time.Second/2)))
		switch c {
		case Latency:
			f.Param = 50 + rng.Int64N(700)
		case Bandwidth:
			f.Param = 1 + rng.Int64N(16)
		case ResetPeer, Timeout:
			f.Param = rng.Int64N(500)
		case RestartProxy:
			f.For = time.Duration(rng.Int64N(int64(time.Second)))
		case ClockSkew:
			f.Param = clockSkews[rng.IntN(len(clockSkews))]
		}
		if c.Network() {
			f.Peer = rng.IntN(regions)
			if c == PartitionOneWay || rng.IntN(3) == 0 {
				f.Stream = []string{"upstream", "downstream"}[rng.IntN(2)]
			}
			if c == PartitionTwoWay || c == ResetPeer {
				f.Stream = "" // both directions
			}
		} else {
			// Serialise: try a few starts that overlap no earlier process
			// fault or skew (with a second between), else drop the fault.
			placed := false
			for try := 0; try < 10 && !placed; try++ {
				if try > 0 {
					f.At = time.Duration(rng.Int64N(int64(span)))
				}
				placed = true
				for _, e := range exclusive {
					if f.At < e.At+e.For+time.Second && e.At < f.At+f.For+time.Second {
						placed = false
						break
					}
				}
			}
			if !placed {
				continue
			}
			exclusive = append(exclusive, f)
		}
		p.Faults = append(p.Faults, f)
	}
	slices.SortStableFunc(p.Faults, func(a, b Fault) int { return int(a.At - b.At) })
	return p
}
