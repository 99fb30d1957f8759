package bench

import (
	"math"
	"testing"
	"time"
)

func TestNewStat(t *testing.T) {
	tests := []struct {
		name   string
		values []float64
		want   Stat
	}{
		{"no values", nil, Stat{}},
		{"one value", []float64{7}, Stat{Median: 7, Min: 7, Max: 7}},
		{"odd count, unsorted", []float64{5, 1, 3}, Stat{Median: 3, Min: 1, Max: 5}},
		{"even count: mean of the middle two", []float64{4, 1, 10, 2}, Stat{Median: 3, Min: 1, Max: 10}},
		{"repeated values", []float64{2, 2, 2, 9, 2}, Stat{Median: 2, Min: 2, Max: 9}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			in := append([]float64(nil), tt.values...)
			if got := newStat(tt.values); got != tt.want {
				t.Errorf("newStat(%v) = %+v, want %+v", tt.values, got, tt.want)
			}
			for i := range in {
				if in[i] != tt.values[i] {
					t.Fatalf("newStat reordered its input: %v", tt.values)
				}
			}
		})
	}
}

func TestSpread(t *testing.T) {
	if got := (Stat{Median: 100, Min: 90, Max: 120}).Spread(); math.Abs(got-0.3) > 1e-12 {
		t.Errorf("spread = %v, want 0.3", got)
	}
	if got := (Stat{}).Spread(); got != 0 {
		t.Errorf("spread of nothing = %v, want 0", got)
	}
}

func TestRatios(t *testing.T) {
	n := summarize([]Figures{
		{RecordsPerSec: 100, P50: 1, P99: 4, ServerCPUSeconds: 2},
		{RecordsPerSec: 300, P50: 3, P99: 8, ServerCPUSeconds: 2},
		{RecordsPerSec: 200, P50: 2, P99: 6, ServerCPUSeconds: 2},
	})
	j := summarize([]Figures{
		{RecordsPerSec: 50, P50: 4, P99: 12, ServerCPUSeconds: 1},
		{RecordsPerSec: 40, P50: 4, P99: 12, ServerCPUSeconds: 1},
	})
	if n.RecordsPerSec != (Stat{Median: 200, Min: 100, Max: 300}) {
		t.Errorf("natlog records/s = %+v", n.RecordsPerSec)
	}
	if j.RecordsPerSec != (Stat{Median: 45, Min: 40, Max: 50}) {
		t.Errorf("jetstream records/s = %+v", j.RecordsPerSec)
	}
	r := ratios(n, j)
	want := Ratios{RecordsPerSec: 200.0 / 45, P50: 0.5, P99: 0.5, ServerCPUSeconds: 2}
	if math.Abs(r.RecordsPerSec-want.RecordsPerSec) > 1e-12 || r.P50 != want.P50 || r.P99 != want.P99 ||
		r.ServerCPUSeconds != want.ServerCPUSeconds {
		t.Errorf("ratios = %+v, want %+v", r, want)
	}
	if r.MBPerSec != 0 || r.P999 != 0 {
		t.Errorf("a ratio over a zero median = %v, %v; want 0 (no comparison)", r.MBPerSec, r.P999)
	}
}

func TestLatencies(t *testing.T) {
	l := newLatencies()
	for i := 1; i <= 1000; i++ {
		l.record(time.Duration(i) * time.Millisecond / 10) // 0.1 ms to 100 ms
	}
	var f Figures
	l.fill(&f)
	if f.Ops != 1000 {
		t.Errorf("ops = %d, want 1000", f.Ops)
	}
	near := func(got, want float64) bool { return math.Abs(got-want) <= want*0.01 }
	if !near(f.P50, 50) || !near(f.P90, 90) || !near(f.P99, 99) || !near(f.P999, 99.9) {
		t.Errorf("percentiles p50 %v p90 %v p99 %v p99.9 %v; want about 50, 90, 99, 99.9 ms", f.P50, f.P90, f.P99, f.P999)
	}
	l.record(2 * time.Hour) // beyond the range: clamped, not lost
	l.fill(&f)
	if f.Ops != 1001 {
		t.Errorf("ops after an out-of-range value = %d, want 1001", f.Ops)
	}
}

func TestScenariosSkipReadsUnderDefault(t *testing.T) {
	c := DefaultConfig()
	c.Replicas, c.Payloads = []int{1}, []int{100}
	var got []string
	for _, s := range c.scenarios() {
		got = append(got, s.Name())
	}
	want := []string{
		"R1 matched one 100B", "R1 matched window 100B", "R1 matched batch 100B",
		"R1 matched read 100B", "R1 matched fetch 100B", "R1 matched consume 100B",
		"R1 default one 100B", "R1 default window 100B", "R1 default batch 100B",
	}
	if len(got) != len(want) {
		t.Fatalf("scenarios = %q, want %q", got, want)
	}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("scenarios = %q, want %q", got, want)
		}
	}
}

func TestParse(t *testing.T) {
	if p, err := ParseInts("100, 1KiB,2K"); err != nil || len(p) != 3 || p[0] != 100 || p[1] != 1024 || p[2] != 2048 {
		t.Errorf("ParseInts = %v, %v", p, err)
	}
	if _, err := ParseModes("one,bogus"); err == nil {
		t.Error("ParseModes accepted an unknown mode")
	}
	if m, err := ParseModes("all"); err != nil || len(m) != len(AllModes) {
		t.Errorf("ParseModes(all) = %v, %v", m, err)
	}
	if _, err := ParseDurabilities("matched,sometimes"); err == nil {
		t.Error("ParseDurabilities accepted an unknown durability")
	}
}

func TestTableCells(t *testing.T) {
	tests := []struct {
		s        Stat
		decimals int
		want     string
	}{
		{Stat{Median: 1234567.4, Min: 1234567.4, Max: 1234567.4}, 0, "1,234,567    "},
		{Stat{Median: 100, Min: 90, Max: 110}, 0, "100 ±10%"},
		{Stat{Median: 0.5, Min: 0.25, Max: 0.75}, 3, "0.500 ±50%"},
		{Stat{}, 2, "-    "},
	}
	for _, tt := range tests {
		if got := cell(tt.s, tt.decimals); got != tt.want {
			t.Errorf("cell(%+v, %d) = %q, want %q", tt.s, tt.decimals, got, tt.want)
		}
	}
	if got := times(31.46); got != "31.5x    " {
		t.Errorf("times(31.46) = %q", got)
	}
	if got := times(0); got != "-" {
		t.Errorf("times(0) = %q, want -", got)
	}
}
