package main

import (
	"context"
	"database/sql"
	"encoding/json"
	"math"
	"reflect"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/mlproxy/mlproxy/binlog"
	"github.com/mlproxy/mlproxy/config"
	"github.com/mlproxy/mlproxy/redact"
)

// The status page's lag history: every lagEvery, each source peer's lag
// is measured the way `mlproxy status` measures it (the peer's GTID
// position against this region's checkpoint of it) and kept for the last
// hour, lagPoints samples per peer, in memory only.

const (
	lagEvery  = 10 * time.Second
	lagPoints = 360 // an hour at lagEvery
	// lagTimeout bounds one round: a peer that does not answer within it
	// gives no reading this round.
	lagTimeout = 5 * time.Second
	// lagFirst is when the first round runs: at start the links have not
	// read anything yet (every link would read as behind); within about a
	// second they have, and have committed a checkpoint.
	lagFirst = 2 * time.Second
)

// lagBehind is how far this region's checkpoint of a peer (applied: the
// GTID position; sourceTS: the source commit time, in Unix seconds, of
// the last transaction applied) is behind the peer's binlog (peerPos, in
// the peer's GTID domain): in transactions, and in seconds, now minus
// that commit time while behind and 0 when caught up. secsKnown is false
// when behind with no commit time to count from.
func lagBehind(peerPos string, domain uint32, applied string, sourceTS sql.NullFloat64, now time.Time) (txns int64, secs float64, secsKnown bool) {
	txns = binlog.SeqNo(peerPos, domain) - binlog.SeqNo(applied, domain)
	switch {
	case txns <= 0:
		return 0, 0, true
	case sourceTS.Valid:
		return txns, max(0, float64(now.UnixMicro())/1e6-sourceTS.Float64), true
	}
	return txns, 0, false
}

// lagReading is one measurement of a peer's lag. Secs is NaN and Txns -1
// when unknown; Err then says why (redacted).
type lagReading struct {
	At   time.Time
	Secs float64
	Txns int64
	Err  string
}

func (r lagReading) MarshalJSON() ([]byte, error) {
	v := struct {
		At   time.Time `json:"t"`
		Secs *float64  `json:"lag_s"`
		Txns *int64    `json:"lag_txns"`
		Err  string    `json:"error,omitempty"`
	}{At: r.At.UTC(), Err: r.Err}
	if !math.IsNaN(r.Secs) {
		v.Secs = &r.Secs
	}
	if r.Txns >= 0 {
		v.Txns = &r.Txns
	}
	return json.Marshal(v)
}

// lagRing holds a peer's last lagPoints readings, oldest first from next.
type lagRing struct {
	pts  [lagPoints]lagReading
	next int // where the next reading goes
	n    int // readings held
}

func (g *lagRing) add(r lagReading) {
	r.Err = "" // the ring keeps numbers; the last reading keeps its error
	g.pts[g.next] = r
	g.next = (g.next + 1) % lagPoints
	g.n = min(g.n+1, lagPoints)
}

// since returns the readings at or after from, oldest first.
func (g *lagRing) since(from time.Time) []lagReading {
	out := make([]lagReading, 0, g.n)
	for i := range g.n {
		r := g.pts[(g.next-g.n+i+lagPoints)%lagPoints]
		if !r.At.Before(from) {
			out = append(out, r)
		}
	}
	return out
}

// lagHistory is every source peer's lag over the last hour and its last
// reading, by peer name. Safe for concurrent use: the sampler writes, the
// page and /status/lag read.
type lagHistory struct {
	mu    sync.Mutex
	rings map[string]*lagRing
	last  map[string]lagReading
}

func newLagHistory() *lagHistory {
	return &lagHistory{rings: map[string]*lagRing{}, last: map[string]lagReading{}}
}

// record adds a round of readings; peers not in it (no longer sources)
// are forgotten.
func (h *lagHistory) record(round map[string]lagReading) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for name := range h.rings {
		if _, ok := round[name]; !ok {
			delete(h.rings, name)
			delete(h.last, name)
		}
	}
	for name, r := range round {
		g := h.rings[name]
		if g == nil {
			g = &lagRing{}
			h.rings[name] = g
		}
		g.add(r)
		h.last[name] = r
	}
}

// latest is the last reading of peer, false when there is none yet.
func (h *lagHistory) latest(peer string) (lagReading, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	r, ok := h.last[peer]
	return r, ok
}

// series is every peer's readings of the hour before now.
func (h *lagHistory) series(now time.Time) map[string][]lagReading {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make(map[string][]lagReading, len(h.rings))
	for name, g := range h.rings {
		out[name] = g.since(now.Add(-time.Hour))
	}
	return out
}

// lagSampler measures the lag of every source peer of the configuration
// in force, each lagEvery, into hist. It holds a one-connection pool per
// peer (the peer's server, with the replication account the config gives),
// reopened when a reload changes the peer's server.
type lagSampler struct {
	db   *sql.DB // the local server
	cfg  func() *config.Config
	open func(ctx context.Context, name string, s config.Server) (*sql.DB, error)
	hist *lagHistory
	log  *zap.Logger

	pools map[string]peerPool // only run's goroutine uses it
}

type peerPool struct {
	srv config.Server
	db  *sql.DB
}

// run measures lagFirst after it starts, then every lagEvery until ctx
// ends; it closes its pools before returning.
func (s *lagSampler) run(ctx context.Context) {
	s.pools = map[string]peerPool{}
	defer func() {
		for _, p := range s.pools {
			p.db.Close()
		}
	}()
	t := time.NewTimer(lagFirst)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		t.Reset(lagEvery)
		rctx, cancel := context.WithTimeout(ctx, lagTimeout)
		round := s.round(rctx)
		cancel()
		if ctx.Err() != nil {
			return
		}
		s.hist.record(round)
	}
}

// round measures every source peer once: one read of mlr.checkpoints,
// and each peer's GTID position read side by side.
func (s *lagSampler) round(ctx context.Context) map[string]lagReading {
	cfg := s.cfg()
	sources := cfg.Sources()
	for name, p := range s.pools { // peers no longer pulled from
		if !containsPeer(sources, name) {
			p.db.Close()
			delete(s.pools, name)
		}
	}
	type checkpoint struct {
		gtid string
		ts   sql.NullFloat64
	}
	cps := map[uint16]checkpoint{}
	var localErr error
	rows, err := s.db.QueryContext(ctx, "SELECT peer_id, gtid, UNIX_TIMESTAMP(source_ts) FROM mlr.checkpoints")
	if err == nil {
		for rows.Next() {
			var id uint16
			var cp checkpoint
			if err = rows.Scan(&id, &cp.gtid, &cp.ts); err != nil {
				break
			}
			cps[id] = cp
		}
		if err == nil {
			err = rows.Err()
		}
		rows.Close()
	}
	if err != nil {
		localErr = err
	}

	type result struct {
		reading lagReading
		pool    peerPool
	}
	results := make([]result, len(sources))
	var wg sync.WaitGroup
	for i, p := range sources {
		pool, ok := s.pools[p.Name]
		if ok && !reflect.DeepEqual(pool.srv, p.Server) { // a reload moved the peer
			pool.db.Close()
			delete(s.pools, p.Name)
			pool = peerPool{}
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := lagReading{Secs: math.NaN(), Txns: -1}
			defer func() { r.At = time.Now(); results[i].reading = r }()
			if pool.db == nil {
				db, err := s.open(ctx, "peer "+p.Name, p.Server)
				if err != nil {
					r.Err = redact.Error(err)
					return
				}
				db.SetMaxOpenConns(1)
				db.SetMaxIdleConns(1)
				pool = peerPool{srv: p.Server, db: db}
				results[i].pool = pool
			}
			var pos string
			var domain uint32
			if err := pool.db.QueryRowContext(ctx, "SELECT @@gtid_binlog_pos, @@gtid_domain_id").Scan(&pos, &domain); err != nil {
				r.Err = "peer " + p.Name + ": " + redact.Error(err)
				return
			}
			if localErr != nil {
				r.Err = "local server: reading mlr.checkpoints: " + redact.Error(localErr)
				return
			}
			cp, ok := cps[p.ID]
			if !ok {
				// Nothing applied yet: the link starts where the peer's
				// `schema apply` began (mlr.binlog_start), not at the
				// peer's first transaction.
				if err := pool.db.QueryRowContext(ctx, "SELECT gtid FROM mlr.binlog_start WHERE id = 1").Scan(&cp.gtid); err != nil {
					r.Err = "peer " + p.Name + ": reading mlr.binlog_start: " + redact.Error(err)
					return
				}
			}
			txns, secs, known := lagBehind(pos, domain, cp.gtid, cp.ts, time.Now())
			r.Txns = txns
			if known {
				r.Secs = secs
			}
		}()
	}
	wg.Wait()
	out := make(map[string]lagReading, len(sources))
	for i, p := range sources {
		if results[i].pool.db != nil {
			s.pools[p.Name] = results[i].pool
		}
		out[p.Name] = results[i].reading
	}
	if localErr != nil && ctx.Err() == nil {
		s.log.Debug("lag sample: mlr.checkpoints not read", redact.Err(localErr))
	}
	return out
}

func containsPeer(ps []config.Peer, name string) bool {
	for _, p := range ps {
		if p.Name == name {
			return true
		}
	}
	return false
}
