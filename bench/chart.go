package bench

import (
	"fmt"
	"image/color"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

var (
	natlogColor    = color.RGBA{R: 0x1f, G: 0x77, B: 0xb4, A: 0xff}
	natlogLight    = color.RGBA{R: 0x9e, G: 0xc9, B: 0xe8, A: 0xff}
	jetstreamColor = color.RGBA{R: 0xd6, G: 0x5f, B: 0x0e, A: 0xff}
	jetstreamLight = color.RGBA{R: 0xf5, G: 0xbf, B: 0x8f, A: 0xff}
)

// WriteChart draws the results to path, a .png or .svg file: one row per
// mode, throughput (records/s, natlog and JetStream side by side, per
// scenario) on the left and latency (p50 and p99 medians) on the right.
func WriteChart(path string, res *Results) error {
	format := strings.TrimPrefix(strings.ToLower(filepath.Ext(path)), ".")
	if format != "png" && format != "svg" {
		return fmt.Errorf("%s: want a .png or .svg file", path)
	}
	var modes []Mode
	byMode := map[Mode][]ScenarioResult{}
	for _, s := range res.Scenarios {
		if _, ok := byMode[s.Mode]; !ok {
			modes = append(modes, s.Mode)
		}
		byMode[s.Mode] = append(byMode[s.Mode], s)
	}
	if len(modes) == 0 {
		return fmt.Errorf("no scenarios to draw")
	}
	rows := make([][]*plot.Plot, len(modes))
	for i, m := range modes {
		tp, err := throughputPlot(m, byMode[m])
		if err != nil {
			return err
		}
		lp, err := latencyPlot(m, byMode[m])
		if err != nil {
			return err
		}
		rows[i] = []*plot.Plot{tp, lp}
	}
	width, rowHeight := 36*vg.Centimeter, 8*vg.Centimeter
	c, err := draw.NewFormattedCanvas(width, rowHeight*vg.Length(len(modes)), format)
	if err != nil {
		return err
	}
	tiles := draw.Tiles{Rows: len(modes), Cols: 2, PadX: vg.Centimeter, PadY: vg.Centimeter / 2,
		PadTop: vg.Centimeter / 2, PadBottom: vg.Centimeter / 2, PadLeft: vg.Centimeter / 2, PadRight: vg.Centimeter / 2}
	canvases := plot.Align(rows, tiles, draw.New(c))
	for i := range rows {
		for j := range rows[i] {
			rows[i][j].Draw(canvases[i][j])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	if _, err := c.WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// label is a scenario's short name within its mode's row:
// "R1 matched\n100B".
func label(s ScenarioResult) string {
	return fmt.Sprintf("R%d %s\n%s", s.Replicas, s.Durability, sizeName(s.Payload))
}

// countTicks labels a records/s axis with whole numbers ("250k").
type countTicks struct{}

func (countTicks) Ticks(min, max float64) []plot.Tick {
	ts := plot.DefaultTicks{}.Ticks(min, max)
	for i := range ts {
		if ts[i].Label == "" {
			continue
		}
		v := ts[i].Value
		switch {
		case v >= 1e6:
			ts[i].Label = strconv.FormatFloat(v/1e6, 'f', -1, 64) + "M"
		case v >= 1e3:
			ts[i].Label = strconv.FormatFloat(v/1e3, 'f', -1, 64) + "k"
		default:
			ts[i].Label = strconv.FormatFloat(v, 'f', -1, 64)
		}
	}
	return ts
}

func labels(ss []ScenarioResult) []string {
	out := make([]string, len(ss))
	for i, s := range ss {
		out[i] = label(s)
	}
	return out
}

// median picks a summary figure, 0 for a system that did not run.
func median(r *SystemResult, f func(Summary) Stat) float64 {
	if r == nil || len(r.Rounds) == 0 && r.SameAs == "" {
		return 0
	}
	return f(r.Summary).Median
}

func throughputPlot(m Mode, ss []ScenarioResult) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = fmt.Sprintf("%s: records/s (higher is better)", m)
	p.Y.Label.Text = "records/s"
	p.Y.Tick.Marker = countTicks{}
	w := vg.Points(14)
	series := []struct {
		name string
		c    color.Color
		f    func(ScenarioResult) float64
	}{
		{"natlog", natlogColor, func(s ScenarioResult) float64 {
			return median(s.Natlog, func(x Summary) Stat { return x.RecordsPerSec })
		}},
		{"JetStream", jetstreamColor, func(s ScenarioResult) float64 {
			return median(s.JetStream, func(x Summary) Stat { return x.RecordsPerSec })
		}},
	}
	for i, se := range series {
		v := make(plotter.Values, len(ss))
		for j, s := range ss {
			v[j] = se.f(s)
		}
		b, err := plotter.NewBarChart(v, w)
		if err != nil {
			return nil, err
		}
		b.Color = se.c
		b.LineStyle.Width = 0
		b.Offset = w * vg.Length(2*i-1) / 2
		p.Add(b)
		p.Legend.Add(se.name, b)
	}
	p.Legend.Top = true
	p.NominalX(labels(ss)...)
	p.Y.Min = 0
	p.Y.Max = headroom(p.Y.Max)
	return p, nil
}

func latencyPlot(m Mode, ss []ScenarioResult) (*plot.Plot, error) {
	p := plot.New()
	what := "per operation"
	if m == ModeConsume {
		what = "per read batch"
	}
	p.Title.Text = fmt.Sprintf("%s: latency %s, ms (lower is better)", m, what)
	p.Y.Label.Text = "ms"
	w := vg.Points(9)
	series := []struct {
		name string
		c    color.Color
		sys  func(ScenarioResult) *SystemResult
		f    func(Summary) Stat
	}{
		{"natlog p50", natlogColor, func(s ScenarioResult) *SystemResult { return s.Natlog }, func(x Summary) Stat { return x.P50 }},
		{"natlog p99", natlogLight, func(s ScenarioResult) *SystemResult { return s.Natlog }, func(x Summary) Stat { return x.P99 }},
		{"JetStream p50", jetstreamColor, func(s ScenarioResult) *SystemResult { return s.JetStream }, func(x Summary) Stat { return x.P50 }},
		{"JetStream p99", jetstreamLight, func(s ScenarioResult) *SystemResult { return s.JetStream }, func(x Summary) Stat { return x.P99 }},
	}
	for i, se := range series {
		v := make(plotter.Values, len(ss))
		for j, s := range ss {
			v[j] = median(se.sys(s), se.f)
		}
		b, err := plotter.NewBarChart(v, w)
		if err != nil {
			return nil, err
		}
		b.Color = se.c
		b.LineStyle.Width = 0
		b.Offset = w * (vg.Length(i) - 1.5)
		p.Add(b)
		p.Legend.Add(se.name, b)
	}
	p.Legend.Top = true
	p.NominalX(labels(ss)...)
	p.Y.Min = 0
	p.Y.Max = headroom(p.Y.Max)
	return p, nil
}

// headroom raises a y axis maximum so that the legend, top right, stays
// clear of the bars.
func headroom(max float64) float64 {
	if max <= 0 {
		return 1
	}
	return max * 1.6
}
