// Package causal gives sessions that move between regions read-your-writes
// and monotonic reads: a token names, per origin region, a position in
// that region's binlog; a region has applied everything a token covers
// once, for every origin, its checkpoint of that origin's binlog (or, for
// itself, its own binlog) is at or past the token's position.
//
// Stamps cannot serve: they do not follow commit order. Binlog positions
// do, and MariaDB's GTIDs order them per domain (each region's server has
// its own gtid_domain_id), so a position is a sequence number per domain.
//
// A token is taken in a region (Take): its own binlog position and its
// checkpoint of every peer, read after the session's writes committed. So
// it covers everything that region held then: the session's writes and
// every version it could have read. Presented in another region (Wait), the
// next read waits until that region holds as much.
//
// Tokens need the all-to-all topology: a region compares a token's entry
// for an origin with its checkpoint of that origin's own binlog, which it
// has only when it pulls from that origin directly.
package causal

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"
)

// Token is, per origin region id, a position in that region's binlog: the
// highest sequence number per GTID domain. Entry ByDomain names positions
// by domain alone (a bare GTID such as @@last_gtid): covered once any of
// the region's binlog positions (its own, its checkpoints) reaches them.
type Token map[uint16]Position

// ByDomain is the Token entry of positions given without their region.
const ByDomain uint16 = 0

// Position is a MariaDB GTID position as sequence numbers by domain.
type Position map[uint32]uint64

// prefix starts every token's text (its format's version).
const prefix = "mlr1:"

// ParsePosition reads a MariaDB GTID position ("d-s-n,d-s-n", empty for
// none): per domain, the highest sequence number.
func ParsePosition(s string) (Position, error) {
	p := Position{}
	for _, g := range strings.Split(s, ",") {
		g = strings.TrimSpace(g)
		if g == "" {
			continue
		}
		parts := strings.Split(g, "-")
		if len(parts) != 3 {
			return nil, fmt.Errorf("GTID %q: want domain-server-sequence", g)
		}
		d, err1 := strconv.ParseUint(parts[0], 10, 32)
		_, err2 := strconv.ParseUint(parts[1], 10, 32)
		n, err3 := strconv.ParseUint(parts[2], 10, 64)
		if err := errors.Join(err1, err2, err3); err != nil {
			return nil, fmt.Errorf("GTID %q: %w", g, err)
		}
		p[uint32(d)] = max(p[uint32(d)], n)
	}
	return p, nil
}

// Covers reports whether p is at or past q in every domain of q.
func (p Position) Covers(q Position) bool {
	for d, n := range q {
		if p[d] < n {
			return false
		}
	}
	return true
}

func (p Position) String() string {
	ds := make([]uint32, 0, len(p))
	for d := range p {
		ds = append(ds, d)
	}
	slices.Sort(ds)
	parts := make([]string, len(ds))
	for i, d := range ds {
		parts[i] = fmt.Sprintf("%d-%d", d, p[d])
	}
	return strings.Join(parts, ",")
}

// String is the token as clients carry it: "mlr1:" then, per region,
// "id=domain-seq,domain-seq", regions separated by ";".
func (t Token) String() string {
	ids := make([]uint16, 0, len(t))
	for id := range t {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	parts := make([]string, 0, len(ids))
	for _, id := range ids {
		if len(t[id]) > 0 {
			parts = append(parts, fmt.Sprintf("%d=%s", id, t[id]))
		}
	}
	return prefix + strings.Join(parts, ";")
}

// Parse reads a token's text (String's format). An error says what is
// wrong without echoing more than the token's start.
func Parse(s string) (Token, error) {
	rest, ok := strings.CutPrefix(strings.TrimSpace(s), prefix)
	if !ok {
		// A bare GTID position: what the server puts in the OK packet
		// (session_track_system_variables = 'last_gtid') or @@last_gtid.
		if p, err := ParsePosition(s); err == nil && len(p) > 0 {
			return Token{ByDomain: p}, nil
		}
		return nil, fmt.Errorf("not an mlproxy causal token (SELECT mlr_token() gives one, starting %q) nor a GTID position such as @@last_gtid", prefix)
	}
	t := Token{}
	for _, part := range strings.Split(rest, ";") {
		if part == "" {
			continue
		}
		id, pos, ok := strings.Cut(part, "=")
		if !ok {
			return nil, errors.New("malformed causal token: want region=domain-seq entries")
		}
		n, err := strconv.ParseUint(id, 10, 16)
		if err != nil {
			return nil, fmt.Errorf("malformed causal token: region id %.20q", id)
		}
		p := Position{}
		for _, ds := range strings.Split(pos, ",") {
			d, seq, ok := strings.Cut(ds, "-")
			dn, err1 := strconv.ParseUint(d, 10, 32)
			sn, err2 := strconv.ParseUint(seq, 10, 64)
			if !ok || err1 != nil || err2 != nil {
				return nil, fmt.Errorf("malformed causal token: position %.40q", pos)
			}
			p[uint32(dn)] = max(p[uint32(dn)], sn)
		}
		t[uint16(n)] = p
	}
	return t, nil
}

// Take reads the token of the region whose server db is: self's own binlog
// position, and its checkpoint of every peer (mlr.checkpoints).
func Take(ctx context.Context, db *sql.DB, self uint16) (Token, error) {
	p, err := ownPosition(ctx, db)
	if err != nil {
		return nil, err
	}
	t := Token{self: p}
	applied, err := checkpoints(ctx, db)
	if err != nil {
		return nil, err
	}
	for id, p := range applied {
		if id != self {
			t[id] = p
		}
	}
	return t, nil
}

func checkpoints(ctx context.Context, db *sql.DB) (map[uint16]Position, error) {
	rows, err := db.QueryContext(ctx, "SELECT peer_id, COALESCE(gtid, '') FROM mlr.checkpoints")
	if err != nil {
		return nil, fmt.Errorf("read this region's checkpoints: %w", err)
	}
	defer rows.Close()
	out := map[uint16]Position{}
	for rows.Next() {
		var id uint16
		var g string
		if err := rows.Scan(&id, &g); err != nil {
			return nil, err
		}
		p, err := ParsePosition(g)
		if err != nil {
			continue // a MySQL GTID set: tokens are MariaDB's
		}
		out[id] = p
	}
	return out, rows.Err()
}

// Behind is a wait that ended before the region held what a token covers.
type Behind struct {
	// Origin is the first region whose changes are missing, Have how far
	// this region applied its binlog, Want the token's position.
	Origin     uint16
	OriginName string // the origin's name, when the caller knows it
	Domain     bool   // a bare GTID position: Have and Want name a domain
	Have, Want Position
	Waited     time.Duration
	Err        error // the context's, or reading the checkpoints'
}

func (b *Behind) Error() string {
	if b.Domain {
		return fmt.Sprintf("waited %s for GTID domain changes up to %s (applied here: %s)", b.Waited.Round(time.Millisecond), b.Want, orNone(b.Have))
	}
	if b.Origin == 0 {
		return fmt.Sprintf("waited %s without reading this region's checkpoints: %v", b.Waited.Round(time.Millisecond), b.Err)
	}
	name := fmt.Sprint(b.Origin)
	if b.OriginName != "" {
		name = fmt.Sprintf("%s (id %d)", b.OriginName, b.Origin)
	}
	return fmt.Sprintf("waited %s for region %s's changes up to %s (applied here: %s)", b.Waited.Round(time.Millisecond), name, b.Want, orNone(b.Have))
}

func (b *Behind) Unwrap() error { return b.Err }

func orNone(p Position) string {
	if len(p) == 0 {
		return "none"
	}
	return p.String()
}

// PollEvery is how often Wait reads the checkpoints again.
const PollEvery = 10 * time.Millisecond

// Wait returns once the region whose server db is (self) has applied
// everything t covers, or a *Behind when ctx ends first. The token's entry
// for self needs no wait: its own writes are its own.
func Wait(ctx context.Context, db *sql.DB, self uint16, t Token) error {
	start := time.Now()
	tick := time.NewTicker(PollEvery)
	defer tick.Stop()
	var last *Behind // what was missing at the last read of the checkpoints
	var lastErr error
	for {
		applied, err := checkpoints(ctx, db)
		if err == nil && len(t[ByDomain]) > 0 {
			applied[self], err = ownPosition(ctx, db)
		}
		if err == nil {
			last = nil
			for _, id := range sortedIDs(t) {
				if id == ByDomain {
					if d, ok := uncovered(applied, t[id]); !ok {
						last = &Behind{Have: d.have, Want: d.want, Domain: true}
						break
					}
					continue
				}
				if id != self && !applied[id].Covers(t[id]) {
					last = &Behind{Origin: id, Have: applied[id], Want: t[id]}
					break
				}
			}
			if last == nil {
				return nil
			}
		} else if last == nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			if last == nil {
				last = &Behind{Err: lastErr}
			}
			if last.Err == nil {
				last.Err = ctx.Err()
			}
			last.Waited = time.Since(start)
			return last
		case <-tick.C:
		}
	}
}

// ownPosition is the region's own binlog position.
func ownPosition(ctx context.Context, db *sql.DB) (Position, error) {
	var own string
	if err := db.QueryRowContext(ctx, "SELECT @@global.gtid_binlog_pos").Scan(&own); err != nil {
		return nil, fmt.Errorf("read this region's binlog position: %w", err)
	}
	return ParsePosition(own)
}

type domainGap struct{ have, want Position }

// uncovered checks positions by domain against every position applied
// holds: ok when each domain's sequence is reached by one of them.
func uncovered(applied map[uint16]Position, want Position) (domainGap, bool) {
	for d, n := range want {
		best := uint64(0)
		for _, p := range applied {
			best = max(best, p[d])
		}
		if best < n {
			return domainGap{have: Position{d: best}, want: Position{d: n}}, false
		}
	}
	return domainGap{}, true
}

func sortedIDs(t Token) []uint16 {
	ids := make([]uint16, 0, len(t))
	for id := range t {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}
