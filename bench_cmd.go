package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/natlog/natlog/bench"
)

// runBench runs "natlog bench": natlog and JetStream side by side.
func runBench(args []string, stdout, stderr io.Writer) error {
	def := bench.DefaultConfig()
	fs := newFlagSet("bench", "[flags]", stderr)
	quick := fs.Bool("quick", false, "a quick run: R1, 100 B, matched durability, one short round (under a minute);\nother flags still apply on top")
	replicas := fs.String("replicas", "1,3", "replication factors to measure: 1, 3 or 1,3")
	payloads := fs.String("payload", "100,1024", "record sizes in bytes, comma-separated (e.g. 100,1KiB)")
	modes := fs.String("mode", "all", "what to measure, comma-separated: one (append one at a time), window (appends in flight),\nbatch (batch appends), read (single records at random offsets), fetch (batch reads),\nconsume (stream from offset 0); or all")
	durs := fs.String("durability", "matched,default", "matched (both fsync before acknowledging) and/or default (each as it ships)")
	rounds := fs.Int("rounds", def.Rounds, "rounds: each scenario is measured this many times per system, alternately")
	duration := fs.Duration("duration", def.Duration, "measured time per scenario, system and round")
	warmup := fs.Duration("warmup", def.Warmup, "unmeasured load before each measurement")
	window := fs.Int("window", def.Window, "appends in flight in window mode")
	batch := fs.Int("batch", def.BatchSize, "records per batch append in batch mode")
	readMax := fs.Int("read-max", def.ReadMax, "records per batch read in fetch and consume modes")
	prefill := fs.Int("prefill", def.Prefill, "records in the log that the read modes read")
	natlogBin := fs.String("natlog-bin", "", "the natlog binary that runs the servers (default: this one)")
	workDir := fs.String("work-dir", "", "where the servers' data directories go (default: the OS temp dir)")
	server := fs.String("server", "", "NATS URL of a running natlog node or cluster to measure instead of starting one\n(no server CPU/memory figures; JetStream is skipped unless --jetstream-url is given)")
	jsURL := fs.String("jetstream-url", "", "with --server: NATS URL of a running JetStream to compare with")
	jsonPath := fs.String("json", def.JSONPath, "file for all figures as JSON (empty: none)")
	chart := fs.String("chart", "", "chart of throughput and latency per scenario, a .png or .svg file (empty: none)")
	profile := fs.String("profile", "", "directory for CPU profiles of every measurement: each server process's and the load generator's\n(go tool pprof FILE; empty: none)")
	pos, err := parseFlags(fs, args, nil)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, pos)
	}

	cfg := def
	if *quick {
		cfg = bench.QuickConfig()
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	for name := range set {
		switch name {
		case "replicas":
			cfg.Replicas, err = bench.ParseInts(*replicas)
		case "payload":
			cfg.Payloads, err = bench.ParseInts(*payloads)
		case "mode":
			cfg.Modes, err = bench.ParseModes(*modes)
		case "durability":
			cfg.Durabilities, err = bench.ParseDurabilities(*durs)
		case "rounds":
			cfg.Rounds = *rounds
		case "duration":
			cfg.Duration = *duration
		case "warmup":
			cfg.Warmup = *warmup
		case "window":
			cfg.Window = *window
		case "batch":
			cfg.BatchSize = *batch
		case "read-max":
			cfg.ReadMax = *readMax
		case "prefill":
			cfg.Prefill = *prefill
		}
		if err != nil {
			return fmt.Errorf("%w: --%s: %v", errUsage, name, err)
		}
	}
	cfg.JSONPath, cfg.ChartPath = *jsonPath, *chart
	cfg.ServerURL, cfg.JetStreamURL = *server, *jsURL
	cfg.WorkDir = *workDir
	cfg.ProfileDir = *profile
	cfg.NatlogBin = *natlogBin
	if cfg.NatlogBin == "" {
		if cfg.NatlogBin, err = os.Executable(); err != nil {
			return fmt.Errorf("bench: finding this binary: %w (use --natlog-bin)", err)
		}
	}
	cfg.Progress = stderr
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}

	// Ctrl-C stops the run; the servers are stopped and what was measured
	// so far is reported.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	start := time.Now()
	res, runErr := bench.Run(ctx, cfg)
	if res != nil {
		fmt.Fprintln(stdout)
		if err := bench.WriteTable(stdout, res); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "\n%d scenarios in %s", len(res.Scenarios), time.Since(start).Round(time.Second))
		if cfg.JSONPath != "" {
			fmt.Fprintf(stdout, "; figures in %s", cfg.JSONPath)
		}
		if cfg.ChartPath != "" {
			fmt.Fprintf(stdout, "; chart in %s", cfg.ChartPath)
		}
		fmt.Fprintln(stdout)
	}
	return runErr
}
