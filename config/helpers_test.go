package config

import (
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

func TestTableRuleExactBeatsWildcard(t *testing.T) {
	c := &Config{Tables: []TableRule{
		{Schema: "shop", Table: "*", Rule: RuleLWW},
		{Schema: "shop", Table: "stock", Rule: RuleCounter, Columns: []string{"qty"}},
		{Schema: "crm", Table: "people", Rule: RuleManual},
	}}
	r, ok := c.TableRule("shop", "stock")
	require.True(t, ok)
	assert.Equal(t, RuleCounter, r.Rule, "exact entry wins even though the wildcard comes first")
	r, ok = c.TableRule("shop", "orders")
	require.True(t, ok)
	assert.Equal(t, RuleLWW, r.Rule)
	r, ok = c.TableRule("crm", "people")
	require.True(t, ok)
	assert.Equal(t, RuleManual, r.Rule)
	_, ok = c.TableRule("crm", "leads")
	assert.False(t, ok, "no wildcard for crm")
	_, ok = c.TableRule("Shop", "stock")
	assert.False(t, ok, "names compare case-sensitively")
}

func TestRegionIDs(t *testing.T) {
	c := &Config{Region: Region{Name: "eu", ID: 1}, Peers: []Peer{{Name: "us", ID: 2}, {Name: "ap", ID: 3}}}
	assert.Equal(t, map[string]uint16{"eu": 1, "us": 2, "ap": 3}, c.RegionIDs())
}

func peerNames(ps []Peer) []string {
	var out []string
	for _, p := range ps {
		out = append(out, p.Name)
	}
	return out
}

func TestSources(t *testing.T) {
	peers := []Peer{{Name: "us", ID: 2}, {Name: "ap", ID: 3}, {Name: "sa", ID: 5}}
	cases := []struct {
		self Region
		topo Topology
		want []string
	}{
		{Region{"eu", 1}, Topology{Mode: TopologyAllToAll}, []string{"us", "ap", "sa"}},
		{Region{"eu", 1}, Topology{Mode: TopologyStar, Hub: "eu"}, []string{"us", "ap", "sa"}},
		{Region{"eu", 1}, Topology{Mode: TopologyStar, Hub: "ap"}, []string{"ap"}},
		{Region{"eu", 1}, Topology{Mode: TopologyRing}, []string{"sa"}}, // lowest wraps to highest
		{Region{"eu", 4}, Topology{Mode: TopologyRing}, []string{"ap"}},
		{Region{"eu", 9}, Topology{Mode: TopologyRing}, []string{"sa"}},
	}
	for _, tc := range cases {
		c := &Config{Region: tc.self, Peers: peers, Topology: tc.topo}
		assert.Equal(t, tc.want, peerNames(c.Sources()), "%+v %+v", tc.self, tc.topo)
	}
}

func TestStarSpokeNeedsOnlyTheHubsServer(t *testing.T) {
	doc := base + `  - name: ap
    id: 3
topology:
  mode: star
  hub: us
`
	c, err := Parse("region.yaml", []byte(doc))
	require.NoError(t, err)
	assert.Equal(t, []string{"us"}, peerNames(c.Sources()))

	// As hub, eu pulls from ap too, so ap's server becomes required.
	_, err = Parse("region.yaml", []byte(strings.Replace(doc, "hub: us", "hub: eu", 1)))
	require.Error(t, err)
	assert.Equal(t, "region.yaml:20: peers[1].server.addr: required: the MySQL/MariaDB server as host:port\n"+
		"region.yaml:20: peers[1].server.user: required: the MySQL user mlproxy connects as", err.Error())
}

func TestAnchorsAndAliases(t *testing.T) {
	doc := edit("      user: repl\n", "      user: &repl repl\n") + `  - name: ap
    id: 3
    server:
      addr: db.ap:3306
      insecure: true
      user: *repl
`
	c, err := Parse("region.yaml", []byte(doc))
	require.NoError(t, err)
	assert.Equal(t, "repl", c.Peers[1].Server.User)
	assert.Equal(t, 20, c.Peers[1].Line)
}

func TestHomeAndShadow(t *testing.T) {
	doc := edit("    table: \"*\"\n", `    table: "*"
    shadow:
      rule: first-writer-wins
    home:
      column: user_id
      list:
        - {region: eu, from: 1, to: 1000}
        - {region: us, values: [vip, "7"]}
`)
	c, err := Parse("region.yaml", []byte(doc))
	require.NoError(t, err)
	h := c.Tables[0].Home
	require.NotNil(t, h)
	assert.Equal(t, HomeReject, h.Elsewhere, "a write homed elsewhere is refused by default")
	assert.Equal(t, HomeAllow, h.Unknown, "a write whose keys the proxy cannot tell goes on to the triggers by default")
	assert.Equal(t, []string{"vip", "7"}, h.List[1].Values)
	assert.Equal(t, int64(1000), *h.List[0].To)
	assert.Equal(t, RuleFirstWriterWins, c.Tables[0].Shadow.Rule)

	cases := []struct{ old, new, want string }{
		{"      column: user_id\n", "", "region.yaml:15: tables[0].home.column: required"},
		{"        - {region: eu, from: 1, to: 1000}\n", "        - {region: mars, from: 1, to: 1000}\n", "region.yaml:18: tables[0].home.list[0].region: unknown region \"mars\" (known: eu, us)"},
		{"from: 1, to: 1000", "from: 9, to: 1", "region.yaml:18: tables[0].home.list[0].to: range ends (1) before it starts (9)"},
		{"from: 1, to: 1000", "from: 1", "region.yaml:18: tables[0].home.list[0]: a range needs both from and to"},
		{"      list:\n", "      hash: [eu, us]\n      list:\n", "region.yaml:15: tables[0].home: needs exactly one of list, hash and prefixes"},
		{"      column: user_id\n", "      column: user_id\n      elsewhere: forward\n", "region.yaml:17: proxy.forward.tls: required by tables[0].home.elsewhere: forwarded sessions carry the client's account"},
		{"      rule: first-writer-wins\n", "      rule: max\n", "region.yaml:14: tables[0].shadow.columns: required by rule max"},
		{"      rule: first-writer-wins\n", "      rule: counter\n      columns: [n]\n", "region.yaml:14: tables[0].shadow.rule: counter can shadow only a counter table"},
		{"      rule: first-writer-wins\n", "      rule: newest\n", "region.yaml:14: tables[0].shadow.rule: unknown rule \"newest\""},
	}
	strong := "    table: \"*\"\n    consistency: strong\n    leader: us\n"
	c, err = Parse("region.yaml", []byte(edit("    table: \"*\"\n", strong)))
	require.NoError(t, err)
	_, err = Parse("region.yaml", []byte(edit("    table: \"*\"\n", strong+"    standby: [eu, us, mars]\n")))
	require.Error(t, err)
	assert.Equal(t, "region.yaml:15: tables[0].standby[1]: \"us\" is the leader\n"+
		"region.yaml:15: tables[0].standby[2]: unknown region \"mars\" (known: eu, us)", err.Error())
	require.Equal(t, &Home{Leader: "us", Elsewhere: HomeReject, Unknown: HomeReject}, c.Tables[0].Homing())
	cases = append(cases,
		struct{ old, new, want string }{"    shadow:\n", "    consistency: strong\n    shadow:\n", "region.yaml:13: tables[0].leader: required by consistency: strong"},
		struct{ old, new, want string }{"    shadow:\n", "    consistency: strong\n    leader: mars\n    shadow:\n", "region.yaml:14: tables[0].leader: unknown region \"mars\""},
		struct{ old, new, want string }{"    shadow:\n", "    consistency: linearizable\n    shadow:\n", "region.yaml:13: tables[0].consistency: unknown value"},
		struct{ old, new, want string }{"    shadow:\n", "    leader: us\n    shadow:\n", "region.yaml:13: tables[0].leader: only used by consistency: strong"},
		struct{ old, new, want string }{"    shadow:\n", "    standby: [us]\n    shadow:\n", "region.yaml:13: tables[0].standby: only used by consistency: strong"},
	)
	for _, tc := range cases {
		if !strings.Contains(doc, tc.old) {
			t.Fatalf("case %q: not in the document", tc.old)
		}
		_, err := Parse("region.yaml", []byte(strings.Replace(doc, tc.old, tc.new, 1)))
		if assert.Error(t, err, tc.want) {
			assert.True(t, strings.HasPrefix(err.Error(), tc.want), "got %q\nwant %q", err.Error(), tc.want)
		}
	}
}
