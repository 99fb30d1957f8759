package bench

import (
	"bytes"
	"context"
	"encoding/json"
	"image/png"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// buildNatlog builds the natlog binary (which runs both systems' servers)
// into dir.
func buildNatlog(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "natlog")
	out, err := exec.Command("go", "build", "-o", bin, "github.com/natlog/natlog").CombinedOutput()
	if err != nil {
		t.Fatalf("go build natlog: %v\n%s", err, out)
	}
	return bin
}

// TestQuickRun runs the harness as --quick does, for two modes, against
// real natlog and JetStream server processes, and checks that the harness
// works: figures for both systems, a JSON file that parses back, a chart.
// It does not judge speed.
func TestQuickRun(t *testing.T) {
	if testing.Short() {
		t.Skip("starts server processes")
	}
	dir := t.TempDir()
	cfg := QuickConfig()
	cfg.NatlogBin = buildNatlog(t, dir)
	cfg.WorkDir = dir
	cfg.Modes = []Mode{ModeWindow, ModeFetch}
	cfg.Warmup = 50 * time.Millisecond
	cfg.Duration = 300 * time.Millisecond
	cfg.Prefill = 2000
	cfg.JSONPath = filepath.Join(dir, "results.json")
	cfg.ChartPath = filepath.Join(dir, "chart.png")
	var progress bytes.Buffer
	cfg.Progress = &progress

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := Run(ctx, cfg)
	if err != nil {
		t.Fatalf("Run: %v\nprogress:\n%s", err, progress.String())
	}

	if got := strings.Count(progress.String(), "\n["); got != 3 { // the first line has no leading newline
		t.Errorf("progress has %d step lines after the first, want 3:\n%s", got, progress.String())
	}
	if len(res.Scenarios) != 2 {
		t.Fatalf("%d scenarios, want 2", len(res.Scenarios))
	}
	for _, s := range res.Scenarios {
		for name, sr := range map[string]*SystemResult{SystemNatlog: s.Natlog, SystemJetStream: s.JetStream} {
			if sr == nil || len(sr.Rounds) != 1 {
				t.Fatalf("%s %s: results %+v, want one round", s.Name, name, sr)
			}
			f := sr.Rounds[0]
			if f.RecordsPerSec <= 0 || f.Records <= 0 || f.MBPerSec <= 0 {
				t.Errorf("%s %s: records/s %v, records %d, MB/s %v; want them positive", s.Name, name, f.RecordsPerSec, f.Records, f.MBPerSec)
			}
			if f.Ops <= 0 || f.P50 <= 0 || f.P50 > f.P90 || f.P90 > f.P99 || f.P99 > f.P999 {
				t.Errorf("%s %s: %d ops, percentiles p50 %v p90 %v p99 %v p99.9 %v; want ordered and positive",
					s.Name, name, f.Ops, f.P50, f.P90, f.P99, f.P999)
			}
			if f.ServerCPUSeconds <= 0 || f.ServerPeakRSSMB <= 0 {
				t.Errorf("%s %s: server CPU %vs, peak RSS %v MiB; want both measured", s.Name, name, f.ServerCPUSeconds, f.ServerPeakRSSMB)
			}
			if sr.Summary.RecordsPerSec.Median != f.RecordsPerSec {
				t.Errorf("%s %s: one round's median %v != its figure %v", s.Name, name, sr.Summary.RecordsPerSec.Median, f.RecordsPerSec)
			}
		}
		if s.Ratio == nil || s.Ratio.RecordsPerSec <= 0 {
			t.Errorf("%s: ratio %+v, want a positive records/s ratio", s.Name, s.Ratio)
		}
	}

	b, err := os.ReadFile(cfg.JSONPath)
	if err != nil {
		t.Fatal(err)
	}
	var back Results
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatalf("the JSON file does not parse: %v", err)
	}
	var names []string
	for _, s := range back.Scenarios {
		names = append(names, s.Name)
	}
	if want := "R1 matched window 100B,R1 matched fetch 100B"; strings.Join(names, ",") != want {
		t.Errorf("JSON scenarios %q, want %q", names, want)
	}
	if back.Scenarios[0].JetStream == nil || len(back.Scenarios[0].JetStream.Rounds) != 1 {
		t.Errorf("JSON lost JetStream's figures: %+v", back.Scenarios[0])
	}

	f, err := os.Open(cfg.ChartPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	img, err := png.Decode(f)
	if err != nil {
		t.Fatalf("the chart is not a PNG: %v", err)
	}
	if r := img.Bounds(); r.Dx() < 100 || r.Dy() < 100 {
		t.Errorf("chart is %v, too small to show anything", r)
	}

	var table bytes.Buffer
	if err := WriteTable(&table, res); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"R1 matched window 100B", "natlog/JS", "jetstream"} {
		if !strings.Contains(table.String(), want) {
			t.Errorf("table lacks %q:\n%s", want, table.String())
		}
	}

	// Every server stopped and its data directory was removed.
	left, _ := filepath.Glob(filepath.Join(dir, "natlog-bench-*"))
	if len(left) > 0 {
		t.Errorf("server directories left behind: %q", left)
	}
}

func TestWriteChartSVG(t *testing.T) {
	res := &Results{Scenarios: []ScenarioResult{{
		Scenario:  Scenario{Replicas: 1, Durability: Matched, Payload: 100, Mode: ModeOne},
		Name:      "R1 matched one 100B",
		Natlog:    &SystemResult{Rounds: []Figures{{}}, Summary: Summary{RecordsPerSec: Stat{Median: 10}, P50: Stat{Median: 1}, P99: Stat{Median: 2}}},
		JetStream: &SystemResult{Rounds: []Figures{{}}, Summary: Summary{RecordsPerSec: Stat{Median: 5}, P50: Stat{Median: 2}, P99: Stat{Median: 3}}},
	}}}
	path := filepath.Join(t.TempDir(), "chart.svg")
	if err := WriteChart(path, res); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(b, []byte("<svg")) || !bytes.Contains(b, []byte("records/s")) {
		t.Errorf("not an SVG chart of records/s: %.200s", b)
	}
	if err := WriteChart(filepath.Join(t.TempDir(), "chart.gif"), res); err == nil {
		t.Error("WriteChart accepted a .gif")
	}
}
