package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strings"
	"time"
)

// System names, as in the results.
const (
	SystemNatlog    = "natlog"
	SystemJetStream = "jetstream"
)

// Results are everything one run measured; the JSON file holds them.
type Results struct {
	Started time.Time `json:"started"`
	Seconds float64   `json:"seconds"`
	Host    Host      `json:"host"`
	Setup   Setup     `json:"setup"`
	// Notes say how to read the figures.
	Notes     []string         `json:"notes"`
	Scenarios []ScenarioResult `json:"scenarios"`
}

// Host describes where the run ran.
type Host struct {
	GOOS           string `json:"goos"`
	GOARCH         string `json:"goarch"`
	CPUs           int    `json:"cpus"`
	GoVersion      string `json:"go_version"`
	Natlog         string `json:"natlog"`
	NATSServer     string `json:"nats_server"`
	NATSGoClient   string `json:"nats_go"`
	NatlogServer   string `json:"natlog_server,omitempty"`    // --server
	JetStreamServe string `json:"jetstream_server,omitempty"` // --jetstream-url
}

// Setup echoes the configuration that shaped the figures.
type Setup struct {
	Rounds    int     `json:"rounds"`
	WarmupS   float64 `json:"warmup_seconds"`
	DurationS float64 `json:"duration_seconds"`
	Window    int     `json:"window"`
	BatchSize int     `json:"batch_size"`
	ReadMax   int     `json:"read_max"`
	Prefill   int     `json:"prefill"`
}

// ScenarioResult is one scenario's figures for both systems.
type ScenarioResult struct {
	Scenario
	Name      string        `json:"name"`
	Natlog    *SystemResult `json:"natlog,omitempty"`
	JetStream *SystemResult `json:"jetstream,omitempty"`
	// Ratio is natlog's medians over JetStream's (when both ran).
	Ratio *Ratios  `json:"ratio_natlog_over_jetstream,omitempty"`
	Notes []string `json:"notes,omitempty"`
}

// SystemResult is one system's figures for one scenario.
type SystemResult struct {
	Rounds  []Figures `json:"rounds"`
	Summary Summary   `json:"summary"`
	// Errors are the failed rounds' errors (a failed round has no figures).
	Errors []string `json:"errors,omitempty"`
	// SameAs names the scenario whose measurements these are, when they
	// were not measured again (natlog's default durability is matched).
	SameAs string `json:"same_as,omitempty"`
}

// Run runs cfg's scenarios, alternating natlog and JetStream round by
// round, and writes the JSON and chart files it names. It stops early,
// with what it has, when ctx ends.
func Run(ctx context.Context, cfg Config) (*Results, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	res := &Results{
		Started: time.Now().UTC(),
		Host: Host{GOOS: runtime.GOOS, GOARCH: runtime.GOARCH, CPUs: runtime.NumCPU(), GoVersion: runtime.Version(),
			NATSServer: moduleVersion("github.com/nats-io/nats-server/v2"), NATSGoClient: moduleVersion("github.com/nats-io/nats.go"),
			NatlogServer: cfg.ServerURL, JetStreamServe: cfg.JetStreamURL},
		Setup: Setup{Rounds: cfg.Rounds, WarmupS: cfg.Warmup.Seconds(), DurationS: cfg.Duration.Seconds(),
			Window: cfg.Window, BatchSize: cfg.BatchSize, ReadMax: cfg.ReadMax, Prefill: cfg.Prefill},
	}
	if cfg.NatlogBin != "" {
		res.Host.Natlog = versionOf(cfg.NatlogBin)
	}
	runJS := cfg.ServerURL == "" || cfg.JetStreamURL != ""
	res.Notes = notes(&cfg, runJS)

	scs := cfg.scenarios()
	res.Scenarios = make([]ScenarioResult, len(scs))
	index := map[Scenario]int{}
	for i, sc := range scs {
		res.Scenarios[i] = ScenarioResult{Scenario: sc, Name: sc.Name(), Natlog: &SystemResult{}}
		if runJS {
			res.Scenarios[i].JetStream = &SystemResult{}
		}
		index[sc] = i
	}
	// natlog's default durability is --fsync always: its default
	// scenarios reuse the matched measurements when those are run.
	reuse := func(sc Scenario) (int, bool) {
		if sc.Durability != Default {
			return 0, false
		}
		m := sc
		m.Durability = Matched
		i, ok := index[m]
		return i, ok
	}

	type step struct {
		sc     Scenario
		system string
		round  int
	}
	var steps []step
	for r := 1; r <= cfg.Rounds; r++ {
		for _, sc := range scs {
			systems := []string{SystemNatlog, SystemJetStream}
			if r%2 == 0 {
				// Alternate which system goes first, so neither always
				// runs on a machine the other has just warmed.
				systems[0], systems[1] = systems[1], systems[0]
			}
			for _, sys := range systems {
				if sys == SystemJetStream && !runJS {
					continue
				}
				if _, ok := reuse(sc); ok && sys == SystemNatlog {
					continue
				}
				steps = append(steps, step{sc, sys, r})
			}
		}
	}

	for i, st := range steps {
		if ctx.Err() != nil {
			break
		}
		if cfg.Progress != nil {
			eta := ""
			if i > 0 {
				left := time.Since(res.Started) / time.Duration(i) * time.Duration(len(steps)-i)
				eta = fmt.Sprintf(" (about %s left)", left.Round(time.Second))
			}
			fmt.Fprintf(cfg.Progress, "[%d/%d] R%d %s %s %s %s round %d%s\n", i+1, len(steps),
				st.sc.Replicas, st.sc.Mode, sizeName(st.sc.Payload), st.sc.Durability, st.system, st.round, eta)
		}
		sr := res.Scenarios[index[st.sc]].Natlog
		if st.system == SystemJetStream {
			sr = res.Scenarios[index[st.sc]].JetStream
		}
		f, err := measureStep(ctx, &cfg, st.sc, st.system, st.round, fmt.Sprintf("%d-%d", st.round, i))
		if err != nil {
			msg := fmt.Sprintf("round %d: %v", st.round, err)
			sr.Errors = append(sr.Errors, msg)
			if cfg.Progress != nil {
				fmt.Fprintf(cfg.Progress, "    failed: %s\n", firstLine(err.Error()))
			}
			continue
		}
		sr.Rounds = append(sr.Rounds, f)
	}

	for i := range res.Scenarios {
		s := &res.Scenarios[i]
		if j, ok := reuse(s.Scenario); ok {
			same := *res.Scenarios[j].Natlog
			same.SameAs = res.Scenarios[j].Name
			s.Natlog = &same
			s.Notes = append(s.Notes, "natlog's default is --fsync always: its figures are those of "+res.Scenarios[j].Name)
		}
		for _, sr := range []*SystemResult{s.Natlog, s.JetStream} {
			if sr != nil && sr.SameAs == "" {
				sr.Summary = summarize(sr.Rounds)
			}
		}
		if s.Natlog != nil && s.JetStream != nil && len(s.Natlog.Rounds) > 0 && len(s.JetStream.Rounds) > 0 {
			r := ratios(s.Natlog.Summary, s.JetStream.Summary)
			s.Ratio = &r
		}
	}
	res.Seconds = time.Since(res.Started).Seconds()

	var errs []error
	if cfg.JSONPath != "" {
		if err := writeJSON(cfg.JSONPath, res); err != nil {
			errs = append(errs, err)
		}
	}
	if cfg.ChartPath != "" {
		if err := WriteChart(cfg.ChartPath, res); err != nil {
			errs = append(errs, fmt.Errorf("chart: %w", err))
		}
	}
	if ctx.Err() != nil {
		errs = append(errs, fmt.Errorf("stopped early: %w", ctx.Err()))
	}
	return res, errors.Join(errs...)
}

func notes(cfg *Config, runJS bool) []string {
	n := []string{
		"records/s and MB/s: higher is better; latency, CPU and memory: lower is better. Ratios are natlog's median over JetStream's.",
		"Latency is per operation: one append, one batch append of " + fmt.Sprint(cfg.BatchSize) + " records, one read, one batch read; for consume the time per " + fmt.Sprint(cfg.ReadMax) + " records received.",
		"matched durability: natlog --fsync always, JetStream sync_interval always (fsync before every acknowledgement). default: each as it ships; natlog's default is --fsync always, so its default figures are its matched ones; JetStream's default acknowledges before fsync.",
		"Read modes (read, fetch, consume) fsync nothing, so they are measured under matched durability only.",
		"batch: natlog one msgpack batch append per request; JetStream an atomic batch publish (Nats-Batch-Id headers; nats.go v1.55 has no call for it), one commit request per batch.",
		"window: natlog client AppendAsync with " + fmt.Sprint(cfg.Window) + " pending (queued records go out as batches, one request in flight per log); JetStream PublishMsgAsync with max pending " + fmt.Sprint(cfg.Window) + ".",
		"read: natlog client Read (R3: with WithPreferredNode(n1), the node in the process of the NATS server the load generator is connected to); JetStream direct get (answered by the replica on the server the load generator is connected to). fetch: natlog client Fetch of " + fmt.Sprint(cfg.ReadMax) + " in order; JetStream an ordered consumer's Fetch(" + fmt.Sprint(cfg.ReadMax) + "). consume: natlog client Consume; JetStream an ordered consumer's Consume callback.",
		"R3: natlog's three nodes share n1's embedded NATS server, where the load generator connects, and n1 leads (natlog cluster step-down n1 after the election); JetStream's load generator connects to the stream leader's server (no route hop to the leader for either).",
		"Server CPU seconds and peak RSS cover each measurement's servers over their whole lives (start, setup, prefill, warmup, measurement, stop), summed over the processes (3 for R3): fresh servers per system per round.",
	}
	if cfg.ServerURL != "" {
		n = append(n, "natlog was an existing deployment ("+cfg.ServerURL+"): no natlog server figures, and its replication is whatever that deployment has.")
	}
	if !runJS {
		n = append(n, "JetStream was skipped (--server without --jetstream-url).")
	}
	return n
}

// measureStep measures one system on one scenario: it starts fresh
// servers (unless an existing deployment is used), sets up the log or
// stream, pre-fills it for read modes, warms up, measures, and stops the
// servers to read their CPU time and peak memory.
func measureStep(ctx context.Context, cfg *Config, sc Scenario, system string, round int, id string) (Figures, error) {
	var f Figures
	setupCtx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()

	var (
		srv     *servers
		url     string
		cleanup func(context.Context) error
		err     error
	)
	began := time.Now()
	external := (system == SystemNatlog && cfg.ServerURL != "") || (system == SystemJetStream && cfg.JetStreamURL != "")
	switch {
	case system == SystemNatlog && external:
		url = cfg.ServerURL
	case system == SystemJetStream && external:
		url = cfg.JetStreamURL
	case system == SystemNatlog:
		srv, err = startNatlog(setupCtx, cfg.NatlogBin, cfg.WorkDir, sc.Replicas, "always", cfg.ProfileDir != "")
	default:
		sync := "always"
		if sc.Durability == Default {
			sync = "default"
		}
		srv, err = startJetStream(setupCtx, cfg.NatlogBin, cfg.WorkDir, sc.Replicas, sync, cfg.ProfileDir != "")
	}
	if err != nil {
		return f, err
	}
	if srv != nil {
		url = srv.url
	}
	stopServers := func() error {
		if srv == nil {
			return nil
		}
		t0 := time.Now()
		cpu, rss, err := srv.stop()
		f.ServerCPUSeconds, f.ServerPeakRSSMB = cpu, rss
		f.StopSeconds = time.Since(t0).Seconds()
		srv = nil
		return err
	}
	defer stopServers()

	// A fixed name on fresh servers; a fresh name on an existing one.
	logName := "bench"
	if external {
		logName = "bench-" + time.Now().UTC().Format("20060102T150405") + "-" + id
	}
	var t target
	if system == SystemNatlog {
		// Single-record reads in a cluster we started go to n1, the node
		// in the process of the NATS server the load generator uses, as
		// JetStream's direct gets are answered by the replica on the
		// server the client is connected to (and as an application
		// reads from the sidecar next to it, client.WithPreferredNode).
		readNode := ""
		if srv != nil && sc.Replicas > 1 && sc.Mode == ModeRead {
			readNode = "n1"
		}
		nt, err := dialNatlog(ctx, url, logName, cfg.Window, readNode)
		if err != nil {
			return f, err
		}
		if external {
			cleanup = nt.deleteLog
		}
		t = nt
	} else {
		jt, err := dialJetStream(url, strings.ToUpper(strings.ReplaceAll(logName, "-", "_")), sc.Replicas, cfg.Window)
		if err != nil {
			return f, err
		}
		if external {
			cleanup = jt.deleteStream
		}
		t = jt
	}
	defer t.Close()

	if err := t.Setup(setupCtx); err != nil {
		return f, withServerLog(err, srv)
	}
	if jt, ok := t.(*jsTarget); ok && srv != nil && sc.Replicas > 1 {
		// The load generator talks to the stream leader's server, as it
		// talks to the one NATS server all natlog nodes use: no route hop
		// on the way to the leader.
		if t, err = jsToLeader(setupCtx, jt, srv, sc, cfg); err != nil {
			return f, withServerLog(err, srv)
		}
		defer t.Close()
	}
	f.StartSeconds = time.Since(began).Seconds()
	if cleanup != nil {
		defer func() {
			if cleanup != nil {
				cleanup(context.WithoutCancel(ctx))
			}
		}()
	}
	if sc.Mode.IsRead() {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Minute)
		err := prefill(pctx, t, cfg, sc)
		cancel()
		if err != nil {
			return f, withServerLog(err, srv)
		}
	}
	if cfg.Warmup > 0 {
		if _, err := load(ctx, t, cfg, sc, time.Now().Add(cfg.Warmup), newLatencies()); err != nil {
			return f, withServerLog(fmt.Errorf("warmup: %w", err), srv)
		}
	}
	lat := newLatencies()
	var prof *profiles
	if cfg.ProfileDir != "" {
		if prof, err = startProfiles(ctx, cfg, sc, system, round, srv); err != nil {
			return f, err
		}
	}
	start := time.Now()
	n, err := load(ctx, t, cfg, sc, start.Add(cfg.Duration), lat)
	elapsed := time.Since(start)
	if prof != nil {
		if perr := prof.finish(); perr != nil && err == nil {
			err = fmt.Errorf("profiles: %w", perr)
		}
	}
	if err != nil {
		return f, withServerLog(err, srv)
	}
	f.Records = n
	f.Seconds = elapsed.Seconds()
	f.RecordsPerSec = float64(n) / elapsed.Seconds()
	f.MBPerSec = f.RecordsPerSec * float64(sc.Payload) / 1e6
	lat.fill(&f)
	if cleanup != nil {
		cleanup(context.WithoutCancel(ctx))
		cleanup = nil
	}
	t.Close()
	if err := stopServers(); err != nil {
		return f, err
	}
	return f, nil
}

// jsToLeader returns a target connected to the server that leads jt's
// stream (jt itself if it already is), closing jt if not.
func jsToLeader(ctx context.Context, jt *jsTarget, srv *servers, sc Scenario, cfg *Config) (target, error) {
	leader, err := jt.leader(ctx)
	if err != nil {
		return nil, err
	}
	url := srv.urls[leader]
	if url == "" || url == srv.url {
		return jt, nil
	}
	jt.Close()
	nt, err := dialJetStream(url, jt.name, sc.Replicas, cfg.Window)
	if err != nil {
		return nil, err
	}
	if err := nt.Setup(ctx); err != nil {
		nt.Close()
		return nil, err
	}
	return nt, nil
}

func withServerLog(err error, s *servers) error {
	if s == nil {
		return err
	}
	if f := s.failed(); f != nil {
		return fmt.Errorf("%w (%v)", err, f)
	}
	return err
}

func writeJSON(path string, res *Results) error {
	b, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// moduleVersion is the version of a module in this binary's build.
func moduleVersion(path string) string {
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return ""
	}
	for _, d := range bi.Deps {
		if d.Path == path {
			if d.Replace != nil {
				return d.Replace.Version
			}
			return d.Version
		}
	}
	return ""
}

func firstLine(s string) string {
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		return s[:i]
	}
	return s
}
