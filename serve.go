package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/sidecar"
)

// runServe runs a node until SIGINT or SIGTERM: the first stops it
// gracefully (exit 0), a second exits at once.
func runServe(args []string, stdout, stderr io.Writer) error {
	cfg := sidecar.DefaultConfig()
	cfg.Version = version
	fs := newFlagSet("serve", "[flags]", stderr)
	fs.StringVar(&cfg.DataDir, "data-dir", cfg.DataDir, "directory of the node's logs, node id and lock file")
	fs.StringVar(&cfg.NodeID, "node-id", "", "the node's id (default: generated on first start and kept in the data dir)")
	fs.StringVar(&cfg.Prefix, "prefix", cfg.Prefix, "first token(s) of every natlog subject, e.g. natlog.append.<log>")
	fs.StringVar(&cfg.NATSListen, "nats-listen", cfg.NATSListen, "host:port of the embedded nats-server (port 0: any free port)")
	fs.StringVar(&cfg.NATSURL, "nats-url", "", "connect to this existing NATS server (comma-separated URLs) instead of embedding one")
	fs.StringVar(&cfg.NATSConfigFile, "nats-config", "", "nats-server configuration file for the embedded server (TLS, accounts, leaf nodes, ...)")
	fs.StringVar(&cfg.NATSCredsFile, "nats-creds", "", "credentials file for the node's NATS connection")
	fs.StringVar(&cfg.NATSUser, "nats-user", "", "user for the node's NATS connection")
	fs.StringVar(&cfg.NATSPassword, "nats-password", "", "password for the node's NATS connection")
	fs.StringVar(&cfg.NATSToken, "nats-token", "", "token for the node's NATS connection")
	leafRemotes := fs.String("leaf-remote", "", "make the embedded nats-server a leaf node of an existing NATS system at these leafnode URLs\n(comma-separated, e.g. nats-leaf://hub:7422): applications next to this node connect to it and reach the\nwhole system through it (sidecar mode; a remote that needs credentials or TLS goes in a --nats-config file's\nleafnodes section instead)")
	fs.BoolVar(&cfg.NATSLog, "nats-log", false, "log the embedded nats-server's notices (its warnings and errors are always logged)")
	httpListen := fs.String("http-listen", cfg.HTTPListen, `host:port of the HTTP endpoint (health, metrics, JSON gateway); "off" disables it`)
	fsync := fs.String("fsync", "always", "when appends are fsynced: always (before each acknowledgement; durable),\ninterval (every --fsync-interval; UNSAFE: a crash loses up to one interval of acknowledged records),\nnever (left to the OS; UNSAFE)")
	fs.DurationVar(&cfg.Log.SyncInterval, "fsync-interval", cfg.Log.SyncInterval, "fsync period with --fsync interval")
	segment := fs.String("segment-bytes", "64MiB", "default size at which a log starts a new segment (B, KiB, MiB, GiB, KB, MB, GB)")
	retBytes := fs.String("retention-bytes", "0", "default bound on a log's total size; oldest segments are removed beyond it (0: none)")
	fs.DurationVar(&cfg.Log.Retention.MaxAge, "retention-age", 0, "default age after which a log's segments are removed, e.g. 168h (0: none)")
	fs.IntVar(&cfg.Log.Retention.MaxSegments, "retention-segments", 0, "default bound on a log's number of segments (0: none)")
	maxRecord := fs.String("max-record-bytes", "0", "largest record (value and headers) taken (0: the NATS max payload less 512 bytes)")
	fs.IntVar(&cfg.MaxOpenFiles, "max-open-files", 0, "files the logs may keep open at once (three per open segment; the least recently used are closed\nand reopened on demand); 0: three quarters of the process's open-file limit (ulimit -n)")
	fs.DurationVar(&cfg.MaxReadWait, "max-read-wait", cfg.MaxReadWait, "longest a batch read may wait for records (long polling)")
	fs.DurationVar(&cfg.DedupWindow, "dedup-window", cfg.DedupWindow, "how long Natlog-Msg-Id values are remembered (0 disables deduplication)")
	fs.StringVar(&cfg.Cluster.Name, "cluster", "", "run as a member of the replicated cluster of this name (Raft over NATS; nodes with the same\n--prefix and --cluster on one NATS system find each other); empty: a standalone node")
	fs.IntVar(&cfg.Cluster.BootstrapExpect, "bootstrap-expect", 0, "with --cluster: fresh nodes wait until this many see each other, then the lowest id bootstraps\nthe cluster with all of them as voters (0: never bootstrap, wait to be added; a node with Raft state never bootstraps)")
	fs.BoolVar(&cfg.Cluster.ReadReplica, "read-replica", false, "with --cluster: join as a non-voting read replica and never become a voter (a sidecar next to an\napplication); the voters bootstrap the cluster and the leader adds this node")
	fs.IntVar(&cfg.Cluster.Voters, "voters", cfg.Cluster.Voters, "with --cluster: voters the leader keeps; nodes beyond join as non-voting read replicas")
	raftTimeout := fs.Duration("raft-timeout", cfg.Cluster.HeartbeatTimeout, "with --cluster: Raft heartbeat and election timeout (leader lease: half of it); short values suit one host")
	fs.DurationVar(&cfg.Cluster.DeadNodeTimeout, "dead-node-timeout", 0, "with --cluster: the leader removes a member unheard of for this long (0: never; use natlog cluster remove)")
	fs.DurationVar(&cfg.Cluster.AnnounceInterval, "announce-interval", cfg.Cluster.AnnounceInterval, "with --cluster: how often a node announces itself and the leader reconciles the membership")
	fs.Uint64Var(&cfg.Cluster.SnapshotThreshold, "raft-snapshot-threshold", cfg.Cluster.SnapshotThreshold, "with --cluster: Raft entries between snapshots")
	fs.DurationVar(&cfg.Cluster.SnapshotInterval, "raft-snapshot-interval", 2*time.Minute, "with --cluster: how often Raft checks whether --raft-snapshot-threshold entries came since the last snapshot")
	fs.Uint64Var(&cfg.Cluster.TrailingLogs, "raft-trailing-logs", cfg.Cluster.TrailingLogs, "with --cluster: Raft entries kept after a snapshot compacts the Raft log (a follower further behind\ncatches up by snapshot)")
	fs.StringVar(&cfg.Cluster.RaftLogLevel, "raft-log-level", cfg.Cluster.RaftLogLevel, "with --cluster: level of Raft's own log on stderr: off, error, warn, info or debug")
	pprofListen := fs.String("pprof-listen", "", "host:port of a Go profiling endpoint (net/http/pprof under /debug/pprof/; empty: off).\nIt exposes the process's internals: bind it to loopback")
	shutdownTimeout := fs.Duration("shutdown-timeout", 30*time.Second, "how long a graceful shutdown waits for requests in flight")
	logLevel := fs.String("log-level", "info", "log level: debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "log format: text or json")
	pos, err := parseFlags(fs, args, nil)
	if err != nil {
		return err
	}
	if len(pos) > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, pos)
	}

	if cfg.Log.Sync, err = logcore.ParseSyncPolicy(*fsync); err != nil {
		return fmt.Errorf("%w: --fsync %q: want always, interval or never", errUsage, *fsync)
	}
	if cfg.Log.MaxSegmentBytes, err = parseSize(*segment); err != nil {
		return fmt.Errorf("%w: --segment-bytes: %v", errUsage, err)
	}
	if cfg.Log.Retention.MaxBytes, err = parseSize(*retBytes); err != nil {
		return fmt.Errorf("%w: --retention-bytes: %v", errUsage, err)
	}
	if cfg.MaxRecordBytes, err = parseSize(*maxRecord); err != nil {
		return fmt.Errorf("%w: --max-record-bytes: %v", errUsage, err)
	}
	cfg.Cluster.HeartbeatTimeout = *raftTimeout
	cfg.Cluster.ElectionTimeout = *raftTimeout
	cfg.Cluster.LeaderLeaseTimeout = *raftTimeout / 2
	cfg.HTTPListen = *httpListen
	if cfg.HTTPListen == "off" {
		cfg.HTTPListen = ""
	}
	if *leafRemotes != "" {
		for _, u := range strings.Split(*leafRemotes, ",") {
			if u = strings.TrimSpace(u); u != "" {
				cfg.NATSLeafRemotes = append(cfg.NATSLeafRemotes, u)
			}
		}
	}
	if cfg.NATSURL != "" {
		if flagSet(fs, "nats-listen") {
			return fmt.Errorf("%w: --nats-listen configures the embedded nats-server; with --nats-url there is none", errUsage)
		}
		cfg.NATSListen = ""
	}
	if !cfg.Cluster.Enabled() {
		// A cluster flag without --cluster would start a standalone
		// node the operator did not ask for.
		for _, name := range []string{"bootstrap-expect", "read-replica", "voters", "dead-node-timeout"} {
			if flagSet(fs, name) {
				return fmt.Errorf("%w: --%s needs --cluster NAME (without it the node is standalone)", errUsage, name)
			}
		}
	}
	logger, err := newLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	cfg.Logger = logger
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}

	// Signals are caught before the node starts, so that one during
	// startup is not lost.
	sigs := make(chan os.Signal, 2)
	signal.Notify(sigs, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sigs)

	if *pprofListen != "" {
		stop, addr, err := servePprof(*pprofListen)
		if err != nil {
			return fmt.Errorf("--pprof-listen: %w", err)
		}
		defer stop()
		logger.Info("natlog: profiling endpoint", "url", "http://"+addr+"/debug/pprof/")
	}

	s, err := sidecar.Start(cfg)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "natlog %s serving: NATS %s, subjects %s.>, HTTP %s, data %s\n",
		version, s.NATSURL(), s.Subjects().Prefix(), orNone(s.HTTPURL()), cfg.DataDir)

	sig := <-sigs
	logger.Info("natlog: signal received; shutting down (send another to exit at once)", "signal", sig.String())
	go func() {
		sig := <-sigs
		logger.Error("natlog: second signal; exiting at once", "signal", sig.String())
		os.Exit(1)
	}()
	ctx, cancel := context.WithTimeout(context.Background(), *shutdownTimeout)
	defer cancel()
	if sig == syscall.SIGTERM && cfg.Cluster.Enabled() {
		// SIGTERM is a graceful leave: hand leadership over and be
		// removed from the cluster. SIGINT only stops the node, which
		// stays a member (a restart rejoins as it was).
		// Leaving takes at most half the shutdown timeout, so that the
		// requests in flight still have time to finish.
		leaveCtx, cancelLeave := context.WithTimeout(ctx, min(*shutdownTimeout/2, 10*time.Second))
		err := s.Leave(leaveCtx)
		cancelLeave()
		if err != nil {
			logger.Warn("natlog: leaving the cluster", "err", err)
		} else {
			logger.Info("natlog: left the cluster")
		}
	}
	if err := s.Shutdown(ctx); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	return nil
}

// servePprof serves net/http/pprof's handlers on addr (their own mux, not
// the node's HTTP endpoint) until stop is called.
func servePprof(addr string) (stop func(), bound string, err error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, "", err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go srv.Serve(ln)
	return func() { srv.Close() }, ln.Addr().String(), nil
}

func orNone(s string) string {
	if s == "" {
		return "off"
	}
	return s
}

// flagSet reports whether the named flag was given (on the command line or
// in the environment).
func flagSet(fs *flag.FlagSet, name string) bool {
	set := false
	fs.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	_, env := os.LookupEnv(envName(name))
	return set || env
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format %q: want text or json", format)
}

// parseSize parses a byte size: a number with an optional unit B, KB, MB,
// GB (powers of 1000) or KiB, MiB, GiB (powers of 1024).
func parseSize(s string) (int64, error) {
	t := strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"TiB", 1 << 40}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"TB", 1e12}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(strings.ToUpper(t), strings.ToUpper(u.suffix)) && (u.suffix != "B" || !strings.HasSuffix(strings.ToUpper(t), "IB")) {
			t, mult = strings.TrimSpace(t[:len(t)-len(u.suffix)]), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(t, 10, 64)
	if err != nil || n < 0 || (n > 0 && n > (1<<62)/mult) {
		return 0, errors.New("want a size such as 1048576, 64MiB or 1GB, got " + strconv.Quote(s))
	}
	return n * mult, nil
}
