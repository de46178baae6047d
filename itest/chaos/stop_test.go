package chaos

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// TestStopDuringStartup: SIGTERM while mlproxy is still waiting for its
// own server is a clean stop (exit 0), as after start-up. Seed 5005 of a
// chaos run found it exiting 1 with an error line: its own link was slow
// when a graceful restart came.
func TestStopDuringStartup(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	c, err := cluster.Start(ctx, cluster.Options{Names: []string{"eu"}, Setup: Setup, Tables: Tables})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	eu := c.Regions[0]
	if err := c.StopProxy(eu, false); err != nil {
		t.Fatalf("graceful stop of a running mlproxy: %v", err)
	}
	if err := eu.Server.Stop(); err != nil {
		t.Fatal(err)
	}
	if err := c.StartProxy(eu); err != nil {
		t.Fatal(err)
	}
	// Wait until it says it is waiting for its server.
	for deadline := time.Now().Add(30 * time.Second); !strings.Contains(cluster.Tail(eu.LogPath, 5), "local server not reachable"); {
		if time.Now().After(deadline) {
			t.Fatalf("mlproxy never waited for its server; log:\n%s", cluster.Tail(eu.LogPath, 10))
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := c.StopProxy(eu, false); err != nil {
		t.Errorf("SIGTERM while waiting for the local server: %v; log:\n%s", err, cluster.Tail(eu.LogPath, 5))
	}
	if err := eu.Server.Restart(); err != nil {
		t.Fatal(err)
	}
}
