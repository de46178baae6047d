package chaos

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/mlproxy/mlproxy/itest/cluster"
)

// TestCheckLogs: an error line passes only when a fault of the schedule
// explains its message; panics never pass.
func TestCheckLogs(t *testing.T) {
	path := filepath.Join(t.TempDir(), "eu.log")
	lines := `{"level":"info","msg":"started"}
{"level":"error","msg":"binlog tailer stopped","error":"EOF"}
{"level":"error","msg":"clock fence engaged: refusing writes to replicated tables"}
not json at all
`
	for _, tc := range []struct {
		name     string
		injected map[Class]int
		extra    string
		problems []string
	}{
		{"explained", map[Class]int{Latency: 1, ClockSkew: 1}, "", nil},
		{"no fault explains the tailer", map[Class]int{ClockSkew: 1}, "", []string{"binlog tailer stopped"}},
		{"no skew explains the fence", map[Class]int{PartitionTwoWay: 1}, "", []string{"clock fence"}},
		{"unknown error", map[Class]int{Latency: 1, ClockSkew: 1}, `{"level":"error","msg":"something new"}` + "\n", []string{"something new"}},
		{"panic", map[Class]int{Latency: 1, ClockSkew: 1}, "panic: runtime error: index out of range\n", []string{"panic: runtime error"}},
		{"dpanic", map[Class]int{Latency: 1, ClockSkew: 1}, `{"level":"dpanic","msg":"x"}` + "\n", []string{`"dpanic"`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := os.WriteFile(path, []byte(lines+tc.extra), 0o644); err != nil {
				t.Fatal(err)
			}
			r := &run{
				c:   &cluster.Cluster{Regions: []*cluster.Region{{Name: "eu", LogPath: path}}},
				res: &Result{Injected: tc.injected},
			}
			r.checkLogs()
			if len(r.res.Problems) != len(tc.problems) {
				t.Fatalf("problems %q, want %d mentioning %q", r.res.Problems, len(tc.problems), tc.problems)
			}
			for i, want := range tc.problems {
				if !strings.Contains(r.res.Problems[i], want) {
					t.Errorf("problem %q does not mention %q", r.res.Problems[i], want)
				}
			}
		})
	}
}
