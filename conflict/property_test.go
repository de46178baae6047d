package conflict

import (
	"fmt"
	"math/rand"
	"reflect"
	"testing"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/hlc"
)

// The model: regions hold map[key]Version (rows and tombstones), make local
// writes with an HLC (past every stamp they have seen), and receive every
// other region's own changes in that region's order (per-source FIFO,
// all-to-all), interleaved at random with their own writes. Decisions are
// applied as the applier does.

type msg struct {
	key int
	ch  Change
}

type sim struct {
	r       *rand.Rand
	rule    Rule
	regions []*region
	queues  map[[2]int][]msg // [from, to]
	all     map[int][]Change // every change made, by key
	wall    int64
	t       *testing.T
	seed    int64
}

type region struct {
	id    uint16
	state map[int]Version
	last  hlc.Timestamp
	skew  int64
}

type histOpts struct {
	deletes bool
	// oneRound: every region writes each key at most once, before it
	// receives anything (all writes concurrent).
	oneRound bool
	// dir > 0: updates never decrease n; dir < 0: never increase (max and
	// min columns converge only for writes that move them that way).
	dir int
}

const nKeys = 3

func newSim(t *testing.T, seed int64, rule Rule, nRegions int) *sim {
	s := &sim{r: rand.New(rand.NewSource(seed)), rule: rule, queues: map[[2]int][]msg{}, all: map[int][]Change{}, wall: 1_000_000, t: t, seed: seed}
	for i := 0; i < nRegions; i++ {
		s.regions = append(s.regions, &region{id: uint16(i + 1), state: map[int]Version{}, skew: int64(s.r.Intn(40) - 20)})
	}
	// Key 0 starts with a row present everywhere; the others start absent.
	init := Version{Exists: true, Stamp: hlc.New(1000, 0), Origin: 9, Row: map[string]any{"v": int64(0), "n": int64(100)}}
	for _, rg := range s.regions {
		rg.state[0] = init
	}
	s.all[0] = append(s.all[0], Change{Op: binlog.Insert, Stamp: init.Stamp, Origin: init.Origin, Row: init.Row})
	return s
}

func (rg *region) stamp(wall int64) hlc.Timestamp {
	ts := max(hlc.New(wall+rg.skew, 0), rg.last+1)
	rg.last = ts
	return ts
}

// write makes a local write on key k at region i and sends it to all peers.
func (s *sim) write(i, k int, o histOpts) {
	rg := s.regions[i]
	local := rg.state[k]
	s.wall += int64(s.r.Intn(3))
	ch := Change{Stamp: rg.stamp(s.wall), Origin: rg.id}
	switch {
	case !local.Exists:
		ch.Op = binlog.Insert
		ch.Row = map[string]any{"v": int64(s.r.Intn(1000)), "n": int64(s.r.Intn(10))}
	case o.deletes && s.r.Intn(4) == 0:
		ch.Op, ch.Prev, ch.Before = binlog.Delete, local, local.Row
	default:
		ch.Op, ch.Prev, ch.Before = binlog.Update, local, local.Row
		d := int64(s.r.Intn(7) - 2)
		if o.dir != 0 {
			d = int64(o.dir * s.r.Intn(4))
		}
		ch.Row = map[string]any{"v": int64(s.r.Intn(1000)), "n": local.Row["n"].(int64) + d}
	}
	if ch.Op == binlog.Delete {
		rg.state[k] = Version{Deleted: true, Stamp: ch.Stamp, Origin: ch.Origin}
	} else {
		rg.state[k] = Version{Exists: true, Stamp: ch.Stamp, Origin: ch.Origin, Row: ch.Row}
	}
	s.all[k] = append(s.all[k], ch)
	for j := range s.regions {
		if j != i {
			s.queues[[2]int{i, j}] = append(s.queues[[2]int{i, j}], msg{k, ch})
		}
	}
}

// deliver applies the head of queue from->to.
func (s *sim) deliver(from, to int) (Version, Change, Decision) {
	q := s.queues[[2]int{from, to}]
	m := q[0]
	s.queues[[2]int{from, to}] = q[1:]
	rg := s.regions[to]
	rg.last = max(rg.last, m.ch.Stamp) // the applier's clock.Update
	local := rg.state[m.key]
	d := s.rule.Resolve(local, m.ch)
	switch d.Write.Action {
	case WriteRow:
		rg.state[m.key] = Version{Exists: true, Stamp: d.Write.Stamp, Origin: d.Write.Origin, Row: d.Write.Row}
	case WriteDelete:
		rg.state[m.key] = Version{Deleted: true, Stamp: d.Write.Stamp, Origin: d.Write.Origin}
	}
	return local, m.ch, d
}

func (s *sim) nonEmpty(to int) [][2]int {
	var qs [][2]int
	for f := range s.regions {
		if f != to && len(s.queues[[2]int{f, to}]) > 0 {
			qs = append(qs, [2]int{f, to})
		}
	}
	return qs
}

// run plays a random history and delivers everything; check sees every
// delivery.
func (s *sim) run(o histOpts, check func(local Version, ch Change, d Decision)) {
	if o.oneRound {
		for i := range s.regions {
			for k := 0; k < nKeys; k++ {
				if s.r.Intn(3) > 0 {
					s.write(i, k, o)
				}
			}
		}
	} else {
		for step := 0; step < 60; step++ {
			i := s.r.Intn(len(s.regions))
			if qs := s.nonEmpty(i); len(qs) > 0 && s.r.Intn(2) == 0 {
				q := qs[s.r.Intn(len(qs))]
				check(s.deliver(q[0], q[1]))
				continue
			}
			s.write(i, s.r.Intn(nKeys), o)
		}
	}
	for {
		var qs [][2]int
		for to := range s.regions {
			qs = append(qs, s.nonEmpty(to)...)
		}
		if len(qs) == 0 {
			return
		}
		q := qs[s.r.Intn(len(qs))]
		check(s.deliver(q[0], q[1]))
	}
}

// diverged describes the first key on which regions differ ("" if none).
func (s *sim) diverged() string {
	for k := 0; k < nKeys; k++ {
		a := s.regions[0].state[k]
		for _, rg := range s.regions[1:] {
			if b := rg.state[k]; !reflect.DeepEqual(a, b) {
				return fmt.Sprintf("key %d: region %d has %+v, region %d has %+v", k, s.regions[0].id, a, rg.id, b)
			}
		}
	}
	return ""
}

func mustRule(t *testing.T, cfg config.TableRule) Rule {
	t.Helper()
	r, err := NewRule(cfg, map[string]uint16{"r1": 1, "r2": 2, "r3": 3, "r4": 4})
	if err != nil {
		t.Fatal(err)
	}
	return r
}

const seeds = 3000

func TestPropertyConverges(t *testing.T) {
	cases := []struct {
		cfg  config.TableRule
		opts histOpts
	}{
		{config.TableRule{Rule: "lww"}, histOpts{deletes: true}},
		{config.TableRule{Rule: "counter", Columns: []string{"n"}}, histOpts{}},
		{config.TableRule{Rule: "max", Columns: []string{"n"}}, histOpts{dir: 1}},
		{config.TableRule{Rule: "min", Columns: []string{"n"}}, histOpts{dir: -1}},
		{config.TableRule{Rule: "first-writer-wins"}, histOpts{oneRound: true, deletes: true}},
		{config.TableRule{Rule: "origin-priority", Priority: []string{"r3", "r1"}}, histOpts{oneRound: true, deletes: true}},
	}
	for _, c := range cases {
		t.Run(fmt.Sprintf("%s/deletes=%v/oneRound=%v", c.cfg.Rule, c.opts.deletes, c.opts.oneRound), func(t *testing.T) {
			rule := mustRule(t, c.cfg)
			conflicts := 0
			defer func() {
				if conflicts == 0 && !t.Failed() {
					t.Error("no conflict in any history: the generator is too weak")
				}
			}()
			for seed := int64(1); seed <= seeds; seed++ {
				s := newSim(t, seed, rule, 3+int(seed%2))
				s.run(c.opts, func(_ Version, _ Change, d Decision) {
					if d.Conflict {
						conflicts++
					}
				})
				if msg := s.diverged(); msg != "" {
					t.Fatalf("seed %d (%d regions): regions differ: %s", seed, len(s.regions), msg)
				}
				switch c.cfg.Rule {
				case "lww":
					s.checkLWW()
				case "counter":
					s.checkCounter()
				case "max", "min":
					s.checkExtreme(c.opts.dir)
				}
			}
		})
	}
}

// checkLWW: every key ends as the change with the highest (stamp, origin),
// a row or, when that change is a delete, no row.
func (s *sim) checkLWW() {
	for k, chs := range s.all {
		best := chs[0]
		for _, ch := range chs[1:] {
			if newer(ch.Stamp, ch.Origin, best.Stamp, best.Origin) {
				best = ch
			}
		}
		got := s.regions[0].state[k]
		if got.Stamp != best.Stamp || got.Origin != best.Origin || got.Exists == (best.Op == binlog.Delete) ||
			(got.Exists && !reflect.DeepEqual(got.Row, best.Row)) {
			s.t.Fatalf("seed %d key %d: ended %+v, want the newest change %+v", s.seed, k, got, best)
		}
	}
}

// checkCounter: without deletes, every increment counts exactly once: n is
// the sum of all inserts' values and all updates' deltas.
func (s *sim) checkCounter() {
	for k, chs := range s.all {
		var want int64
		for _, ch := range chs {
			want += ch.Row["n"].(int64)
			if ch.Op == binlog.Update {
				want -= ch.Before["n"].(int64)
			}
		}
		if got := s.regions[0].state[k].Row["n"]; got != want {
			s.t.Fatalf("seed %d key %d: counter %v, want %d", s.seed, k, got, want)
		}
	}
}

// checkExtreme: n ends as the max (dir > 0) or min of every value written.
func (s *sim) checkExtreme(dir int) {
	for k, chs := range s.all {
		want := chs[0].Row["n"].(int64)
		for _, ch := range chs[1:] {
			if n := ch.Row["n"].(int64); (dir > 0 && n > want) || (dir < 0 && n < want) {
				want = n
			}
		}
		if got := s.regions[0].state[k].Row["n"]; got != want {
			s.t.Fatalf("seed %d key %d: n = %v, want %d", s.seed, k, got, want)
		}
	}
}

// TestPropertyManual: manual never changes the local version on a conflict
// and reports it Pending; non-conflicting changes still apply.
func TestPropertyManual(t *testing.T) {
	rule := mustRule(t, config.TableRule{Rule: "manual"})
	pending := 0
	for seed := int64(1); seed <= seeds; seed++ {
		s := newSim(t, seed, rule, 3+int(seed%2))
		s.run(histOpts{deletes: true}, func(local Version, ch Change, d Decision) {
			if d.Conflict {
				pending++
				if d.Outcome != Pending || d.Write.Action != Nothing {
					t.Fatalf("seed %d: conflict decided %+v, want pending and nothing written", seed, d)
				}
			}
		})
	}
	if pending == 0 {
		t.Fatal("no conflict in any history: the generator is too weak")
	}
}
