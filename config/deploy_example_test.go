package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/mlproxy/mlproxy/internal/devca"
)

// TestDeployExamples loads deploy/example/{eu,us,ap}.yaml with Load, as
// `mlproxy run` would from /etc/mlproxy: each beside the certificates it
// names (certs/, from a throwaway CA) and with its passwords in the
// environment. Every link must be encrypted, and the three files must agree
// on the regions and carry identical tables sections.
func TestDeployExamples(t *testing.T) {
	regions := map[string]uint16{"eu": 1, "us": 2, "ap": 3}
	dir := t.TempDir()
	ca, err := devca.New(filepath.Join(dir, "certs"), "Example Ops CA")
	require.NoError(t, err)
	for name := range regions {
		_, err = ca.Server("proxy-" + name)
		require.NoError(t, err)
		_, err = ca.Client("mlproxy-" + name)
		require.NoError(t, err)
		t.Setenv("MLPROXY_PEER_"+strings.ToUpper(name)+"_PASSWORD", "peer-"+name+"-placeholder")
	}
	t.Setenv("MLPROXY_LOCAL_PASSWORD", "local-placeholder")

	var first *Config
	for _, name := range []string{"eu", "us", "ap"} {
		t.Run(name, func(t *testing.T) {
			b, err := os.ReadFile(filepath.Join("..", "deploy", "example", name+".yaml"))
			require.NoError(t, err)
			path := filepath.Join(dir, name+".yaml")
			require.NoError(t, os.WriteFile(path, b, 0o600))

			c, err := Load(path)
			require.NoError(t, err)
			assert.Equal(t, Region{Name: name, ID: regions[name]}, c.Region)
			assert.Equal(t, regions, c.RegionIDs())
			assert.Empty(t, c.Plaintext(), "the examples encrypt every link")
			assert.Equal(t, "local-placeholder", c.Local.Password)
			require.Len(t, c.Peers, 2)
			for _, p := range c.Peers {
				assert.Equal(t, "peer-"+p.Name+"-placeholder", p.Server.Password, "peer %s", p.Name)
				assert.Equal(t, filepath.Join(dir, "certs", "mlproxy-"+name+".pem"), p.Server.TLS.Cert, "peer %s: this region's client certificate", p.Name)
			}
			assert.Equal(t, filepath.Join(dir, "certs", "proxy-"+name+".pem"), c.Proxy.TLS.Cert)

			tables := append([]TableRule(nil), c.Tables...)
			for i := range tables {
				tables[i].Line = 0
			}
			if first == nil {
				first = &Config{Tables: tables}
				return
			}
			assert.Equal(t, first.Tables, tables, "tables must be identical in every region's file")
		})
	}
}
