package main

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestVersionLdflags builds the binary the way `make release` does
// (-ldflags -X main.version/commit/date) and runs `mlproxy version`: the
// injected values must be what it prints, so a renamed variable or a
// broken -X path fails here rather than in a release.
func TestVersionLdflags(t *testing.T) {
	goBin, err := exec.LookPath("go")
	require.NoError(t, err, "the go command builds the binary under test")
	bin := filepath.Join(t.TempDir(), "mlproxy")
	const (
		ver = "v9.8.7-test"
		rev = "0123456789ab"
		at  = "2030-01-02T03:04:05Z"
	)
	build := exec.Command(goBin, "build", "-o", bin,
		"-ldflags", "-X main.version="+ver+" -X main.commit="+rev+" -X main.date="+at, ".")
	out, err := build.CombinedOutput()
	require.NoError(t, err, "go build: %s", out)

	out, err = exec.Command(bin, "version").CombinedOutput()
	require.NoError(t, err, "mlproxy version: %s", out)
	want := "mlproxy " + ver + " (commit " + rev + ", built " + at + ", " + runtime.Version() + " " + runtime.GOOS + "/" + runtime.GOARCH + ")\n"
	assert.Equal(t, want, string(out))

	out, err = exec.Command(bin, "version", "--json").Output()
	require.NoError(t, err, "mlproxy version --json")
	var got buildInfo
	require.NoError(t, json.Unmarshal(out, &got), "%s", out)
	assert.Equal(t, buildInfo{Version: ver, Commit: rev, Date: at, Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}, got)
}

// TestVersionReleaseFlags: `make release` injects exactly the variables
// TestVersionLdflags checks.
func TestVersionReleaseFlags(t *testing.T) {
	b, err := os.ReadFile("../../Makefile")
	require.NoError(t, err)
	var ldflags string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "-ldflags") && strings.Contains(l, "main.version") {
			ldflags = l
		}
	}
	require.NotEmpty(t, ldflags, "the release target's -ldflags line")
	for _, x := range []string{"-X main.version=$(RELEASE_VERSION)", "-X main.commit=$(RELEASE_COMMIT)", "-X main.date=$(RELEASE_DATE)"} {
		assert.Contains(t, ldflags, x)
	}
}

// TestVersionFallback: what -X leaves unset comes from Go's build
// information, and "dev" when there is none.
func TestVersionFallback(t *testing.T) {
	vcs := func(modified string) *debug.BuildInfo {
		return &debug.BuildInfo{GoVersion: "go1.99", Main: debug.Module{Version: "(devel)"}, Settings: []debug.BuildSetting{
			{Key: "vcs", Value: "git"},
			{Key: "vcs.revision", Value: "afb6bdf0f3dc7d811ae535ac6676c996bfb8c13d"},
			{Key: "vcs.time", Value: "2026-12-08T01:06:09Z"},
			{Key: "vcs.modified", Value: modified},
		}}
	}
	tests := []struct {
		name          string
		ver, rev, at  string
		bi            *debug.BuildInfo
		want          buildInfo
		wantCommitted bool
		line          string
	}{
		{
			name: "nothing recorded",
			ver:  "dev",
			want: buildInfo{Version: "dev"},
			line: "mlproxy dev (commit unknown, go1.99 linux/amd64)",
		},
		{
			name:          "vcs clean",
			ver:           "dev",
			bi:            vcs("false"),
			want:          buildInfo{Version: "dev", Commit: "afb6bdf0f3dc", Date: "2026-12-08T01:06:09Z"},
			wantCommitted: true,
			line:          "mlproxy dev (commit afb6bdf0f3dc, committed 2026-12-08T01:06:09Z, go1.99 linux/amd64)",
		},
		{
			name:          "vcs modified",
			ver:           "dev",
			bi:            vcs("true"),
			want:          buildInfo{Version: "dev", Commit: "afb6bdf0f3dc-dirty", Date: "2026-12-08T01:06:09Z"},
			wantCommitted: true,
			line:          "mlproxy dev (commit afb6bdf0f3dc-dirty, committed 2026-12-08T01:06:09Z, go1.99 linux/amd64)",
		},
		{
			name: "module version from go install",
			ver:  "dev",
			bi:   &debug.BuildInfo{GoVersion: "go1.99", Main: debug.Module{Version: "v0.4.1"}},
			want: buildInfo{Version: "v0.4.1"},
			line: "mlproxy v0.4.1 (commit unknown, go1.99 linux/amd64)",
		},
		{
			name: "-X wins over build info",
			ver:  "v1.0.0", rev: "abc1234", at: "2026-12-08T01:00:00Z",
			bi:   vcs("true"),
			want: buildInfo{Version: "v1.0.0", Commit: "abc1234", Date: "2026-12-08T01:00:00Z"},
			line: "mlproxy v1.0.0 (commit abc1234, built 2026-12-08T01:00:00Z, go1.99 linux/amd64)",
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := resolveBuild(tt.ver, tt.rev, tt.at, tt.bi)
			assert.Equal(t, tt.wantCommitted, got.committed)
			// The platform is the test's own; fix it so the line is exact.
			got.Go, got.OS, got.Arch = "go1.99", "linux", "amd64"
			tt.want.Go, tt.want.OS, tt.want.Arch = "go1.99", "linux", "amd64"
			tt.want.committed = tt.wantCommitted
			assert.Equal(t, tt.want, got)
			assert.Equal(t, tt.line, got.String())
		})
	}
}
