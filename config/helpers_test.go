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
