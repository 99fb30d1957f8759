package sidecar

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/url"
	"time"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/sidecar/protocol"
)

// Config configures a node. Start from DefaultConfig.
type Config struct {
	// DataDir holds the node's logs (DataDir/logs/<name>), its node id and
	// its lock file. Created if missing.
	DataDir string
	// NodeID names the node in status replies, in the micro service's
	// metadata and in a cluster's configuration. It is stored in
	// DataDir/node-id on first start (generated if empty) and must not
	// change afterwards: a different NodeID on a data dir is an error.
	NodeID string
	// Prefix is the first token(s) of every subject; see protocol.Subjects.
	Prefix string

	// NATSURL, if set, connects to an existing NATS server (a
	// comma-separated list of URLs) instead of embedding one; NATSListen
	// and NATSConfigFile must then be empty.
	NATSURL string
	// NATSListen is the host:port the embedded nats-server listens on.
	// Port 0 picks a free port (see Server.NATSURL).
	NATSListen string
	// NATSConfigFile is a nats-server configuration file for the embedded
	// server (TLS, accounts, leaf nodes, ...). Its listen address, if it
	// has one, wins over NATSListen.
	NATSConfigFile string
	// NATSLeafRemotes, if set, makes the embedded nats-server a leaf node
	// of an existing NATS system (its leafnode URLs, e.g.
	// nats-leaf://hub:7422): applications next to the node connect to the
	// embedded server and reach the whole system through it, and the
	// node reaches its cluster the same way (sidecar mode). A remote that
	// needs credentials or TLS is defined in NATSConfigFile's leafnodes
	// section instead (both at once is an error).
	NATSLeafRemotes []string
	// NATSCredsFile, NATSUser and NATSPassword, or NATSToken authenticate
	// the node's own NATS connection (to NATSURL, or to an embedded server
	// whose configuration file requires it).
	NATSCredsFile string
	NATSUser      string
	NATSPassword  string
	NATSToken     string
	// NATSLog makes the embedded server log to the node's logger (errors
	// and warnings only) rather than staying silent.
	NATSLog bool

	// HTTPListen is the host:port of the HTTP endpoint (health, metrics,
	// JSON gateway); empty disables HTTP. Port 0 picks a free port (see
	// Server.HTTPAddr).
	HTTPListen string

	// Log holds the defaults of every log: segment size, sync policy,
	// retention. A log created with its own settings overrides some of
	// them (protocol.LogSettings). OnSync and Logger are set by the node.
	Log logcore.Config

	// MaxOpenFiles bounds the files the node's logs keep open at once
	// (each open segment holds up to three): beyond it the least recently
	// used segments of any log are closed, idle logs included, and
	// reopened when needed (logcore.FileBudget). Zero derives it from the
	// process's open-file limit, keeping a quarter of the limit (at least
	// 256 descriptors, or half of a smaller limit) for connections and
	// everything else. Ignored if Log.Files is set.
	MaxOpenFiles int

	// MaxRecordBytes bounds one record (value plus stored headers). Zero
	// means the NATS max payload less ReplyHeadroom, so that every record
	// can be read back through NATS.
	MaxRecordBytes int64
	// DefaultReadMax is the number of records a batch read returns when
	// it asks for none in particular; MaxReadRecords caps what it may ask.
	DefaultReadMax int
	MaxReadRecords int
	// MaxReadWait caps a batch read's wait_ms.
	MaxReadWait time.Duration
	// MaxInflight bounds the requests being served at once; more wait in
	// the NATS subscription's pending queue. MaxWaiters bounds the batch
	// reads waiting for records (long polls); beyond it, reads at the end
	// of a log answer at once with no records.
	MaxInflight int
	MaxWaiters  int
	// DedupWindow is how long a Natlog-Msg-Id is remembered; DedupMax
	// bounds how many ids a log remembers (the oldest are forgotten
	// first). A zero window disables deduplication.
	DedupWindow time.Duration
	DedupMax    int
	// DrainTimeout bounds how long Shutdown waits for the NATS
	// subscriptions to drain before it stops waiting for them.
	DrainTimeout time.Duration

	// Cluster, if its Name is set, makes the node a member of a
	// replicated cluster (see ClusterConfig).
	Cluster ClusterConfig

	// Logger receives the node's events; slog.Default() if nil.
	Logger *slog.Logger
	// Version is reported in status replies and the micro service; it
	// must be a semantic version (the micro framework requires one).
	Version string
}

// ReplyHeadroom is what a read reply adds to a record's size (its offset
// and time headers, the NATS header framing), kept free below the NATS
// max payload when MaxRecordBytes is derived from it.
const ReplyHeadroom = 512

// DefaultConfig returns the defaults: data in ./natlog-data, an embedded
// nats-server on 127.0.0.1:4222, HTTP on 127.0.0.1:8080, logcore's default
// log settings (64 MiB segments, fsync before every acknowledgement, no
// retention bound).
func DefaultConfig() Config {
	return Config{
		DataDir:        "./natlog-data",
		Prefix:         protocol.DefaultPrefix,
		NATSListen:     "127.0.0.1:4222",
		HTTPListen:     "127.0.0.1:8080",
		Log:            logcore.DefaultConfig(),
		DefaultReadMax: 1000,
		MaxReadRecords: 100_000,
		MaxReadWait:    30 * time.Second,
		MaxInflight:    4096,
		MaxWaiters:     4096,
		DedupWindow:    2 * time.Minute,
		DedupMax:       100_000,
		DrainTimeout:   10 * time.Second,
		Version:        "0.1.0-dev",
		Cluster:        DefaultClusterConfig(),
	}
}

// Validate reports whether c is usable.
func (c Config) Validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if c.DataDir == "" {
		bad("data dir is empty")
	}
	if c.MaxOpenFiles < 0 {
		bad("max open files is negative")
	} else if c.MaxOpenFiles > 0 && c.MaxOpenFiles < 3 {
		bad("max open files must be at least 3 (one segment)")
	}
	if !protocol.ValidPrefix(c.Prefix) {
		bad("bad subject prefix %q: want dot-separated tokens of [A-Za-z0-9_-]", c.Prefix)
	}
	if c.NodeID != "" && !protocol.ValidLogName(c.NodeID) {
		bad("bad node id %q: want 1 to 128 characters from [A-Za-z0-9_-]", c.NodeID)
	}
	if c.NATSURL != "" && (c.NATSConfigFile != "") {
		bad("--nats-url connects to an existing NATS server; --nats-config configures the embedded one: give one of them")
	}
	if c.NATSURL != "" && len(c.NATSLeafRemotes) > 0 {
		bad("--leaf-remote makes the embedded nats-server a leaf node; with --nats-url there is none")
	}
	for _, u := range c.NATSLeafRemotes {
		if pu, err := url.Parse(u); err != nil || pu.Host == "" {
			bad("bad leaf remote URL %q: want e.g. nats-leaf://hub:7422", u)
		}
	}
	if c.NATSURL == "" && c.NATSConfigFile == "" {
		if _, _, err := net.SplitHostPort(c.NATSListen); err != nil {
			bad("bad NATS listen address %q: %v", c.NATSListen, err)
		}
	}
	if c.HTTPListen != "" {
		if _, _, err := net.SplitHostPort(c.HTTPListen); err != nil {
			bad("bad HTTP listen address %q: %v", c.HTTPListen, err)
		}
	}
	if err := c.Cluster.Validate(); err != nil {
		bad("cluster: %v", err)
	}
	if err := c.Log.Validate(); err != nil {
		bad("log defaults: %v", err)
	}
	if c.MaxRecordBytes < 0 {
		bad("negative max record bytes")
	}
	if c.DefaultReadMax < 1 || c.MaxReadRecords < c.DefaultReadMax {
		bad("read limits: want 1 <= default read max (%d) <= max read records (%d)", c.DefaultReadMax, c.MaxReadRecords)
	}
	if c.MaxReadWait < 0 || c.MaxInflight < 1 || c.MaxWaiters < 0 || c.DedupWindow < 0 || c.DedupMax < 0 || c.DrainTimeout <= 0 {
		bad("max read wait, dedup window and dedup max must not be negative; max inflight and drain timeout must be positive")
	}
	return errors.Join(errs...)
}
