// Package home decides which region a row's key belongs to (its home
// region, configured per table: config.Home). The same mapping exists twice,
// kept in step by tests against a real server: in Go, for the proxy, which
// refuses a write homed elsewhere before it reaches the server, and as a
// SQL expression, for the triggers, which refuse the writes the proxy
// cannot see (inside procedures, around the proxy).
//
// A key is compared as text: an integer as its decimal digits, a string as
// its bytes (UTF-8: the proxy refuses client character sets it cannot
// read). A key the mapping does not cover has no home (region 0).
package home

import (
	"fmt"
	"hash/crc32"
	"slices"
	"strconv"
	"strings"

	"github.com/mlproxy/mlproxy/config"
)

// VirtualNodes is the number of points each region has on a hash ring:
// with 64, each region's share stays within a few percent of 1/n.
const VirtualNodes = 64

// Map is one table rule's home mapping. It is immutable.
type Map struct {
	// Label names the mapping in metrics: the config entry it comes from
	// ("shop.*", "shop.users"), never a name a client chose.
	Label string
	// Column holds the key.
	Column string
	// Elsewhere and Unknown are the policies (config.HomeReject, ...).
	Elsewhere, Unknown string

	strong   bool    // a strong table: every key is homed at leader
	leader   uint16  // a strong table's leader; 0 while it moves (no region writes)
	list     []entry // in order; the first covering entry wins
	ring     []point // sorted by hash
	prefixes []entry // longest first
	names    map[uint16]string
	proxies  map[uint16]string
}

type entry struct {
	region   uint16
	ranged   bool
	from, to int64
	values   []string
	prefix   string
}

type point struct {
	hash   uint32
	region uint16
}

// New builds the mapping h of the table entry label in the deployment cfg describes
// (region names and ids, peers' proxy addresses). cfg is validated, so
// every region h names is known.
func New(label string, h config.Home, cfg *config.Config) (*Map, error) {
	ids := cfg.RegionIDs()
	m := &Map{Label: label, Column: h.Column, Elsewhere: h.Elsewhere, Unknown: h.Unknown,
		names: map[uint16]string{}, proxies: map[uint16]string{}}
	for name, id := range ids {
		m.names[id] = name
	}
	for _, p := range cfg.Peers {
		m.proxies[p.ID] = p.Proxy
	}
	id := func(name string) (uint16, error) {
		i, ok := ids[name]
		if !ok {
			return 0, fmt.Errorf("home: unknown region %q", name)
		}
		return i, nil
	}
	if h.Leader != "" {
		r, err := id(h.Leader)
		if err != nil {
			return nil, err
		}
		m.strong, m.leader = true, r
		return m, nil
	}
	for _, e := range h.List {
		r, err := id(e.Region)
		if err != nil {
			return nil, err
		}
		en := entry{region: r, values: e.Values}
		if e.From != nil && e.To != nil {
			en.ranged, en.from, en.to = true, *e.From, *e.To
		}
		m.list = append(m.list, en)
	}
	for _, name := range h.Hash {
		r, err := id(name)
		if err != nil {
			return nil, err
		}
		for i := range VirtualNodes {
			m.ring = append(m.ring, point{crc32.ChecksumIEEE([]byte(name + "#" + strconv.Itoa(i))), r})
		}
	}
	slices.SortFunc(m.ring, func(a, b point) int {
		if a.hash != b.hash {
			return int(int64(a.hash) - int64(b.hash))
		}
		return int(a.region) - int(b.region)
	})
	// Two regions' points on one hash (rare): the lower id keeps it, in Go
	// and in SQL alike.
	m.ring = slices.CompactFunc(m.ring, func(a, b point) bool { return a.hash == b.hash })
	for _, e := range h.Prefixes {
		r, err := id(e.Region)
		if err != nil {
			return nil, err
		}
		m.prefixes = append(m.prefixes, entry{region: r, prefix: e.Prefix})
	}
	slices.SortStableFunc(m.prefixes, func(a, b entry) int { return len(b.prefix) - len(a.prefix) })
	return m, nil
}

// Of returns the region that homes key (its text), or 0 when the mapping
// does not cover it.
func (m *Map) Of(key string) uint16 {
	switch {
	case m.strong:
		return m.leader
	case m.list != nil:
		n, isInt := integer(key)
		for _, e := range m.list {
			if e.ranged {
				if isInt && n >= e.from && n <= e.to {
					return e.region
				}
			} else if slices.Contains(e.values, key) {
				return e.region
			}
		}
	case m.ring != nil:
		h := crc32.ChecksumIEEE([]byte(key))
		i, _ := slices.BinarySearchFunc(m.ring, h, func(p point, h uint32) int {
			switch {
			case p.hash < h:
				return -1
			case p.hash > h:
				return 1
			}
			return 0
		})
		return m.ring[i%len(m.ring)].region
	case m.prefixes != nil:
		for _, e := range m.prefixes {
			if strings.HasPrefix(key, e.prefix) {
				return e.region
			}
		}
	}
	return 0
}

// integer reads key as a range compares it: an optional minus sign and 1
// to 18 digits (so that it fits a signed BIGINT in the server too); any
// other text is outside every range.
func integer(key string) (int64, bool) {
	digits := strings.TrimPrefix(key, "-")
	if len(digits) == 0 || len(digits) > 18 || strings.Trim(digits, "0123456789") != "" {
		return 0, false
	}
	n, err := strconv.ParseInt(key, 10, 64)
	return n, err == nil
}

// Regions lists every region's id, in increasing order.
func (m *Map) Regions() []uint16 {
	ids := make([]uint16, 0, len(m.names))
	for id := range m.names {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// Strong reports whether m is a strong table's: every key homed at Leader.
func (m *Map) Strong() bool { return m.strong }

// Leader is a strong table's leader (0 while it moves: no region writes
// it).
func (m *Map) Leader() uint16 { return m.leader }

// WithLeader is a strong table's mapping with another leader (0: none,
// while `mlproxy strong move` moves it).
func (m *Map) WithLeader(id uint16) *Map {
	c := *m
	c.leader = id
	return &c
}

// Proxy is region id's proxy address, as the config gives it ("" if none).
func (m *Map) Proxy(id uint16) string { return m.proxies[id] }

// Name is region id's name ("" for 0).
func (m *Map) Name(id uint16) string { return m.names[id] }

// Refusal is the error a client gets (after "mlproxy: ") for a write to schema.table for a
// key homed in region id: it names the region and, when the config gives
// it, that region's proxy, so an application or a load balancer can send
// the write there. It never quotes the key.
func (m *Map) Refusal(schema, table string, id uint16) string {
	if m.strong && id == 0 {
		return fmt.Sprintf("%s.%s is a strong table whose leader is moving (mlproxy strong move): no region writes it until the move ends; retry", schema, table)
	}
	if m.strong {
		msg := fmt.Sprintf("%s.%s is a strong table: only its leader region %s writes it", schema, table, m.names[id])
		if p := m.proxies[id]; p != "" {
			msg += " (proxy " + p + ")"
		}
		return msg + "; send the write there"
	}
	msg := fmt.Sprintf("this write is for a key of %s.%s (column %s) homed in region %s", schema, table, m.Column, m.names[id])
	if p := m.proxies[id]; p != "" {
		msg += " (proxy " + p + ")"
	}
	return msg + "; send it there"
}

// SQL is an expression that computes, in the server, the region that homes
// the key expr evaluates to (0: none), exactly as Of does.
func (m *Map) SQL(expr string) string {
	bin := "CAST(" + expr + " AS BINARY)"
	var b strings.Builder
	switch {
	case m.strong:
		return fmt.Sprint(m.leader)
	case m.list != nil:
		b.WriteString("CASE")
		for _, e := range m.list {
			if e.ranged {
				// Compared as integers when expr is a string column too.
				fmt.Fprintf(&b, " WHEN %s REGEXP '^-?[0-9]{1,18}$' AND CAST(%s AS SIGNED) BETWEEN %d AND %d THEN %d",
					bin, expr, e.from, e.to, e.region)
				continue
			}
			hexes := make([]string, len(e.values))
			for i, v := range e.values {
				hexes[i] = hexLiteral(v)
			}
			fmt.Fprintf(&b, " WHEN %s IN (%s) THEN %d", bin, strings.Join(hexes, ", "), e.region)
		}
		b.WriteString(" ELSE 0 END")
	case m.ring != nil:
		ringSQL(&b, "CRC32("+bin+")", m.ring, 0, len(m.ring))
	case m.prefixes != nil:
		b.WriteString("CASE")
		for _, e := range m.prefixes {
			fmt.Fprintf(&b, " WHEN LEFT(%s, %d) = %s THEN %d", bin, len(e.prefix), hexLiteral(e.prefix), e.region)
		}
		b.WriteString(" ELSE 0 END")
	default:
		return "0"
	}
	return "IF(" + expr + " IS NULL, 0, " + b.String() + ")"
}

// ringSQL writes a binary search over ring[lo:hi] (hi == len(ring) means
// past the last point, which wraps to the first): the region of the first
// point at or above h.
func ringSQL(b *strings.Builder, h string, ring []point, lo, hi int) {
	if lo == hi {
		fmt.Fprint(b, ring[lo%len(ring)].region)
		return
	}
	mid := (lo + hi) / 2
	fmt.Fprintf(b, "IF(%s <= %d, ", h, ring[mid].hash)
	ringSQL(b, h, ring, lo, mid)
	b.WriteString(", ")
	ringSQL(b, h, ring, mid+1, hi)
	b.WriteString(")")
}

// hexLiteral is s as a binary string literal: no character set, no
// escaping.
func hexLiteral(s string) string {
	if s == "" {
		return "''"
	}
	return fmt.Sprintf("X'%x'", s)
}
