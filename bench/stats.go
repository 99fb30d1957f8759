package bench

import (
	"math"
	"sort"
	"sync"
	"time"

	"github.com/HdrHistogram/hdrhistogram-go"
)

// Figures are one system's measurements of one scenario in one round.
type Figures struct {
	Records       int64   `json:"records"`
	Seconds       float64 `json:"seconds"`
	RecordsPerSec float64 `json:"records_per_sec"`
	MBPerSec      float64 `json:"mb_per_sec"` // 10^6 bytes of record values per second
	// Latency percentiles in milliseconds, of one operation: an append, a
	// batch append, a read, a batch read; for consume, the time per
	// Config.ReadMax records received.
	P50  float64 `json:"p50_ms"`
	P90  float64 `json:"p90_ms"`
	P99  float64 `json:"p99_ms"`
	P999 float64 `json:"p999_ms"`
	Ops  int64   `json:"ops"`
	// Server side, over the servers' whole lives (start, setup, prefill,
	// warmup, measurement, shutdown), summed over the replicas' processes.
	// Zero when the servers were not started by the benchmark.
	ServerCPUSeconds float64 `json:"server_cpu_seconds"`
	ServerPeakRSSMB  float64 `json:"server_peak_rss_mb"` // sum of each process's peak RSS, MiB
	// StartSeconds is how long the servers took to start and be ready
	// (a leader, the log or stream created); StopSeconds how long they
	// took to stop.
	StartSeconds float64 `json:"start_seconds,omitempty"`
	StopSeconds  float64 `json:"stop_seconds,omitempty"`
}

// Stat is one figure over the rounds.
type Stat struct {
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// Spread is (Max-Min)/Median: the relative width of the range.
func (s Stat) Spread() float64 {
	if s.Median == 0 {
		return 0
	}
	return (s.Max - s.Min) / s.Median
}

// Summary is a system's figures over the rounds.
type Summary struct {
	RecordsPerSec    Stat `json:"records_per_sec"`
	MBPerSec         Stat `json:"mb_per_sec"`
	P50              Stat `json:"p50_ms"`
	P90              Stat `json:"p90_ms"`
	P99              Stat `json:"p99_ms"`
	P999             Stat `json:"p999_ms"`
	ServerCPUSeconds Stat `json:"server_cpu_seconds"`
	ServerPeakRSSMB  Stat `json:"server_peak_rss_mb"`
}

// Ratios are natlog's medians divided by JetStream's. Higher is better for
// throughput; lower is better for latency, CPU and memory.
type Ratios struct {
	RecordsPerSec    float64 `json:"records_per_sec"`
	MBPerSec         float64 `json:"mb_per_sec"`
	P50              float64 `json:"p50_ms"`
	P90              float64 `json:"p90_ms"`
	P99              float64 `json:"p99_ms"`
	P999             float64 `json:"p999_ms"`
	ServerCPUSeconds float64 `json:"server_cpu_seconds"`
	ServerPeakRSSMB  float64 `json:"server_peak_rss_mb"`
}

// newStat summarises values: median (the mean of the middle two for an
// even count), minimum and maximum. No values: all zero.
func newStat(values []float64) Stat {
	if len(values) == 0 {
		return Stat{}
	}
	v := append([]float64(nil), values...)
	sort.Float64s(v)
	n := len(v)
	med := v[n/2]
	if n%2 == 0 {
		med = (v[n/2-1] + v[n/2]) / 2
	}
	return Stat{Median: med, Min: v[0], Max: v[n-1]}
}

// ratio is a/b, or 0 when b is 0 (no figure to compare with).
func ratio(a, b float64) float64 {
	if b == 0 || math.IsNaN(a) || math.IsNaN(b) {
		return 0
	}
	return a / b
}

// summarize makes the summary of rounds.
func summarize(rounds []Figures) Summary {
	pick := func(f func(Figures) float64) Stat {
		v := make([]float64, len(rounds))
		for i, r := range rounds {
			v[i] = f(r)
		}
		return newStat(v)
	}
	return Summary{
		RecordsPerSec:    pick(func(f Figures) float64 { return f.RecordsPerSec }),
		MBPerSec:         pick(func(f Figures) float64 { return f.MBPerSec }),
		P50:              pick(func(f Figures) float64 { return f.P50 }),
		P90:              pick(func(f Figures) float64 { return f.P90 }),
		P99:              pick(func(f Figures) float64 { return f.P99 }),
		P999:             pick(func(f Figures) float64 { return f.P999 }),
		ServerCPUSeconds: pick(func(f Figures) float64 { return f.ServerCPUSeconds }),
		ServerPeakRSSMB:  pick(func(f Figures) float64 { return f.ServerPeakRSSMB }),
	}
}

// ratios compares natlog's summary n with JetStream's j.
func ratios(n, j Summary) Ratios {
	return Ratios{
		RecordsPerSec:    ratio(n.RecordsPerSec.Median, j.RecordsPerSec.Median),
		MBPerSec:         ratio(n.MBPerSec.Median, j.MBPerSec.Median),
		P50:              ratio(n.P50.Median, j.P50.Median),
		P90:              ratio(n.P90.Median, j.P90.Median),
		P99:              ratio(n.P99.Median, j.P99.Median),
		P999:             ratio(n.P999.Median, j.P999.Median),
		ServerCPUSeconds: ratio(n.ServerCPUSeconds.Median, j.ServerCPUSeconds.Median),
		ServerPeakRSSMB:  ratio(n.ServerPeakRSSMB.Median, j.ServerPeakRSSMB.Median),
	}
}

// latencies is an HDR histogram of operation latencies in microseconds,
// from 1 µs to 1 minute with 3 significant digits. It is safe for
// concurrent use.
type latencies struct {
	mu sync.Mutex
	h  *hdrhistogram.Histogram
}

func newLatencies() *latencies {
	return &latencies{h: hdrhistogram.New(1, int64(time.Minute/time.Microsecond), 3)}
}

// record adds one latency (clamped to the histogram's range).
func (l *latencies) record(d time.Duration) {
	us := max(d.Microseconds(), 1)
	l.mu.Lock()
	if l.h.RecordValue(us) != nil {
		l.h.RecordValue(l.h.HighestTrackableValue())
	}
	l.mu.Unlock()
}

// fill sets f's percentiles and operation count.
func (l *latencies) fill(f *Figures) {
	l.mu.Lock()
	defer l.mu.Unlock()
	ms := func(q float64) float64 { return float64(l.h.ValueAtQuantile(q)) / 1000 }
	f.P50, f.P90, f.P99, f.P999 = ms(50), ms(90), ms(99), ms(99.9)
	f.Ops = l.h.TotalCount()
}
