package bench

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"
)

// Mode is one kind of measurement.
type Mode string

// The modes.
const (
	// ModeOne appends one record at a time: the next after the previous
	// one's acknowledgement.
	ModeOne Mode = "one"
	// ModeWindow keeps Config.Window appends in flight.
	ModeWindow Mode = "window"
	// ModeBatch appends Config.BatchSize records per request, one request
	// at a time.
	ModeBatch Mode = "batch"
	// ModeRead reads one record at a random offset of a pre-filled log,
	// one read at a time.
	ModeRead Mode = "read"
	// ModeFetch reads batches of up to Config.ReadMax records, in order
	// through a pre-filled log (from the start again at its end).
	ModeFetch Mode = "fetch"
	// ModeConsume streams a pre-filled log from its first record to its
	// last, again and again.
	ModeConsume Mode = "consume"
)

// AllModes are the modes in the order they are run and reported.
var AllModes = []Mode{ModeOne, ModeWindow, ModeBatch, ModeRead, ModeFetch, ModeConsume}

// IsRead reports whether m reads a pre-filled log (rather than appends).
func (m Mode) IsRead() bool { return m == ModeRead || m == ModeFetch || m == ModeConsume }

// Durability is how the two systems' fsync settings are chosen.
type Durability string

const (
	// Matched: both fsync before acknowledging (natlog --fsync always,
	// JetStream sync_interval: always).
	Matched Durability = "matched"
	// Default: each system as it ships. natlog's default is --fsync
	// always, so its figures are the matched ones; JetStream's default
	// acknowledges before fsync.
	Default Durability = "default"
)

// Config says what to run. Make one with DefaultConfig or QuickConfig.
type Config struct {
	// NatlogBin is the natlog binary that serves natlog and JetStream
	// ("natlog serve", "natlog bench-jetstream-server").
	NatlogBin string
	// WorkDir is where the servers' data directories are made (a fresh
	// one per server per round, removed after). Empty: the OS temp dir.
	WorkDir string

	Replicas     []int
	Payloads     []int
	Modes        []Mode
	Durabilities []Durability
	Rounds       int
	// Warmup runs each measurement's load, unmeasured, before Duration.
	Warmup   time.Duration
	Duration time.Duration

	Window    int // appends in flight in ModeWindow
	BatchSize int // records per append in ModeBatch
	ReadMax   int // records per read in ModeFetch and ModeConsume
	// Prefill is how many records the read modes' log holds.
	Prefill int

	// ServerURL, if set, is the NATS URL of a running natlog node or
	// cluster to measure instead of starting one. No server figures then,
	// and JetStream is skipped unless JetStreamURL is set too.
	ServerURL    string
	JetStreamURL string

	// JSONPath and ChartPath (.png or .svg) are written at the end when
	// set.
	JSONPath  string
	ChartPath string

	// ProfileDir, if set, receives CPU profiles of every measurement
	// (not of setup, prefill or warm-up): one per server process, taken
	// through its net/http/pprof endpoint, and one of the load generator
	// (this process, so the client libraries). Names are
	// "<scenario>-<system>-r<round>-<process>.pprof".
	ProfileDir string

	// Progress gets one line per step; nil: none.
	Progress io.Writer
}

// DefaultConfig is the standard set: both replication factors, both
// payloads, every mode, both durabilities, 3 rounds.
func DefaultConfig() Config {
	return Config{
		Replicas:     []int{1, 3},
		Payloads:     []int{100, 1024},
		Modes:        append([]Mode(nil), AllModes...),
		Durabilities: []Durability{Matched, Default},
		Rounds:       3,
		Warmup:       250 * time.Millisecond,
		Duration:     time.Second,
		Window:       256,
		BatchSize:    100,
		ReadMax:      1000,
		Prefill:      10000,
		JSONPath:     "bench-results.json",
	}
}

// QuickConfig is --quick: R1, 100 B, matched durability, one round of
// short measurements; well under a minute.
func QuickConfig() Config {
	c := DefaultConfig()
	c.Replicas = []int{1}
	c.Payloads = []int{100}
	c.Durabilities = []Durability{Matched}
	c.Rounds = 1
	c.Warmup = 100 * time.Millisecond
	c.Duration = 500 * time.Millisecond
	c.Prefill = 5000
	return c
}

// Validate checks c.
func (c *Config) Validate() error {
	if c.NatlogBin == "" && c.ServerURL == "" {
		// Both systems' servers are started from the natlog binary.
		return errors.New("bench: no natlog binary to start servers with")
	}
	if len(c.Replicas) == 0 || len(c.Payloads) == 0 || len(c.Modes) == 0 || len(c.Durabilities) == 0 {
		return errors.New("bench: empty replicas, payloads, modes or durabilities")
	}
	for _, r := range c.Replicas {
		if r != 1 && r != 3 {
			return fmt.Errorf("bench: replicas %d: want 1 or 3", r)
		}
	}
	for _, p := range c.Payloads {
		if p < 1 || p > 512*1024 {
			return fmt.Errorf("bench: payload %d: want 1 B to 512 KiB", p)
		}
	}
	for _, m := range c.Modes {
		if !contains(AllModes, m) {
			return fmt.Errorf("bench: mode %q: want one of %s", m, joinModes(AllModes))
		}
	}
	for _, d := range c.Durabilities {
		if d != Matched && d != Default {
			return fmt.Errorf("bench: durability %q: want matched or default", d)
		}
	}
	switch {
	case c.Rounds < 1:
		return errors.New("bench: rounds must be at least 1")
	case c.Duration <= 0 || c.Warmup < 0:
		return errors.New("bench: duration must be positive and warmup not negative")
	case c.Window < 1 || c.BatchSize < 1 || c.ReadMax < 1 || c.Prefill < c.ReadMax:
		return errors.New("bench: window, batch and read sizes must be positive, and prefill at least the read size")
	}
	return nil
}

// ParseModes parses a comma-separated list of modes ("all" for every mode).
func ParseModes(s string) ([]Mode, error) {
	if s == "all" {
		return append([]Mode(nil), AllModes...), nil
	}
	var ms []Mode
	for f := range strings.SplitSeq(s, ",") {
		m := Mode(strings.TrimSpace(f))
		if !contains(AllModes, m) {
			return nil, fmt.Errorf("mode %q: want one of %s (or all)", m, joinModes(AllModes))
		}
		if !contains(ms, m) {
			ms = append(ms, m)
		}
	}
	return ms, nil
}

// ParseDurabilities parses a comma-separated list of durabilities.
func ParseDurabilities(s string) ([]Durability, error) {
	var ds []Durability
	for f := range strings.SplitSeq(s, ",") {
		d := Durability(strings.TrimSpace(f))
		if d != Matched && d != Default {
			return nil, fmt.Errorf("durability %q: want matched or default", d)
		}
		if !contains(ds, d) {
			ds = append(ds, d)
		}
	}
	return ds, nil
}

// ParseInts parses a comma-separated list of integers; a value may end in
// KiB or K (1024) or B.
func ParseInts(s string) ([]int, error) {
	var ns []int
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		mult := 1
		switch {
		case strings.HasSuffix(f, "KiB"):
			f, mult = strings.TrimSuffix(f, "KiB"), 1024
		case strings.HasSuffix(f, "K"):
			f, mult = strings.TrimSuffix(f, "K"), 1024
		case strings.HasSuffix(f, "B"):
			f = strings.TrimSuffix(f, "B")
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("%q is not a number", f)
		}
		if !contains(ns, n*mult) {
			ns = append(ns, n*mult)
		}
	}
	return ns, nil
}

func contains[T comparable](s []T, v T) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

func joinModes(ms []Mode) string {
	s := make([]string, len(ms))
	for i, m := range ms {
		s[i] = string(m)
	}
	return strings.Join(s, ", ")
}

// Scenario is one cell of the matrix, measured for both systems.
type Scenario struct {
	Replicas   int        `json:"replicas"`
	Durability Durability `json:"durability"`
	Payload    int        `json:"payload_bytes"`
	Mode       Mode       `json:"mode"`
}

// Name is how the scenario is shown: "R1 matched window 100B".
func (s Scenario) Name() string {
	return fmt.Sprintf("R%d %s %s %s", s.Replicas, s.Durability, s.Mode, sizeName(s.Payload))
}

func sizeName(n int) string {
	if n >= 1024 && n%1024 == 0 {
		return strconv.Itoa(n/1024) + "KiB"
	}
	return strconv.Itoa(n) + "B"
}

// scenarios lists c's scenarios in run order. Reads do not depend on the
// durability setting (nothing is fsynced on a read), so read modes are
// measured under Matched only, unless only Default was asked for.
func (c *Config) scenarios() []Scenario {
	var out []Scenario
	for _, r := range c.Replicas {
		for _, d := range c.Durabilities {
			for _, p := range c.Payloads {
				for _, m := range c.Modes {
					if m.IsRead() && d == Default && contains(c.Durabilities, Matched) {
						continue
					}
					out = append(out, Scenario{Replicas: r, Durability: d, Payload: p, Mode: m})
				}
			}
		}
	}
	return out
}
