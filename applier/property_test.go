package applier

import (
	"database/sql"
	"fmt"
	"math/rand"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/change"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/conflict"
	"github.com/mlproxy/mlproxy/hlc"
	"github.com/mlproxy/mlproxy/schema"
)

// TestPropertyApplierMatchesRule: virtual regions 2..n write concurrently
// (as the triggers would) and exchange their versions; every version any
// of them stores (own writes and merges, as a star hub or ring forwards
// them) is also sent to the real region, in random order, in random
// transaction sizes and batch sizes. The real applier (set-based batches,
// several changes to a key in one statement, tombstones, metadata) must
// leave exactly what the pure rule leaves in a model of the same region
// fed the same versions in the same order.
func TestPropertyApplierMatchesRule(t *testing.T) {
	rules := []config.TableRule{
		{Table: "items", Rule: "lww"},
		{Table: "items", Rule: "first-writer-wins"},
		{Table: "items", Rule: "origin-priority", Priority: []string{"r3", "r2"}},
		{Table: "items", Rule: "counter", Columns: []string{"qty"}},
		{Table: "items", Rule: "max", Columns: []string{"qty"}},
		{Table: "items", Rule: "min", Columns: []string{"qty"}},
	}
	ids := map[string]uint16{"r1": 1, "r2": 2, "r3": 3, "r4": 4, "r5": 5}
	for i, cfg := range rules {
		for _, n := range []int{3, 5} {
			for _, workers := range []int{1, 4} {
				seed := int64(1000*i + n)
				t.Run(fmt.Sprintf("%s/%d/workers%d", cfg.Rule, n, workers), func(t *testing.T) {
					e := newEnvRule(t, fmt.Sprintf("t_prop_%d_%d_%d", i, n, workers), cfg)
					e.workers = workers
					e.tables = NewTables(db, []config.TableRule{withSchema(cfg, e.db)}, ids)
					spec, err := RuleSpec(withSchema(cfg, e.db), ids)
					require.NoError(t, err)
					rule, err := conflict.NewRule(spec)
					require.NoError(t, err)
					m := newModel(rand.New(rand.NewSource(seed)), rule, n)
					m.run(40)
					// Deliver to the real region and to its model twin.
					twin := map[int64]conflict.Version{}
					var txns []*binlog.Txn
					for seq := uint64(1); len(m.out) > 0; seq++ {
						k := 1 + m.r.Intn(4)
						src := m.out[0].from
						var chs []binlog.RowChange
						for j := 0; j < k && len(m.out) > 0; j++ {
							// Any message next, as long as a transaction holds
							// one source's versions.
							idx := m.r.Intn(len(m.out))
							if m.out[idx].from != src {
								continue
							}
							msg := m.out[idx]
							m.out = append(m.out[:idx], m.out[idx+1:]...)
							loc := twin[msg.key]
							loc.Home = self
							if d := rule.Resolve(loc, msg.v); d.Write.Action != conflict.Nothing {
								twin[msg.key] = d.Write.Version(self)
							}
							chs = append(chs, m.rowChange(e.db, msg))
						}
						if len(chs) == 0 {
							continue
						}
						tx := e.txn(seq, chs...)
						tx.Source = src
						txns = append(txns, tx)
					}
					batch := 1
					switch {
					case workers > 1:
						batch = 2
					case seed%2 == 0:
						batch = 64
					}
					e.runAll(batch, txns...)
					for key := int64(0); key < propKeys; key++ {
						want := twin[key]
						got := e.version(key)
						require.Equal(t, showVersion(want), showVersion(got), "key %d (rule %s, %d regions, seed %d)", key, cfg.Rule, n, seed)
					}
				})
			}
		}
	}
}

func withSchema(r config.TableRule, db string) config.TableRule { r.Schema = db; return r }

const propKeys = 3

type propMsg struct {
	from uint16
	key  int64
	v    conflict.Version
}

// model is a set of virtual regions making writes the way the triggers do
// and exchanging versions all-to-all; every version they store is queued
// for the region under test.
type model struct {
	r     *rand.Rand
	rule  conflict.Rule
	name  string
	state map[uint16]map[int64]conflict.Version
	clock map[uint16]hlc.Timestamp
	wall  int64
	peers []uint16
	inbox []propMsg // between virtual regions
	out   []propMsg // to the region under test
}

func newModel(r *rand.Rand, rule conflict.Rule, n int) *model {
	m := &model{r: r, rule: rule, name: rule.Name(), state: map[uint16]map[int64]conflict.Version{},
		clock: map[uint16]hlc.Timestamp{}, wall: base}
	for id := uint16(2); id <= uint16(n); id++ {
		m.peers = append(m.peers, id)
		m.state[id] = map[int64]conflict.Version{}
	}
	return m
}

func (m *model) run(writes int) {
	for i := 0; i < writes; i++ {
		m.write(m.peers[m.r.Intn(len(m.peers))])
		for d := m.r.Intn(3); d > 0 && len(m.inbox) > 0; d-- {
			m.deliver()
		}
	}
	for len(m.inbox) > 0 {
		m.deliver()
	}
}

func (m *model) deliver() {
	idx := m.r.Intn(len(m.inbox))
	msg := m.inbox[idx]
	m.inbox = append(m.inbox[:idx], m.inbox[idx+1:]...)
	loc := m.state[msg.from][msg.key] // msg.from is the receiver here
	loc.Home = msg.from
	d := m.rule.Resolve(loc, msg.v)
	if d.Write.Action == conflict.Nothing {
		return
	}
	nv := d.Write.Version(msg.from)
	m.state[msg.from][msg.key] = nv
	m.out = append(m.out, propMsg{from: msg.from, key: msg.key, v: nv})
}

// write is one local write at region id, as the triggers make it.
func (m *model) write(id uint16) {
	k := int64(m.r.Intn(propKeys))
	prev := m.state[id][k]
	m.wall += int64(m.r.Intn(3))
	ts := hlc.New(m.wall, 0)
	floor := max(prev.Stamp, hlc.Timestamp(prev.Meta.VV[id]), m.clock[id])
	if ts <= floor {
		ts = floor + 1
	}
	m.clock[id] = ts
	vv := change.Vector{}
	for r, s := range prev.Meta.VV {
		vv[r] = s
	}
	if !prev.Absent() && vv[prev.Origin.Region()] < uint64(prev.Stamp) {
		vv[prev.Origin.Region()] = uint64(prev.Stamp)
	}
	vv[id] = uint64(ts)
	meta := change.Meta{VV: vv, Birth: prev.Meta.Birth, Contrib: prev.Meta.Contrib}
	if m.name == "first-writer-wins" && meta.Birth == (change.Birth{}) {
		meta.Birth = change.Birth{Stamp: uint64(ts), Origin: change.Origin(id)}
	}
	qty := int64(m.r.Intn(50))
	old, _ := prev.Row["qty"].(int64)
	var next conflict.Version
	switch {
	case prev.Exists && m.r.Intn(5) == 0 && m.name != "counter":
		meta.Values = map[string]any{"qty": old}
		next = conflict.Version{Deleted: true, Stamp: ts, Origin: change.Origin(id), Meta: meta, Home: id}
	default:
		switch m.name {
		case "counter":
			if prev.Exists {
				qty = old + int64(m.r.Intn(11)-5)
			}
		case "max":
			if prev.Exists && old > qty {
				qty = old
			}
		case "min":
			if prev.Exists && old < qty {
				qty = old
			}
		}
		if prev.Deleted && (m.name == "max" || m.name == "min") {
			if t, ok := prev.Meta.Values["qty"].(int64); ok && (t > qty) == (m.name == "max") {
				qty = t
			}
		}
		row := map[string]any{"id": k, "name": fmt.Sprintf("r%d-%d", id, ts), "qty": qty}
		next = conflict.Version{Exists: true, Stamp: ts, Origin: change.Origin(id), Row: row, Meta: meta, Home: id}
	}
	m.state[id][k] = next
	m.out = append(m.out, propMsg{from: id, key: k, v: next})
	for _, p := range m.peers {
		if p != id {
			m.inbox = append(m.inbox, propMsg{from: p, key: k, v: next})
		}
	}
}

// rowChange is how msg's version arrives in a binlog from its region.
func (m *model) rowChange(db string, msg propMsg) binlog.RowChange {
	v := msg.v
	rc := binlog.RowChange{Schema: db, Table: "items", Stamp: uint64(v.Stamp), Origin: v.Origin, Meta: v.Meta.Encode(),
		Before: binlog.Row{"id": msg.key, "name": "?", "qty": int64(0), "_mlr_hlc": uint64(0), "_mlr_origin": int64(0)}}
	switch {
	case v.Deleted:
		rc.Op = binlog.Delete
	case m.r.Intn(2) == 0:
		rc.Op, rc.Before = binlog.Insert, nil
	default:
		rc.Op = binlog.Update
	}
	if v.Exists {
		rc.After = binlog.Row{"id": msg.key, "name": v.Row["name"], "qty": v.Row["qty"],
			"_mlr_hlc": uint64(v.Stamp), "_mlr_origin": int64(v.Origin), "_mlr_vv": rc.Meta}
	}
	return rc
}

// version reads key's local version (row, else tombstone) with metadata.
func (e *env) version(key int64) conflict.Version {
	e.t.Helper()
	var name string
	var qty int64
	var h, o uint64
	var vv sql.NullString
	err := db.QueryRow("SELECT name, qty, _mlr_hlc, _mlr_origin, _mlr_vv FROM "+schema.Quote(e.db)+".items WHERE id = ?", key).
		Scan(&name, &qty, &h, &o, &vv)
	if err == nil {
		meta, err := change.ParseMeta(vv.String)
		require.NoError(e.t, err)
		return conflict.Version{Exists: true, Stamp: hlc.Timestamp(h), Origin: change.Origin(o), Meta: meta,
			Row: map[string]any{"id": key, "name": name, "qty": qty}, Home: self}
	}
	require.ErrorIs(e.t, err, sql.ErrNoRows)
	err = db.QueryRow("SELECT _mlr_hlc, _mlr_origin, _mlr_vv FROM mlr."+schema.Quote(schema.TombstoneTable(e.db, "items"))+" WHERE id = ?", key).
		Scan(&h, &o, &vv)
	if err == sql.ErrNoRows {
		return conflict.Version{Home: self}
	}
	require.NoError(e.t, err)
	meta, err := change.ParseMeta(vv.String)
	require.NoError(e.t, err)
	return conflict.Version{Deleted: true, Stamp: hlc.Timestamp(h), Origin: change.Origin(o), Meta: meta, Home: self}
}

// showVersion renders what must match: existence, user values, stamp,
// origin and metadata (canonically encoded; numbers as text).
func showVersion(v conflict.Version) string {
	switch {
	case v.Exists:
		return fmt.Sprintf("row name=%v qty=%v stamp=%d origin=%d meta=%s", v.Row["name"], v.Row["qty"], v.Stamp, v.Origin, canonical(v.Meta))
	case v.Deleted:
		return fmt.Sprintf("deleted stamp=%d origin=%d meta=%s", v.Stamp, v.Origin, canonical(v.Meta))
	}
	return "absent"
}

func canonical(m change.Meta) string {
	back, err := change.ParseMeta(m.Encode())
	if err != nil {
		return "bad: " + err.Error()
	}
	for c, vs := range back.Values {
		back.Values[c] = fmt.Sprint(vs)
	}
	return back.Encode()
}
