package conflict

import (
	"go/build"
	"strings"
	"testing"
)

// TestPure: the rules are pure functions. Neither this package nor any
// package of this module it imports may import I/O, logging, metrics, or
// the tailer and config packages (the row-change contract is package
// change).
func TestPure(t *testing.T) {
	const module = "github.com/mlproxy/mlproxy/"
	forbidden := []string{"database/sql", "net", "net/http", "os", "os/exec", "io/fs",
		module + "binlog", module + "config", module + "applier", module + "hlc",
		"github.com/prometheus/client_golang/prometheus", "go.uber.org/zap"}
	seen := map[string]bool{}
	var walk func(path string, from string)
	walk = func(path, from string) {
		if seen[path] {
			return
		}
		seen[path] = true
		p, err := build.Import(path, ".", 0)
		if err != nil {
			t.Fatalf("import %s: %v", path, err)
		}
		for _, imp := range p.Imports {
			for _, f := range forbidden {
				if imp == f {
					t.Errorf("%s (reached from %s) imports %s", path, from, imp)
				}
			}
			if strings.HasPrefix(imp, module) {
				walk(imp, path)
			}
		}
	}
	walk(module+"conflict", "the test")
	if len(seen) < 3 {
		t.Fatalf("walked only %v: the import graph was not read", seen)
	}
}
