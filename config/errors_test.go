package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// edit replaces the first old in base with new; the lines of base are
// numbered in the comment on base.
func edit(old, new string) string {
	if !strings.Contains(base, old) {
		panic("edit: " + old + " not in base")
	}
	return strings.Replace(base, old, new, 1)
}

// peerAP is a second peer, appended to base at line 18.
const peerAP = `  - name: ap
    id: 3
    server:
      addr: db.ap:3306
      insecure: true
      user: repl
`

func TestParseErrors(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "nope.pem")
	cases := []struct {
		name string
		doc  string
		// want holds, in order, a prefix of each error line; there must be
		// exactly this many.
		want []string
	}{
		{"unknown top-level key", base + "bogus: 1\n",
			[]string{`region.yaml:20: bogus: unknown key (known keys here: region, proxy, local, tables, peers, topology, clock, apply, metrics, log, tracing)`}},
		{"tracing without a way to the collector", base + "tracing:\n  endpoint: otel:4318\n",
			[]string{`region.yaml:21: tracing.endpoint: tracing.endpoint "otel:4318" needs tracing.tls`}},
		{"tracing ratio out of range", base + "tracing:\n  endpoint: otel:4318\n  insecure: true\n  sample_ratio: 1.5\n",
			[]string{`region.yaml:23: tracing.sample_ratio: tracing.sample_ratio 1.5 is not between 0 and 1`}},
		{"tracing options without endpoint", base + "tracing:\n  sample_ratio: 0.5\n",
			[]string{`region.yaml:20: tracing: tracing options are set but tracing.endpoint is empty`}},
		{"unknown nested key", edit("      user: repl\n", "      user: repl\n      pasword: x\n"),
			[]string{`region.yaml:20: peers[0].server.pasword: unknown key (known keys here: addr, user, password, tls, insecure)`}},
		{"all unknown keys at once", edit("  id: 1\n", "  id: 1\n  colour: red\n") + "extra: 2\n",
			[]string{`region.yaml:4: region.colour: unknown key`, `region.yaml:21: extra: unknown key`}},
		{"string for integer", edit("  id: 1\n", "  id: one\n"),
			[]string{`region.yaml:3: region.id: want an integer, got string "one"`}},
		{"float for integer", base + "apply:\n  batch_txns: 1.5\n",
			[]string{`region.yaml:21: apply.batch_txns: want an integer, got number 1.5`}},
		{"duration without unit", base + "clock:\n  max_offset: 5\n",
			[]string{`region.yaml:21: clock.max_offset: want a duration with a unit such as "500ms" or "30s", got integer 5`}},
		{"bad duration", base + "clock:\n  max_offset: 5 seconds\n",
			[]string{`region.yaml:21: clock.max_offset: invalid duration "5 seconds"`}},
		{"list for string", edit("  name: eu\n", "  name: [eu]\n"),
			[]string{`region.yaml:2: region.name: want a string, got a list`}},
		{"scalar for mapping", edit("proxy:\n  insecure: true\n  listen: 127.0.0.1:6033\n", "proxy: 127.0.0.1:6033\n\n\n"),
			[]string{`region.yaml:4: proxy: want a mapping, got string "127.0.0.1:6033"`}},
		{"mapping for list", edit("tables:\n  - schema: shop\n", "tables:\n    schema: shop\n"),
			[]string{`region.yaml:11: tables: want a list, got a mapping`}},
		{"string for bool", edit("      user: repl\n", "      user: repl\n      tls:\n        insecure_skip_verify: maybe\n"),
			[]string{`region.yaml:21: peers[0].server.tls.insecure_skip_verify: want true or false, got string "maybe"`}},
		{"syntax error", base + "log: [\n",
			[]string{`region.yaml:20: sequence end token ']' not found`}},
		{"duplicate key", edit("  id: 1\n", "  id: 1\n  id: 2\n"),
			[]string{`region.yaml:4: mapping key "id" already defined at [3:3]`}},
		{"empty file", "",
			[]string{
				`region.yaml:1: region.name: required`,
				`region.yaml:1: region.id: required: a region id in 1..32767`,
				`region.yaml:1: proxy.listen: required`,
				`region.yaml:1: proxy.tls: required: the certificate offered to clients`,
				`region.yaml:1: local.addr: required`,
				`region.yaml:1: local.user: required`,
				`region.yaml:1: tables: required: at least one entry`,
			}},
		{"missing region name", edit("  name: eu\n", "\n"),
			[]string{`region.yaml:1: region.name: required: this region's name`}},
		{"missing local user", edit("  user: mlproxy\n", "\n"),
			[]string{`region.yaml:7: local.user: required: the MySQL user`}},
		{"no tables key", edit("tables:\n  - schema: shop\n    table: \"*\"\n", "\n\n\n"),
			[]string{`region.yaml:1: tables: required: at least one entry`}},
		{"region id zero", edit("  id: 1\n", "  id: 0\n"),
			[]string{`region.yaml:3: region.id: region id 0 out of range 1..32767`}},
		{"region id too large", edit("  id: 1\n", "  id: 40000\n"),
			[]string{`region.yaml:3: region.id: region id 40000 out of range 1..32767`}},
		{"region id overflows", edit("  id: 1\n", "  id: 70000\n"),
			[]string{`region.yaml:3: region.id: integer 70000 out of range 0..65535`}},
		{"region id negative", edit("  id: 1\n", "  id: -1\n"),
			[]string{`region.yaml:3: region.id: must not be negative, got -1`}},
		{"peer id out of range", edit("    id: 2\n", "    id: 32768\n"),
			[]string{`region.yaml:15: peers[0].id: region id 32768 out of range 1..32767`}},
		{"peer missing id", edit("    id: 2\n", "\n"),
			[]string{`region.yaml:14: peers[0].id: required: a region id in 1..32767`}},
		{"peer reuses own id", edit("    id: 2\n", "    id: 1\n"),
			[]string{`region.yaml:15: peers[0].id: duplicate region id 1 (also used by region.id)`}},
		{"two peers share an id", base + strings.Replace(peerAP, "id: 3", "id: 2", 1),
			[]string{`region.yaml:21: peers[1].id: duplicate region id 2 (also used by peers[0])`}},
		{"duplicate peer names", base + strings.Replace(peerAP, "name: ap", "name: us", 1),
			[]string{`region.yaml:20: peers[1].name: duplicate peer name "us" (also used by peers[0])`}},
		{"peer named like self", edit("  - name: us\n", "  - name: eu\n"),
			[]string{`region.yaml:14: peers[0].name: "eu" is this region's own name (region.name)`}},
		{"peer without server", edit("    server:\n      addr: db.us:3306\n      insecure: true\n      user: repl\n", "\n\n\n\n"),
			[]string{`region.yaml:14: peers[0].server.addr: required`, `region.yaml:14: peers[0].server.user: required`}},
		{"bad region name", edit("  name: eu\n", "  name: \"e u\"\n"),
			[]string{`region.yaml:2: region.name: invalid name "e u"`}},
		{"unknown rule", edit("    table: \"*\"\n", "    table: \"*\"\n    rule: newest\n"),
			[]string{`region.yaml:13: tables[0].rule: unknown rule "newest" (known: lww, first-writer-wins, origin-priority, counter, max, min, manual)`}},
		{"counter without columns", edit("    table: \"*\"\n", "    table: \"*\"\n    rule: counter\n"),
			[]string{`region.yaml:13: tables[0].columns: required by rule counter: the numeric columns it merges`}},
		{"max without columns", edit("    table: \"*\"\n", "    table: \"*\"\n    rule: max\n"),
			[]string{`region.yaml:13: tables[0].columns: required by rule max`}},
		{"min without columns", edit("    table: \"*\"\n", "    table: \"*\"\n    rule: min\n    columns: []\n"),
			[]string{`region.yaml:14: tables[0].columns: required by rule min`}},
		{"columns with lww", edit("    table: \"*\"\n", "    table: \"*\"\n    columns: [n]\n"),
			[]string{`region.yaml:13: tables[0].columns: only used by rules counter, max and min, not lww`}},
		{"duplicate column", edit("    table: \"*\"\n", "    table: \"*\"\n    rule: counter\n    columns:\n      - n\n      - n\n"),
			[]string{`region.yaml:16: tables[0].columns[1]: duplicate column "n" (also columns[0])`}},
		{"origin-priority without priority", edit("    table: \"*\"\n", "    table: \"*\"\n    rule: origin-priority\n"),
			[]string{`region.yaml:13: tables[0].priority: required by rule origin-priority`}},
		{"origin-priority naming unknown region", edit("    table: \"*\"\n", "    table: \"*\"\n    rule: origin-priority\n    priority:\n      - eu\n      - us\n      - mars\n"),
			[]string{`region.yaml:17: tables[0].priority[2]: unknown region "mars" (known: eu, us)`}},
		{"origin-priority incomplete", edit("    table: \"*\"\n", "    table: \"*\"\n    rule: origin-priority\n    priority: [us]\n"),
			[]string{`region.yaml:14: tables[0].priority: must rank every region; missing eu`}},
		{"priority with lww", edit("    table: \"*\"\n", "    table: \"*\"\n    priority: [eu, us]\n"),
			[]string{`region.yaml:13: tables[0].priority: only used by rule origin-priority, not lww`}},
		{"table entry without schema", edit("  - schema: shop\n", "  - schema: \"\"\n"),
			[]string{`region.yaml:11: tables[0].schema: required`}},
		{"internal schema", edit("  - schema: shop\n", "  - schema: mlr\n"),
			[]string{`region.yaml:11: tables[0].schema: "mlr" is mlproxy's internal schema`}},
		{"duplicate table entry", edit("    table: \"*\"\n", "    table: \"*\"\n  - schema: shop\n    table: \"*\"\n"),
			[]string{`region.yaml:13: tables[1]: duplicate entry for shop.* (also tables[0])`}},
		{"star without hub", base + "topology:\n  mode: star\n",
			[]string{`region.yaml:21: topology.hub: required by mode star`}},
		{"star hub unknown", base + "topology:\n  mode: star\n  hub: mars\n",
			[]string{`region.yaml:22: topology.hub: unknown region "mars" (known: eu, us)`}},
		{"hub without star", base + "topology:\n  hub: eu\n",
			[]string{`region.yaml:21: topology.hub: only used by mode star, not all-to-all`}},
		{"ring of two", base + "topology:\n  mode: ring\n",
			[]string{`region.yaml:21: topology.mode: a ring needs at least 3 regions, found 2`}},
		{"unknown topology", base + "topology:\n  mode: mesh\n",
			[]string{`region.yaml:21: topology.mode: unknown mode "mesh"`}},
		{"listen without port", edit("  listen: 127.0.0.1:6033\n", "  listen: localhost\n"),
			[]string{`region.yaml:6: proxy.listen: invalid address "localhost": want host:port`}},
		{"dial address without host", edit("  addr: 127.0.0.1:3306\n", "  addr: \":3306\"\n"),
			[]string{`region.yaml:8: local.addr: invalid address ":3306": host is missing`}},
		{"port out of range", edit("      addr: db.us:3306\n", "      addr: db.us:99999\n"),
			[]string{`region.yaml:17: peers[0].server.addr: invalid address "db.us:99999": port must be a number in 1..65535`}},
		{"bad metrics address", base + "metrics:\n  listen: 9104\n",
			[]string{`region.yaml:21: metrics.listen: invalid address "9104": want host:port`}},
		{"missing TLS file", edit("  insecure: true\n  listen: 127.0.0.1:6033\n", "  tls:\n    cert: "+missing+"\n  listen: 127.0.0.1:6033\n"),
			[]string{
				`region.yaml:5: proxy.tls.key: required when proxy.tls is set`,
				`region.yaml:6: proxy.tls.cert: cannot use file ` + missing + `: no such file or directory`,
			}},
		{"client cert without key", edit("      insecure: true\n      user: repl\n", "      user: repl\n      tls:\n        cert: "+missing+"\n"),
			[]string{
				`region.yaml:19: peers[0].server.tls: cert and key go together`,
				`region.yaml:20: peers[0].server.tls.cert: cannot use file`,
			}},
		{"negative values", base + "apply:\n  workers: -2\n  relay_bytes: -1\nlog:\n  level: loud\n  repeat_window: -1s\n",
			[]string{
				`region.yaml:21: apply.workers: must be positive, got -2`,
				`region.yaml:22: apply.relay_bytes: must be positive, got -1`,
				`region.yaml:24: log.level: unknown level "loud"`,
				`region.yaml:25: log.repeat_window: must be at least 1s, got -1s`,
			}},
		{"unset env var", edit("  user: mlproxy\n", "  user: mlproxy\n  password: ${MLPX_TEST_SURELY_UNSET}\n"),
			[]string{`region.yaml:10: local.password: environment variable MLPX_TEST_SURELY_UNSET is not set`}},
		{"malformed env reference", edit("  user: mlproxy\n", "  user: mlproxy\n  password: pre${X}\n"),
			[]string{`region.yaml:10: local.password: a password from the environment is written as the whole value "${NAME}"`}},
		{"many problems at once", edit("  id: 1\n", "  id: 0\n") + strings.Replace(peerAP, "id: 3", "id: 2", 1) + "topology:\n  mode: star\n",
			[]string{
				`region.yaml:3: region.id: region id 0 out of range`,
				`region.yaml:21: peers[1].id: duplicate region id 2 (also used by peers[0])`,
				`region.yaml:27: topology.hub: required by mode star`,
			}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			c, err := Parse("region.yaml", []byte(tc.doc))
			require.Error(t, err)
			assert.Nil(t, c)
			got := strings.Split(err.Error(), "\n")
			require.Len(t, got, len(tc.want), "errors:\n%s", err)
			for i, w := range tc.want {
				assert.True(t, strings.HasPrefix(got[i], w), "error %d\n got: %s\nwant: %s...", i, got[i], w)
			}
		})
	}
}

func TestTLSPathsRelativeToFile(t *testing.T) {
	dir := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(dir, "certs"), 0o755))
	writeCert(t, filepath.Join(dir, "certs"), "proxy")
	doc := edit("  insecure: true\n  listen: 127.0.0.1:6033\n", "  listen: 127.0.0.1:6033\n  tls:\n    cert: certs/proxy.pem\n    key: certs/proxy-key.pem\n")
	path := filepath.Join(dir, "region.yaml")
	require.NoError(t, os.WriteFile(path, []byte(doc), 0o600))
	c, err := Load(path)
	require.NoError(t, err)
	assert.Equal(t, filepath.Join(dir, "certs", "proxy.pem"), c.Proxy.TLS.Cert)
	cfg, err := c.Proxy.TLS.Config()
	require.NoError(t, err)
	assert.Len(t, cfg.Certificates, 1)

	// The same file read from another directory still finds its certs;
	// parsed as if it lived elsewhere, it does not.
	_, err = Parse("elsewhere/region.yaml", []byte(doc))
	require.Error(t, err)
	assert.Contains(t, err.Error(), "region.yaml:7: proxy.tls.cert: cannot use file elsewhere/certs/proxy.pem")
}
