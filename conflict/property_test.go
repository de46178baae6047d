package conflict

import (
	"fmt"
	"math/rand"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/mlproxy/mlproxy/change"
	"github.com/mlproxy/mlproxy/hlc/stamp"
)

// The model. Regions hold map[key]Version (rows and tombstones) and make
// local writes the way the server-side triggers do (docs/internals.md):
// each new version is stamped above the version it replaces and past the
// region's clock, its vector is the replaced version's with the region's
// entry set to the new stamp, tombstones keep the merge columns' values,
// re-inserts inherit the tombstone's metadata, max/min columns are clamped.
// Versions travel as the topology makes them travel:
//
//   - all-to-all: every region's own writes go to every other region;
//   - star: spokes' writes go to the hub; every version the hub stores (its
//     own writes and what it applied) goes to every spoke;
//   - ring: every version a region stores goes to the next region.
//
// Delivery is either per-link FIFO (what a binlog gives) or any order at
// all. A received version is resolved against the local one and the
// decision applied as the applier does; the clock moves past its stamp.

type topology int

const (
	allToAll topology = iota
	star
	ring
)

func (t topology) String() string { return [...]string{"all-to-all", "star", "ring"}[t] }

type msg struct {
	from, to int
	key      int
	v        Version
}

type simRegion struct {
	id    uint16
	state map[int]Version
	last  stamp.Timestamp
	skew  int64
}

type sim struct {
	t      *testing.T
	r      *rand.Rand
	rule   Rule
	name   string
	topo   topology
	fifo   bool
	reg    []*simRegion
	queue  []msg
	wall   int64
	made   map[int][]Version // every version a local write made, per key
	incr   map[int]int64     // counter: sum of every increment, per key
	pend   map[int]bool      // manual: keys with a pending conflict somewhere
	prio   []uint16          // origin-priority: the ranked regions
	desc   string
	nApply int
}

const simKeys = 3

func newSim(t *testing.T, seed int64, rule Rule, n int, topo topology, fifo bool) *sim {
	s := &sim{t: t, r: rand.New(rand.NewSource(seed)), rule: rule, name: rule.Name(), topo: topo, fifo: fifo,
		wall: 1 << 20, made: map[int][]Version{}, incr: map[int]int64{}, pend: map[int]bool{}}
	if rule.Name() == "origin-priority" {
		s.prio = testPriority
	}
	s.desc = fmt.Sprintf("rule %s, %d regions, %s, fifo=%v, seed %d", rule.Name(), n, topo, fifo, seed)
	for i := 0; i < n; i++ {
		s.reg = append(s.reg, &simRegion{id: uint16(i + 1), state: map[int]Version{}, skew: int64(s.r.Intn(40) - 20)})
	}
	return s
}

func (s *sim) now(g *simRegion) stamp.Timestamp {
	s.wall += int64(s.r.Intn(3))
	ts := stamp.Timestamp(uint64(s.wall+g.skew) << 16)
	if ts <= g.last {
		ts = g.last + 1
	}
	g.last = ts
	return ts
}

func (s *sim) mergeCols() bool {
	return s.name == "counter" || s.name == "max" || s.name == "min"
}

// write makes one random local write at region i, as the triggers do.
func (s *sim) write(i int, deletes bool) {
	g := s.reg[i]
	k := s.r.Intn(simKeys)
	prev := g.state[k]
	var next Version
	stampAbove := func(floor stamp.Timestamp) stamp.Timestamp {
		// The triggers' floor: above the replaced version's stamp and
		// above this region's own entry in its vector.
		floor = max(floor, stamp.Timestamp(prev.vector()[g.id]))
		ts := s.now(g)
		if ts <= floor {
			ts = floor + 1
			g.last = ts
		}
		return ts
	}
	origin := change.Origin(g.id)
	meta := func(from Version, ts stamp.Timestamp) change.Meta {
		m := change.Meta{VV: from.vector().Clone(), Birth: from.Meta.Birth, Contrib: from.Meta.Contrib}
		if m.VV[g.id] >= uint64(ts) {
			panic("stamp not above the region's own entry")
		}
		if m.VV == nil {
			m.VV = change.Vector{}
		}
		m.VV[g.id] = uint64(ts)
		if s.name == "first-writer-wins" && m.Birth == (change.Birth{}) {
			if from.Absent() {
				m.Birth = change.Birth{Stamp: uint64(ts), Origin: origin}
			} else {
				m.Birth = from.birth()
			}
		}
		return m
	}
	val := func() int64 {
		if s.name == "counter" {
			return int64(s.r.Intn(16) - 5)
		}
		return int64(s.r.Intn(100))
	}
	switch {
	case prev.Exists && deletes && s.name != "counter" && s.r.Intn(4) == 0,
		prev.Exists && deletes && s.name == "counter" && s.r.Intn(8) == 0:
		ts := stampAbove(prev.Stamp)
		m := meta(prev, ts)
		if s.mergeCols() {
			m.Values = map[string]any{"n": prev.Row["n"]}
		}
		next = Version{Deleted: true, Stamp: ts, Origin: origin, Meta: m, Home: g.id}
	case prev.Exists: // update
		ts := stampAbove(prev.Stamp)
		row := copyRow(prev.Row)
		row["v"] = fmt.Sprintf("r%d@%d", g.id, ts)
		n := val()
		switch s.name {
		case "counter":
			row["n"] = sumInt(prev.Row["n"], n)
			s.incr[k] += n
		case "max":
			row["n"] = pickInt(n, prev.Row["n"], true)
		case "min":
			row["n"] = pickInt(n, prev.Row["n"], false)
		default:
			row["n"] = n
		}
		next = Version{Exists: true, Stamp: ts, Origin: origin, Row: row, Meta: meta(prev, ts), Home: g.id}
	default: // insert, on an absent key or over a tombstone
		ts := stampAbove(prev.Stamp)
		n := val()
		m := meta(prev, ts)
		m.Values = nil
		switch s.name {
		case "counter":
			s.incr[k] += n
			if prev.Deleted {
				// The re-insert sets the value: what the tombstone
				// held is gone.
				s.incr[k] -= tombTotal(prev)
			}
		case "max", "min":
			if t, ok := prev.Meta.Values["n"]; ok && prev.Deleted {
				n = pickInt(n, t, s.name == "max")
			}
		}
		row := map[string]any{"v": fmt.Sprintf("r%d@%d", g.id, ts), "n": n}
		next = Version{Exists: true, Stamp: ts, Origin: origin, Row: row, Meta: m, Home: g.id}
	}
	g.state[k] = next
	s.made[k] = append(s.made[k], next)
	s.publish(i, k, next, true)
}

// tombTotal is what a counter tombstone held: its value at deletion plus
// the concurrent increments merged into it since.
func tombTotal(v Version) int64 {
	total, _ := sumAll(contributions(v, "n"))
	return total
}

func sumAll(m map[uint16]any) (int64, bool) {
	var t int64
	for _, x := range m {
		n, ok := toNum(x)
		if !ok {
			return 0, false
		}
		t += n.r.Num().Int64() / max(1, n.r.Denom().Int64())
	}
	return t, true
}

func sumInt(a any, d int64) int64 {
	n, _ := toNum(a)
	return n.r.Num().Int64() + d
}

func pickInt(n int64, other any, isMax bool) int64 {
	o, ok := toNum(other)
	if !ok {
		return n
	}
	ov := o.r.Num().Int64()
	if (ov > n) == isMax && ov != n {
		return ov
	}
	return n
}

// publish queues the version region i now stores for the regions the
// topology sends it to. own is true for a local write.
func (s *sim) publish(i, key int, v Version, own bool) {
	n := len(s.reg)
	var to []int
	switch s.topo {
	case allToAll:
		if own {
			for j := range s.reg {
				if j != i {
					to = append(to, j)
				}
			}
		}
	case star: // region 0 is the hub
		if i == 0 {
			for j := 1; j < n; j++ {
				to = append(to, j)
			}
		} else if own {
			to = []int{0}
		}
	case ring:
		to = []int{(i + 1) % n}
	}
	for _, j := range to {
		s.queue = append(s.queue, msg{from: i, to: j, key: key, v: v})
	}
}

// deliver applies one queued message (the first of a random link when
// fifo, any one otherwise).
func (s *sim) deliver() bool {
	if len(s.queue) == 0 {
		return false
	}
	idx := s.r.Intn(len(s.queue))
	if s.fifo {
		// The oldest message of the chosen message's link.
		link := [2]int{s.queue[idx].from, s.queue[idx].to}
		for j, m := range s.queue {
			if m.from == link[0] && m.to == link[1] {
				idx = j
				break
			}
		}
	}
	m := s.queue[idx]
	s.queue = append(s.queue[:idx], s.queue[idx+1:]...)
	g := s.reg[m.to]
	local := g.state[m.key]
	local.Home = g.id
	d := s.rule.Resolve(local, m.v)
	s.nApply++
	if m.v.Stamp > g.last {
		g.last = m.v.Stamp
	}
	if d.Outcome == Pending {
		s.pend[m.key] = true
	}
	if d.Write.Action == Nothing {
		return true
	}
	nv := d.Write.Version(g.id)
	g.state[m.key] = nv
	s.publish(m.to, m.key, nv, false)
	return true
}

// run makes rounds of concurrent writes: in each round some regions write
// each key, and a random part of the traffic is delivered in between, so
// later writes build on some of the earlier ones and not on others.
func (s *sim) run(rounds int, deletes bool) {
	for r := 0; r < rounds; r++ {
		for w := s.r.Intn(3 * len(s.reg)); w >= 0; w-- {
			s.write(s.r.Intn(len(s.reg)), deletes)
			for d := s.r.Intn(4); d > 0; d-- {
				s.deliver()
			}
		}
	}
	for s.deliver() {
		if s.nApply > 1_000_000 {
			s.t.Fatalf("%s: delivery does not end (a loop)", s.desc)
		}
	}
}

// show renders a version for comparison: existence, user values, vector.
func show(v Version) string {
	switch {
	case v.Absent():
		return "absent"
	case v.Deleted:
		return fmt.Sprintf("deleted vv=%s", showVV(v.vector()))
	}
	keys := make([]string, 0, len(v.Row))
	for k := range v.Row {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s=%v ", k, numText(v.Row[k]))
	}
	return fmt.Sprintf("row %svv=%s", b.String(), showVV(v.vector()))
}

func numText(x any) string {
	if n, ok := toNum(x); ok && x != nil {
		return n.r.RatString()
	}
	return fmt.Sprint(x)
}

func showVV(vv change.Vector) string {
	return change.Meta{VV: vv}.Encode()
}

// expected is the version the rule's documented order names as the
// winner: among the versions no other version has seen (the maximal ones),
// the best by the rule's order.
func (s *sim) expected(k int) (Version, bool) {
	var top []Version
	all := s.made[k]
	for i, v := range all {
		dominated := false
		for j, w := range all {
			if i != j && v.vector().Compare(w.vector()) == change.Before {
				dominated = true
				break
			}
		}
		if !dominated {
			top = append(top, v)
		}
	}
	if len(top) == 0 {
		return Version{}, false
	}
	best := top[0]
	for _, v := range top[1:] {
		if documentedBeats(s.name, s.prio, v, best) {
			best = v
		}
	}
	return best, true
}

// documentedBeats is the rules table of the README, written here on its
// own (not the rule's code), so that a rule that converges on the wrong
// winner fails: lww, the higher (stamp, origin); first-writer-wins, the
// lineage born first (lower birth stamp, ties to the higher origin as in
// lww), within a lineage the later version; origin-priority, the vector
// ahead at the first entry that differs, taking the ranked regions in
// order and then the others by id, then lww.
func documentedBeats(rule string, prio []uint16, a, b Version) bool {
	lww := a.Stamp > b.Stamp || a.Stamp == b.Stamp && a.Origin > b.Origin
	switch rule {
	case "first-writer-wins":
		ba, bb := a.Meta.Birth, b.Meta.Birth
		if ba.Stamp != bb.Stamp {
			return ba.Stamp < bb.Stamp
		}
		if ba.Origin != bb.Origin {
			return ba.Origin > bb.Origin
		}
	case "origin-priority":
		va, vb := a.Meta.VV, b.Meta.VV
		order := slices.Clone(prio)
		var rest []uint16
		for id := range va {
			rest = append(rest, id)
		}
		for id := range vb {
			rest = append(rest, id)
		}
		slices.Sort(rest)
		for _, id := range slices.Compact(rest) {
			if !slices.Contains(prio, id) {
				order = append(order, id)
			}
		}
		for _, id := range order {
			if va[id] != vb[id] {
				return va[id] > vb[id]
			}
		}
	}
	return lww
}

func (s *sim) check() {
	s.t.Helper()
	for k := 0; k < simKeys; k++ {
		first := show(s.reg[0].state[k])
		for _, g := range s.reg[1:] {
			if got := show(g.state[k]); got != first && !(s.name == "manual" && s.pend[k]) {
				s.t.Fatalf("%s: key %d differs:\n  region 1: %s\n  region %d: %s", s.desc, k, first, g.id, got)
			}
		}
		if s.name == "manual" {
			continue
		}
		final := s.reg[0].state[k]
		switch s.name {
		case "lww", "first-writer-wins", "origin-priority":
			want, ok := s.expected(k)
			if ok && (want.Exists != final.Exists || (want.Exists && fmt.Sprint(want.Row["v"]) != fmt.Sprint(final.Row["v"]))) {
				s.t.Fatalf("%s: key %d: rule's order names %s, regions hold %s", s.desc, k, show(want), show(final))
			}
		case "counter":
			if final.Exists {
				if got := numText(final.Row["n"]); got != fmt.Sprint(s.incr[k]) {
					s.t.Fatalf("%s: key %d: counter %s, sum of increments %d", s.desc, k, got, s.incr[k])
				}
			}
		case "max", "min":
			var want int64
			seen := false
			for _, v := range s.made[k] {
				if !v.Exists {
					continue
				}
				n, _ := toNum(v.Row["n"])
				x := n.r.Num().Int64()
				if !seen || (x > want) == (s.name == "max") && x != want {
					want, seen = x, true
				}
			}
			if final.Exists && seen && numText(final.Row["n"]) != fmt.Sprint(want) {
				s.t.Fatalf("%s: key %d: %s column %s, want %d (every value written)", s.desc, k, s.name, numText(final.Row["n"]), want)
			}
		}
	}
}

func mustRule(t *testing.T, s Spec) Rule {
	t.Helper()
	r, err := NewRule(s)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// testPriority ranks the regions of the origin-priority runs.
var testPriority = []uint16{2, 1, 4}

func allRules(t *testing.T) []Rule {
	return []Rule{
		mustRule(t, Spec{Name: "lww"}),
		mustRule(t, Spec{Name: "first-writer-wins"}),
		mustRule(t, Spec{Name: "origin-priority", Priority: testPriority}),
		mustRule(t, Spec{Name: "counter", Columns: []string{"n"}}),
		mustRule(t, Spec{Name: "max", Columns: []string{"n"}}),
		mustRule(t, Spec{Name: "min", Columns: []string{"n"}}),
		mustRule(t, Spec{Name: "manual"}),
	}
}

// TestPropertyConverges: random multi-round histories at 3 and 5 regions,
// with deletes and without, in every topology and delivery discipline: all
// regions end identical, and with the value the rule names.
func TestPropertyConverges(t *testing.T) {
	seeds := 150
	if testing.Short() {
		seeds = 30
	}
	for _, rule := range allRules(t) {
		for _, n := range []int{3, 5} {
			for _, topo := range []topology{allToAll, star, ring} {
				for _, fifo := range []bool{true, false} {
					for _, deletes := range []bool{false, true} {
						for seed := int64(1); seed <= int64(seeds); seed++ {
							s := newSim(t, seed*7919+int64(n), rule, n, topo, fifo)
							s.desc += fmt.Sprintf(", deletes=%v", deletes)
							s.run(4+s.r.Intn(6), deletes)
							if deletes && (rule.Name() == "max" || rule.Name() == "min") {
								// Values across a delete are not "every value
								// written"; convergence is still checked.
								s.made = map[int][]Version{}
							}
							if deletes && rule.Name() == "counter" {
								s.checkConverged()
								continue
							}
							s.check()
						}
					}
				}
			}
		}
	}
}

func (s *sim) checkConverged() {
	s.t.Helper()
	for k := 0; k < simKeys; k++ {
		first := show(s.reg[0].state[k])
		for _, g := range s.reg[1:] {
			if got := show(g.state[k]); got != first {
				s.t.Fatalf("%s: key %d differs:\n  region 1: %s\n  region %d: %s", s.desc, k, first, g.id, got)
			}
		}
	}
}
