package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestPlotRatios: the plot is an SVG that names every figure and both
// targets.
func TestPlotRatios(t *testing.T) {
	path := filepath.Join(t.TempDir(), "ratios.svg")
	rs := []ratio{{"point_select text 1", 0.66, 2.23}, {"point_select text 16", 0.78, 1.38}, {"write_only prepared 64", 0.94, 1.68}}
	if err := plotRatios(path, rs); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	svg := string(b)
	for _, want := range []string{"<svg", "point_select text 16", "write_only prepared 64", "target ≥ 0.95", "target ≤ 1.25"} {
		if !strings.Contains(svg, want) {
			t.Errorf("the plot lacks %q", want)
		}
	}
}
