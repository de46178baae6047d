package main

import (
	"encoding/json"
	"fmt"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
)

// commit and date, like version (main.go), are set at build time:
//
//	go build -ldflags "-X main.version=v0.3.0 -X main.commit=0123456789ab -X main.date=2026-12-08T01:00:00Z"
//
// (`make release` does). Left empty, they are taken from the build
// information Go records from the repository (see buildInfo).
var (
	commit string
	date   string
)

// buildInfo is what `mlproxy version` reports.
type buildInfo struct {
	Version string `json:"version"` // "dev" when neither -X nor the module says
	Commit  string `json:"commit"`  // "" when unknown; "-dirty" suffix for a modified tree
	Date    string `json:"date"`    // RFC 3339 when known: the build's, or else the commit's
	Go      string `json:"go"`
	OS      string `json:"os"`
	Arch    string `json:"arch"`
	// committed says Date is the commit's time (vcs.time), not the build's.
	committed bool
}

// currentBuild is this binary's buildInfo: the -ldflags -X values where
// set, else what runtime/debug.ReadBuildInfo recorded.
func currentBuild() buildInfo {
	bi, _ := debug.ReadBuildInfo()
	return resolveBuild(version, commit, date, bi)
}

// resolveBuild fills in what the -X values (ver, rev, at) leave unset
// from bi (nil: nothing recorded): the module version unless it is
// "(devel)", vcs.revision (shortened to 12 digits, "-dirty" when
// vcs.modified) and vcs.time (the commit's time, not the build's). Go
// records vcs.* only when building inside the repository with -buildvcs
// on (its default, unless GOFLAGS says otherwise).
func resolveBuild(ver, rev, at string, bi *debug.BuildInfo) buildInfo {
	b := buildInfo{Version: ver, Commit: rev, Date: at, Go: runtime.Version(), OS: runtime.GOOS, Arch: runtime.GOARCH}
	if bi == nil {
		if b.Version == "" {
			b.Version = "dev"
		}
		return b
	}
	if (b.Version == "" || b.Version == "dev") && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		b.Version = bi.Main.Version
	}
	if b.Version == "" {
		b.Version = "dev"
	}
	settings := map[string]string{}
	for _, s := range bi.Settings {
		settings[s.Key] = s.Value
	}
	if b.Commit == "" && settings["vcs.revision"] != "" {
		b.Commit = settings["vcs.revision"]
		if len(b.Commit) > 12 {
			b.Commit = b.Commit[:12]
		}
		if settings["vcs.modified"] == "true" {
			b.Commit += "-dirty"
		}
	}
	if b.Date == "" && settings["vcs.time"] != "" {
		b.Date, b.committed = settings["vcs.time"], true
	}
	if bi.GoVersion != "" {
		b.Go = bi.GoVersion
	}
	return b
}

// String is the one line `mlproxy version` prints, e.g.
// "mlproxy v0.3.0 (commit 0123456789ab, built 2026-12-08T01:00:00Z, go1.26.8 linux/amd64)".
func (b buildInfo) String() string {
	var parts []string
	if b.Commit != "" {
		parts = append(parts, "commit "+b.Commit)
	} else {
		parts = append(parts, "commit unknown")
	}
	switch {
	case b.Date != "" && b.committed:
		parts = append(parts, "committed "+b.Date)
	case b.Date != "":
		parts = append(parts, "built "+b.Date)
	}
	parts = append(parts, fmt.Sprintf("%s %s/%s", b.Go, b.OS, b.Arch))
	return fmt.Sprintf("mlproxy %s (%s)", b.Version, strings.Join(parts, ", "))
}

func versionCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version, commit, build date and Go version",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b := currentBuild()
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(b)
			}
			_, err := fmt.Fprintln(cmd.OutOrStdout(), b)
			return err
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON: version, commit, date, go, os, arch")
	return cmd
}
