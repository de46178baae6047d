package config

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/internal/devca"
)

// base is a minimal valid file; line numbers are in the comments so the
// cases below can be checked against them.
const base = `region:
  name: eu
  id: 1
proxy:
  insecure: true
  listen: 127.0.0.1:6033
local:
  addr: 127.0.0.1:3306
  user: mlproxy
tables:
  - schema: shop
    table: "*"
peers:
  - name: us
    id: 2
    server:
      addr: db.us:3306
      insecure: true
      user: repl
`

func TestParseMinimalAppliesDefaults(t *testing.T) {
	c, err := Parse("region.yaml", []byte(base))
	require.NoError(t, err)
	assert.Equal(t, "region.yaml", c.Path)
	assert.Equal(t, Region{Name: "eu", ID: 1}, c.Region)
	assert.Equal(t, 1000, c.Proxy.MaxConnections)
	assert.Equal(t, 10000, c.Proxy.StatementCacheSize)
	assert.Equal(t, 30*time.Second, c.Proxy.ShutdownTimeout)
	assert.Equal(t, 500*time.Millisecond, c.Clock.MaxOffset)
	assert.Equal(t, 512, c.Apply.BatchTxns)
	assert.Equal(t, int64(64<<20), c.Apply.RelayBytes)
	assert.Equal(t, 1, c.Apply.Workers)
	assert.Equal(t, time.Minute, c.Apply.TombstoneGCInterval)
	assert.Equal(t, TopologyAllToAll, c.Topology.Mode)
	assert.Equal(t, RuleLWW, c.Tables[0].Rule)
	assert.Equal(t, "info", c.Log.Level)
	assert.Equal(t, 10*time.Second, c.Log.RepeatWindow)
	assert.Equal(t, "", c.Metrics.Listen, "metrics stay off unless asked for")
	assert.Equal(t, 11, c.Tables[0].Line)
	assert.Equal(t, 14, c.Peers[0].Line)
}

func TestDefaultKeepsExplicitValues(t *testing.T) {
	c := &Config{
		Proxy:  Proxy{MaxConnections: 7, ShutdownTimeout: time.Second},
		Tables: []TableRule{{Schema: "a", Table: "b", Rule: RuleManual}},
		Apply:  Apply{Workers: 9},
		Log:    Log{Level: "debug"},
	}
	c.Default()
	c.Default() // idempotent
	assert.Equal(t, 7, c.Proxy.MaxConnections)
	assert.Equal(t, time.Second, c.Proxy.ShutdownTimeout)
	assert.Equal(t, RuleManual, c.Tables[0].Rule)
	assert.Equal(t, 9, c.Apply.Workers)
	assert.Equal(t, 512, c.Apply.BatchTxns)
	assert.Equal(t, "debug", c.Log.Level)
}

func TestExampleLoads(t *testing.T) {
	t.Setenv("MLPROXY_EU_PASSWORD", "eu-secret")
	t.Setenv("MLPROXY_US_PASSWORD", "us-secret")
	t.Setenv("MLPROXY_AP_PASSWORD", "ap-secret")
	c, err := Load(exampleWithCerts(t))
	require.NoError(t, err)
	require.NoError(t, c.Validate())
	assert.Empty(t, c.Plaintext(), "the example encrypts every link")
	assert.Equal(t, Region{Name: "eu", ID: 1}, c.Region)
	assert.Equal(t, map[string]uint16{"eu": 1, "us": 2, "ap": 3}, c.RegionIDs())
	assert.Equal(t, "eu-secret", c.Local.Password)
	assert.Equal(t, "us-secret", c.Peers[0].Server.Password)
	assert.Equal(t, "ap-secret", c.Peers[1].Server.Password)
	rules := map[string]bool{}
	for _, tr := range c.Tables {
		rules[tr.Rule] = true
		assert.Positive(t, tr.Line)
	}
	for _, r := range Rules {
		assert.True(t, rules[r], "example shows rule %s", r)
	}
	r, ok := c.TableRule("shop", "stock")
	require.True(t, ok)
	assert.Equal(t, RuleCounter, r.Rule)
	assert.Equal(t, []string{"quantity", "reserved"}, r.Columns)
}

func TestExampleNeedsItsEnvironment(t *testing.T) {
	t.Setenv("MLPROXY_EU_PASSWORD", "x")
	t.Setenv("MLPROXY_AP_PASSWORD", "x")
	_, err := Load(exampleWithCerts(t))
	require.Error(t, err)
	assert.Regexp(t, `^.*/region\.example\.yaml:\d+: peers\[0\]\.server\.password: environment variable MLPROXY_US_PASSWORD is not set$`, err.Error())
}

func TestEnvExpansion(t *testing.T) {
	t.Setenv("MLPX_TEST_LOCAL", "s3cret ${not expanded again}")
	t.Setenv("MLPX_TEST_EMPTY", "")
	doc := strings.Replace(base, "  user: mlproxy\n", "  user: mlproxy\n  password: ${MLPX_TEST_LOCAL}\n", 1)
	doc = strings.Replace(doc, "      user: repl\n", "      user: repl\n      password: ${MLPX_TEST_EMPTY}\n", 1)
	c, err := Parse("region.yaml", []byte(doc))
	require.NoError(t, err)
	assert.Equal(t, "s3cret ${not expanded again}", c.Local.Password)
	assert.Equal(t, "", c.Peers[0].Server.Password)

	// A literal password without "${" is kept as written.
	doc = strings.Replace(base, "  user: mlproxy\n", "  user: mlproxy\n  password: plain$pw\n", 1)
	c, err = Parse("region.yaml", []byte(doc))
	require.NoError(t, err)
	assert.Equal(t, "plain$pw", c.Local.Password)
}

func TestLoadMissingFile(t *testing.T) {
	_, err := Load("testdata/does-not-exist.yaml")
	require.Error(t, err)
	assert.Contains(t, err.Error(), "does-not-exist.yaml")
}

func TestErrorsAreInspectable(t *testing.T) {
	_, err := Parse("r.yaml", []byte(strings.Replace(base, "id: 1", "id: 0", 1)))
	require.Error(t, err)
	var es Errors
	require.True(t, errors.As(err, &es))
	var first *Error
	require.True(t, errors.As(err, &first))
	assert.Equal(t, &Error{File: "r.yaml", Line: 3, Key: "region.id", Msg: "region id 0 out of range 1..32767"}, first)
	assert.Equal(t, first, es[0])
}

func TestValidateCodeBuiltConfig(t *testing.T) {
	c := &Config{
		Region: Region{Name: "eu", ID: 1},
		Proxy:  Proxy{Listen: ":6033", Insecure: true},
		Local:  Server{Addr: "db:3306", User: "u", Insecure: true},
		Tables: []TableRule{{Schema: "s", Table: "t"}},
	}
	c.Default()
	require.NoError(t, c.Validate())
	c.Peers = []Peer{{Name: "us", ID: 1, Server: Server{Addr: "x:1", User: "u", Insecure: true}}}
	err := c.Validate()
	require.Error(t, err)
	assert.Equal(t, "peers[0].id: duplicate region id 1 (also used by region.id)", err.Error())
}

// exampleWithCerts copies testdata/region.example.yaml into a temporary
// directory beside the certificates it names (certs/, from a throwaway CA)
// and returns the copy's path.
func exampleWithCerts(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../testdata/region.example.yaml")
	require.NoError(t, err)
	dir := t.TempDir()
	ca, err := devca.New(filepath.Join(dir, "certs"), "example CA")
	require.NoError(t, err)
	_, err = ca.Server("proxy")
	require.NoError(t, err)
	_, err = ca.Client("mlproxy-eu")
	require.NoError(t, err)
	path := filepath.Join(dir, "region.example.yaml")
	require.NoError(t, os.WriteFile(path, b, 0o600))
	return path
}

func TestPlaintextNeedsInsecure(t *testing.T) {
	plain := strings.Replace(strings.Replace(base, "  insecure: true\n", "", 1), "      insecure: true\n", "", 1)
	_, err := Parse("region.yaml", []byte(plain))
	require.Error(t, err)
	assert.Equal(t, "region.yaml:4: proxy.tls: required: the certificate offered to clients (cert, key); set proxy.insecure: true to serve plaintext only\n"+
		"region.yaml:15: peers[0].server.tls: required: the link to peer us is encrypted and authenticated with a client certificate (ca, cert, key); set peers[0].server.insecure: true to allow plaintext", err.Error())

	// A peer with TLS but no client certificate: its account cannot
	// require a subject.
	doc := strings.Replace(base, "      insecure: true\n", "      tls: {ca: "+filepath.Join("..", "testdata", "region.example.yaml")+"}\n", 1)
	_, err = Parse("region.yaml", []byte(doc))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "peers[0].server.tls.cert: required: the client certificate peer us's replication account requires (REQUIRE SUBJECT)")

	// The local server off loopback needs TLS too.
	doc = strings.Replace(base, "  addr: 127.0.0.1:3306\n", "  addr: db.eu:3306\n", 1)
	_, err = Parse("region.yaml", []byte(doc))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "region.yaml:7: local.tls: required: db.eu:3306 is not a loopback address")

	c, err := Parse("region.yaml", []byte(base))
	require.NoError(t, err)
	assert.Equal(t, []string{
		"proxy: clients are served plaintext (proxy.insecure)",
		"peer us: plaintext to db.us:3306 (insecure: true)",
	}, c.Plaintext())
}

func TestMismatchedKeyIsAConfigError(t *testing.T) {
	dir := t.TempDir()
	ca, err := devca.New(dir, "t")
	require.NoError(t, err)
	a, err := ca.Client("a")
	require.NoError(t, err)
	b, err := ca.Client("b")
	require.NoError(t, err)
	doc := strings.Replace(base, "      insecure: true\n", "      tls: {ca: "+ca.CAFile()+", cert: "+a.Cert+", key: "+b.Key+"}\n", 1)
	_, err = Parse("region.yaml", []byte(doc))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "region.yaml:18: peers[0].server.tls: tls for db.us:3306: load certificate "+a.Cert+" with key "+b.Key+": tls: private key does not match public key")
}

func TestPassThroughRegion(t *testing.T) {
	doc := strings.Replace(base, "tables:\n  - schema: shop\n    table: \"*\"\n", "tables: []\n", 1)
	c, err := Parse("region.yaml", []byte(doc))
	require.NoError(t, err, "an explicit empty table list is a pure proxy")
	assert.Empty(t, c.Tables)
}
