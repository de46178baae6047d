package home

import (
	"strconv"
	"strings"
	"testing"

	"github.com/mlproxy/mlproxy/config"
)

func deployment(names ...string) *config.Config {
	cfg := &config.Config{Region: config.Region{Name: names[0], ID: 1}}
	for i, n := range names[1:] {
		cfg.Peers = append(cfg.Peers, config.Peer{Name: n, ID: uint16(i + 2), Proxy: n + ".example:6033"})
	}
	return cfg
}

func i64(n int64) *int64 { return &n }

func mustNew(t *testing.T, h config.Home, cfg *config.Config) *Map {
	t.Helper()
	m, err := New("t", h, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func TestListRangesAndValues(t *testing.T) {
	m := mustNew(t, config.Home{Column: "user_id", List: []config.HomeEntry{
		{Region: "us", From: i64(1), To: i64(1000)},
		{Region: "eu", From: i64(1001), To: i64(2000)},
		{Region: "ap", Values: []string{"7", "vip"}}, // after the ranges: 7 stays us
	}}, deployment("us", "eu", "ap"))
	for key, want := range map[string]uint16{
		"1": 1, "1000": 1, "1001": 2, "2000": 2, "2001": 0, "0": 0, "-5": 0,
		"7": 1, "vip": 3, "VIP": 0, "+5": 0, " 5": 0, "5.0": 0, "": 0,
		"1234567890123456789": 0, // 19 digits: outside every range, in SQL too
	} {
		if got := m.Of(key); got != want {
			t.Errorf("Of(%q) = %d, want %d", key, got, want)
		}
	}
}

func TestPrefixesLongestFirst(t *testing.T) {
	m := mustNew(t, config.Home{Column: "geohash", Prefixes: []config.HomeEntry{
		{Region: "eu", Prefix: "u"},
		{Region: "us", Prefix: "u4"}, // longer: wins over "u"
		{Region: "ap", Prefix: "w"},
	}}, deployment("us", "eu", "ap"))
	for key, want := range map[string]uint16{"u33d": 2, "u4pr": 1, "w21z": 3, "9q8y": 0, "U33d": 0, "": 0} {
		if got := m.Of(key); got != want {
			t.Errorf("Of(%q) = %d, want %d", key, got, want)
		}
	}
}

// TestHashRingIsConsistent checks what consistent hashing promises: every
// region gets a fair share, and adding a region moves keys only to it.
func TestHashRingIsConsistent(t *testing.T) {
	three := mustNew(t, config.Home{Column: "id", Hash: []string{"us", "eu", "ap"}}, deployment("us", "eu", "ap", "sa"))
	four := mustNew(t, config.Home{Column: "id", Hash: []string{"us", "eu", "ap", "sa"}}, deployment("us", "eu", "ap", "sa"))
	const n = 60000
	share := map[uint16]int{}
	for i := range n {
		key := strconv.Itoa(i)
		before, after := three.Of(key), four.Of(key)
		if before == 0 || after == 0 {
			t.Fatalf("key %s has no home on a hash ring", key)
		}
		if before != after && after != 4 {
			t.Fatalf("adding region sa moved key %s from %d to %d, not to sa", key, before, after)
		}
		share[after]++
	}
	for id := uint16(1); id <= 4; id++ {
		if f := float64(share[id]) / n; f < 0.15 || f > 0.35 {
			t.Errorf("region %d homes %.2f of the keys; want near 0.25", id, f)
		}
	}
}

func TestRefusalNamesRegionAndProxyNotKey(t *testing.T) {
	m := mustNew(t, config.Home{Column: "user_id", List: []config.HomeEntry{{Region: "eu", Values: []string{"42"}}}}, deployment("us", "eu"))
	msg := m.Refusal("app", "users", m.Of("42"))
	for _, want := range []string{"app.users", "user_id", "region eu", "eu.example:6033"} {
		if !strings.Contains(msg, want) {
			t.Errorf("refusal %q does not name %q", msg, want)
		}
	}
	if strings.Contains(msg, "42") {
		t.Errorf("refusal %q quotes the key", msg)
	}
}

func TestLeaderHomesEveryKey(t *testing.T) {
	m := mustNew(t, config.Home{Leader: "eu", Elsewhere: config.HomeReject, Unknown: config.HomeReject}, deployment("us", "eu"))
	for _, key := range []string{"1", "", "anything"} {
		if got := m.Of(key); got != 2 {
			t.Errorf("Of(%q) = %d, want the leader 2", key, got)
		}
	}
	if m.SQL("NEW.`id`") != "2" {
		t.Errorf("SQL = %q, want the leader's id", m.SQL("NEW.`id`"))
	}
	msg := m.Refusal("app", "ledger", 2)
	for _, want := range []string{"app.ledger is a strong table", "leader region eu", "eu.example:6033"} {
		if !strings.Contains(msg, want) {
			t.Errorf("refusal %q does not say %q", msg, want)
		}
	}
}
