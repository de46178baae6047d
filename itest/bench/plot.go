package main

import (
	"fmt"
	"math"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// ratio is one proxy bench figure as the plot shows it.
type ratio struct {
	label string  // workload, mode, threads
	qps   float64 // mlproxy qps / HAProxy qps
	cpu   float64 // mlproxy CPU per statement / HAProxy's
}

// plotRatios draws the figures' ratios to HAProxy as grouped bars, with
// the targets as lines (qps at least 0.95x, CPU at most 1.25x), into path
// (the extension picks the format: .svg, .png, .pdf).
func plotRatios(path string, rs []ratio) error {
	if len(rs) == 0 {
		return nil
	}
	p := plot.New()
	p.Title.Text = "mlproxy against HAProxy (mode tcp), same server, same run"
	p.Y.Label.Text = "ratio to HAProxy"
	w := vg.Points(7)
	qps, cpu := make(plotter.Values, len(rs)), make(plotter.Values, len(rs))
	labels := make([]string, len(rs))
	for i, r := range rs {
		qps[i], cpu[i], labels[i] = r.qps, r.cpu, r.label
	}
	bq, err := plotter.NewBarChart(qps, w)
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	bc, err := plotter.NewBarChart(cpu, w)
	if err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	bq.LineStyle.Width, bc.LineStyle.Width = 0, 0
	bq.Color, bc.Color = plotutil.Color(0), plotutil.Color(1)
	bq.Offset, bc.Offset = -w/2, w/2
	p.Add(bq, bc)
	p.Legend.Add("qps, mlproxy / HAProxy (target ≥ 0.95)", bq)
	p.Legend.Add("CPU per statement, mlproxy / HAProxy (target ≤ 1.25)", bc)
	p.Legend.Top = true
	for i, target := range []float64{0.95, 1.25} {
		l, err := plotter.NewLine(plotter.XYs{{X: -0.5, Y: target}, {X: float64(len(rs)) - 0.5, Y: target}})
		if err != nil {
			return fmt.Errorf("plot: %w", err)
		}
		l.Color = plotutil.Color(i)
		l.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
		p.Add(l)
	}
	p.NominalX(labels...)
	p.X.Tick.Label.Rotation = math.Pi / 3
	p.X.Tick.Label.XAlign, p.X.Tick.Label.YAlign = -1, -0.5
	top := 1.25
	for _, r := range rs {
		top = max(top, r.qps, r.cpu)
	}
	p.Y.Min, p.Y.Max = 0, top*1.3 // room for the legend
	if err := p.Save(vg.Length(len(rs))*vg.Points(30)+3*vg.Inch, 5*vg.Inch, path); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	fmt.Printf("plot of the ratios: %s\n", path)
	return nil
}
