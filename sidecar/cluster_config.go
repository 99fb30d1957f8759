package sidecar

import (
	"errors"
	"fmt"
	"time"

	"github.com/natlog/natlog/sidecar/protocol"
)

// ClusterConfig turns a node into a member of a replicated cluster: its logs
// live in a raftfsm.FSM replicated by hashicorp/raft over NATS. An empty
// Name keeps the node standalone.
type ClusterConfig struct {
	// Name names the Raft group (one subject token); nodes with the same
	// prefix and name on one NATS system form one cluster.
	Name string
	// BootstrapExpect is how many fresh nodes (with no Raft state) must see
	// each other before the one with the lowest id bootstraps the cluster
	// with all of them as voters. Zero means never bootstrap: the node
	// waits for a leader to add it. A node with Raft state never
	// bootstraps.
	BootstrapExpect int
	// Voters is how many voters the leader keeps; announced nodes beyond
	// it join as non-voting read replicas. Every node joins as a
	// non-voter and is promoted once it has caught up.
	Voters int
	// ReadReplica makes the node a non-voting read replica for good: the
	// leader adds it as a non-voter and never promotes it, and it never
	// bootstraps (a sidecar next to an application, which may come and
	// go with it, must not count toward the quorum). A voter restarted as
	// one is demoted once another non-voter can take its place.
	ReadReplica bool

	// AnnounceInterval is how often a node announces itself and the
	// leader reconciles the membership. A node unheard of for
	// 3*AnnounceInterval counts as gone for bootstrapping.
	AnnounceInterval time.Duration

	// DeadNodeTimeout, if positive, makes the leader remove a member that
	// has not announced itself for that long (a crashed node that will not
	// return), as `natlog cluster remove` would; counted from the later of
	// its last announcement and the moment this leader took up the
	// leadership. A voter is removed only if the voters still heard from
	// remain a majority of the voters left.
	// Zero: crashed members stay until an operator removes them.
	DeadNodeTimeout time.Duration

	// Raft timeouts (see raft.Config). Short ones (tens of ms) are for
	// tests on one host.
	HeartbeatTimeout   time.Duration
	ElectionTimeout    time.Duration
	LeaderLeaseTimeout time.Duration
	CommitTimeout      time.Duration
	// ApplyTimeout bounds how long an append waits to enter Raft.
	ApplyTimeout time.Duration
	// SnapshotThreshold, SnapshotInterval and TrailingLogs: see
	// raft.Config. Raft checks every SnapshotInterval (with jitter) whether
	// SnapshotThreshold entries came since the last snapshot; a snapshot
	// then hard-links the logs' segments (raftfsm.SnapshotStore: a link per
	// segment, whatever the data size) and the Raft log is compacted down
	// to TrailingLogs entries. Keep TrailingLogs large enough that a
	// briefly absent follower catches up from the log: a snapshot sends it
	// every record. 0 SnapshotInterval: raft's default (2 minutes).
	SnapshotThreshold uint64
	SnapshotInterval  time.Duration
	TrailingLogs      uint64
	// RaftSegmentBytes is the segment size of the Raft log (0: logcore's
	// default). Compaction after a snapshot removes whole segments.
	RaftSegmentBytes int64
	// MaxEntryBytes bounds the records batched into one Raft entry.
	MaxEntryBytes int
	// MaxApplyInflight bounds the Raft entries the leader has in flight;
	// requests arriving meanwhile are batched into the next entries.
	MaxApplyInflight int
	// RaftLogLevel is the level of hashicorp/raft's own log ("off",
	// "error", "warn", "info", "debug"); it goes to stderr.
	RaftLogLevel string
}

// DefaultClusterConfig returns the cluster defaults (standalone: Name is
// empty): 3 voters, announcements every second, raft's default timeouts.
func DefaultClusterConfig() ClusterConfig {
	return ClusterConfig{
		Voters:             3,
		AnnounceInterval:   time.Second,
		HeartbeatTimeout:   time.Second,
		ElectionTimeout:    time.Second,
		LeaderLeaseTimeout: 500 * time.Millisecond,
		CommitTimeout:      5 * time.Millisecond,
		ApplyTimeout:       10 * time.Second,
		SnapshotThreshold:  16384,
		TrailingLogs:       32768,
		MaxEntryBytes:      4 << 20,
		MaxApplyInflight:   2,
		RaftLogLevel:       "warn",
	}
}

// FastClusterConfig returns DefaultClusterConfig with timeouts for tests
// and local clusters on one host (tens of milliseconds).
func FastClusterConfig() ClusterConfig {
	c := DefaultClusterConfig()
	c.AnnounceInterval = 100 * time.Millisecond
	c.HeartbeatTimeout = 150 * time.Millisecond
	c.ElectionTimeout = 150 * time.Millisecond
	c.LeaderLeaseTimeout = 100 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	return c
}

// Enabled reports whether the node runs in cluster mode.
func (c ClusterConfig) Enabled() bool { return c.Name != "" }

// Validate reports whether c is usable (a disabled config always is).
func (c ClusterConfig) Validate() error {
	if !c.Enabled() {
		return nil
	}
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if !protocol.ValidLogName(c.Name) {
		bad("bad cluster name %q: want 1 to 128 characters from [A-Za-z0-9_-]", c.Name)
	}
	if c.DeadNodeTimeout < 0 {
		bad("negative dead node timeout")
	}
	if c.BootstrapExpect < 0 {
		bad("negative bootstrap-expect")
	}
	if c.ReadReplica && c.BootstrapExpect > 0 {
		bad("a read replica never bootstraps: drop --bootstrap-expect (the voters bootstrap; the leader adds it)")
	}
	if c.Voters < 1 {
		bad("voters must be at least 1")
	}
	if c.AnnounceInterval <= 0 || c.HeartbeatTimeout <= 0 || c.ElectionTimeout <= 0 || c.LeaderLeaseTimeout <= 0 || c.CommitTimeout <= 0 || c.ApplyTimeout <= 0 {
		bad("cluster intervals and raft timeouts must be positive")
	}
	if c.LeaderLeaseTimeout > c.HeartbeatTimeout {
		bad("raft leader lease timeout must not exceed the heartbeat timeout")
	}
	if c.SnapshotThreshold == 0 || c.MaxEntryBytes < 1 || c.MaxApplyInflight < 1 {
		bad("snapshot threshold, max entry bytes and max apply inflight must be positive")
	}
	if c.SnapshotInterval != 0 && c.SnapshotInterval < 5*time.Millisecond {
		bad("the raft snapshot interval must be at least 5ms")
	}
	return errors.Join(errs...)
}
