package sidecar

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/raftfsm"
	"github.com/natlog/natlog/sidecar/protocol"
)

// clusterNode is a node's replication: Raft (hashicorp/raft) with the
// raftfsm FSM, stores and NATS transport, on a NATS connection of its own
// (rnc) so that client traffic cannot starve heartbeats. Layout under the
// data dir:
//
//	fsm/          the FSM's logs (raftfsm.FSM)
//	raft/log/     the Raft log (raftfsm.LogStore)
//	raft/stable   term and vote (raftfsm.StableStore)
//	raft/snapshots/ raftfsm.SnapshotStore (raft.FileSnapshotStore's files)
//	raft/snapshot-links/ the segment files linked by those snapshots
//
// Goroutines: run (announcements, bootstrap, leadership changes, membership
// reconciliation) exits when stop is closed; the applier's rounds exit when
// their Raft entry is decided. close waits for run.
type clusterNode struct {
	s    *Server
	cfg  ClusterConfig
	id   string
	rnc  *nats.Conn
	raft *raft.Raft
	fsm  *raftfsm.FSM
	logs *raftfsm.LogStore
	// raftLogs is the cache in front of logs that Raft uses.
	raftLogs raft.LogStore
	// covered: every command up to this Raft index is applied to the
	// FSM (linearizable reads on followers; see lastCommand).
	covered atomic.Uint64
	// reconciles counts the leader's membership passes (for tests).
	reconciles atomic.Uint64
	// handingOver is set while this leader hands its leadership over
	// because its copy of a log failed (failedHere).
	handingOver atomic.Bool
	metrics     *clusterMetrics
	stable      *raftfsm.StableStore
	snaps       *raftfsm.SnapshotStore
	trans       *raft.NetworkTransport

	announceSubject string
	leaveSubject    string
	stepDownSubject string
	announceSub     *nats.Subscription

	applier applier

	mu         sync.Mutex // guards seen, newest, leaderSubs, leaving, leaderSince and the bootstrap fields
	seen       map[string]announcement
	newest     map[string]int64     // node id -> latest Started announced
	leaderSubs []*nats.Subscription // the leader-only endpoints, while leading
	leaving    bool                 // stop announcing: a graceful leave
	// leaderSince is when this node last took up the leadership: a
	// member is unheard of (removeDead) only from then on.
	leaderSince time.Time

	// Election safety of a node that starts without Raft state (see
	// voteRule). startedEmpty is set before Raft starts. While this node
	// has no Raft state and has heard no node with state (sawState),
	// everFresh collects the nodes it heard announce none; once they are
	// --bootstrap-expect many, the lowest of them is the bootstrapper it
	// may vote for (latched).
	startedEmpty bool
	everFresh    map[string]bool
	sawState     bool
	bootstrapper string
	// stateSeen latches hasRaftState; promoted: this node, started
	// empty, has seen itself a non-voter and then a voter again (the
	// leader promoted it once it had caught up). sawNonvoter is owned by
	// run.
	stateSeen   atomic.Bool
	promoted    atomic.Bool
	sawNonvoter bool
	// promoteAt (owned by run: reconcile) is, per non-voter, the commit
	// index it must have applied before the leader promotes it;
	// demoteAsked, per voter announcing itself a learner, when the leader
	// first saw it (it is demoted once the other voters have announced
	// themselves since).
	promoteAt   map[string]uint64
	demoteAsked map[string]time.Time

	started time.Time     // when the node started hearing announcements
	running bool          // run was started (set before, read after)
	stop    chan struct{} // closed to stop run
	done    chan struct{} // closed when run returns
}

// announcement is what a node publishes on <prefix>._cluster.<name>.announce.
type announcement struct {
	ID       string `json:"id"`
	HasState bool   `json:"has_state"` // it has Raft state (never bootstraps)
	Applied  uint64 `json:"applied"`   // its applied index, for lag
	Leaving  bool   `json:"leaving,omitempty"`
	Host     string `json:"host,omitempty"`
	Reads    uint64 `json:"reads,omitempty"` // read requests it answered
	// ReadReplica: it joins as a non-voter only, never promoted.
	ReadReplica bool `json:"read_replica,omitempty"`
	// Started is when its process started (Unix nanoseconds): of two
	// processes with one node id (a restart while the old one still
	// leaves), the later one is the member.
	Started int64 `json:"started,omitempty"`
	// Learner: its process started without Raft state (a new node, or a
	// wiped one with its old id) and joined a running cluster; it takes
	// no part in elections until the leader has made it a non-voter and
	// promoted it once caught up (a leader demotes a voter that says so).
	Learner bool `json:"learner,omitempty"`
	at      time.Time
}

// raftState is a node's replicated state on disk: the FSM and Raft's
// log, stable and snapshot stores.
type raftState struct {
	fsm    *raftfsm.FSM
	logs   *raftfsm.LogStore
	stable *raftfsm.StableStore
	snaps  *raftfsm.SnapshotStore
}

// openRaftState opens the replicated state under cfg.DataDir. onSync
// (may be nil) sees the Raft log's fsyncs. On error what was opened is
// closed.
func openRaftState(cfg Config, logger *slog.Logger, hl hclog.Logger, onSync func(time.Duration, error)) (_ *raftState, err error) {
	st := &raftState{}
	defer func() {
		if err != nil {
			st.close()
		}
	}()
	dir := cfg.DataDir
	logCfg := cfg.Log
	logCfg.Logger = logger                // the node's logger, not slog's default
	logCfg.Sync = logcore.SyncNeverUnsafe // the Raft log holds the entries; Persist fsyncs
	logCfg.Retention = logcore.Retention{}
	if st.fsm, err = raftfsm.OpenFSM(raftfsm.FSMConfig{
		Dir: filepath.Join(dir, "fsm"),
		Log: logCfg,
		Defaults: raftfsm.LogSettings{
			MaxSegmentBytes:   cfg.Log.MaxSegmentBytes,
			RetentionBytes:    cfg.Log.Retention.MaxBytes,
			RetentionAge:      int64(cfg.Log.Retention.MaxAge),
			RetentionSegments: cfg.Log.Retention.MaxSegments,
		},
		DedupWindow: fsmDedupWindow(cfg.DedupWindow),
		DedupMax:    cfg.DedupMax,
		Logger:      logger,
	}); err != nil {
		return nil, fmt.Errorf("open FSM: %w", err)
	}
	storeCfg := logcore.DefaultConfig()
	storeCfg.Logger = logger
	storeCfg.OnSync = onSync
	if cfg.Log.FS != nil {
		storeCfg.FS = cfg.Log.FS // the node's file system (tests inject faults)
	}
	if cfg.Cluster.RaftSegmentBytes > 0 {
		storeCfg.MaxSegmentBytes = cfg.Cluster.RaftSegmentBytes
	}
	if st.logs, err = raftfsm.OpenLogStore(filepath.Join(dir, "raft", "log"), storeCfg); err != nil {
		return nil, fmt.Errorf("open raft log: %w", err)
	}
	if st.stable, err = raftfsm.OpenStableStore(filepath.Join(dir, "raft", "stable"), cfg.Log.FS); err != nil {
		return nil, fmt.Errorf("open raft stable store: %w", err)
	}
	if st.snaps, err = raftfsm.NewSnapshotStore(filepath.Join(dir, "raft"), 2, hl); err != nil {
		return nil, fmt.Errorf("open raft snapshots: %w", err)
	}
	return st, nil
}

// close closes what is open, once (a running node's clusterNode.close
// closes its stores itself).
func (st *raftState) close() error {
	var errs []error
	if st.fsm != nil {
		errs = append(errs, st.fsm.Close())
		st.fsm = nil
	}
	if st.logs != nil {
		errs = append(errs, st.logs.Close())
		st.logs = nil
	}
	if st.stable != nil {
		errs = append(errs, st.stable.Close())
		st.stable = nil
	}
	return errors.Join(errs...)
}

// startCluster opens the FSM and the Raft stores and starts Raft.
func (s *Server) startCluster() (err error) {
	cfg := s.cfg.Cluster
	n := &clusterNode{s: s, cfg: cfg, id: s.nodeID, seen: map[string]announcement{}, newest: map[string]int64{},
		everFresh: map[string]bool{}, promoteAt: map[string]uint64{},
		demoteAsked: map[string]time.Time{}, stop: make(chan struct{}), done: make(chan struct{})}
	n.applier.n = n
	n.metrics = s.metrics.registerCluster(n)
	n.announceSubject = s.subjects.Prefix() + "._cluster." + cfg.Name + ".announce"
	n.leaveSubject = s.subjects.Prefix() + "._cluster." + cfg.Name + ".leave"
	n.stepDownSubject = s.subjects.Prefix() + "._cluster." + cfg.Name + ".stepdown"
	s.cluster = n
	hl := raftLogger(cfg.RaftLogLevel, s.nodeID)
	st, err := openRaftState(s.cfg, s.logger, hl, s.metrics.onSync)
	if err != nil {
		return err
	}
	n.fsm, n.logs, n.stable, n.snaps = st.fsm, st.logs, st.stable, st.snaps
	snaps := st.snaps
	if n.rnc, err = connect(s.cfg, s.ns, s.nodeID+" raft", s.logger); err != nil {
		return fmt.Errorf("raft NATS connection: %w", err)
	}
	tc := raftfsm.DefaultTransportConfig(s.nodeID)
	tc.Prefix = s.subjects.Prefix()
	tc.Cluster = cfg.Name
	tc.Logger = hl
	if n.trans, err = raftfsm.NewNATSTransport(n.rnc, tc); err != nil {
		return fmt.Errorf("raft transport: %w", err)
	}

	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(s.nodeID)
	rc.HeartbeatTimeout = cfg.HeartbeatTimeout
	rc.ElectionTimeout = cfg.ElectionTimeout
	rc.LeaderLeaseTimeout = cfg.LeaderLeaseTimeout
	rc.CommitTimeout = cfg.CommitTimeout
	rc.SnapshotThreshold = cfg.SnapshotThreshold
	rc.TrailingLogs = cfg.TrailingLogs
	if cfg.SnapshotInterval > 0 {
		rc.SnapshotInterval = cfg.SnapshotInterval
	}
	rc.NoSnapshotRestoreOnStart = true
	rc.Logger = hl
	hasState, err := raft.HasExistingState(n.logs, n.stable, snaps)
	if err != nil {
		return fmt.Errorf("raft state: %w", err)
	}
	cache, err := raft.NewLogCache(512, n.logs)
	if err != nil {
		return err
	}
	n.raftLogs = cache
	if err := n.restoreIfBehind(snaps); err != nil {
		return err
	}
	n.startedEmpty = !n.hasRaftState()
	gate := raftfsm.NewVoteGate(n.trans, n.voteRule)
	if n.raft, err = raft.NewRaft(rc, n.fsm, cache, n.stable, snaps, gate); err != nil {
		gate.Close() // stops its goroutine (Raft's Shutdown would have)
		return fmt.Errorf("start raft: %w", err)
	}
	if n.announceSub, err = n.rnc.Subscribe(n.announceSubject, n.onAnnounce); err != nil {
		return err
	}
	n.announceSub.SetPendingLimits(-1, -1)
	s.logger.Info("natlog: cluster mode", "cluster", cfg.Name, "raft_state", hasState, "raft_log", !n.startedEmpty,
		"bootstrap_expect", cfg.BootstrapExpect, "voters", cfg.Voters)
	n.started = time.Now()
	n.running = true
	go n.run(!hasState)
	return nil
}

// restoreIfBehind makes sure the FSM holds the newest Raft snapshot before
// Raft starts: Raft does not restore it (NoSnapshotRestoreOnStart: the
// FSM recovers from its own files) and replays only the entries after it.
// The FSM's files hold it unless a snapshot install from the leader was
// interrupted (Raft stores the snapshot, then the FSM restores it): then
// it is restored now. The FSM learns the index Raft starts from.
func (n *clusterNode) restoreIfBehind(snaps *raftfsm.SnapshotStore) error {
	metas, err := snaps.List()
	if err != nil {
		return fmt.Errorf("raft snapshots: %w", err)
	}
	if len(metas) == 0 {
		return nil
	}
	newest := metas[0]
	applied, err := snaps.ReadApplied(newest.ID)
	if err != nil {
		n.s.logger.Warn("natlog: reading the newest raft snapshot's header directly; opening it instead", "snapshot", newest.ID, "err", err)
		var rc io.ReadCloser
		if _, rc, err = snaps.Open(newest.ID); err == nil {
			applied, err = raftfsm.SnapshotApplied(rc)
			rc.Close()
		}
		if err != nil {
			// Raft itself does not read it at start either: trust the
			// logs, as before the check, and say so.
			n.s.logger.Error("natlog: the newest raft snapshot is unreadable; assuming the logs hold it", "snapshot", newest.ID, "err", err)
			n.fsm.StartedFrom(newest.Index)
			return nil
		}
	}
	if !n.fsm.Covers(applied) {
		n.s.logger.Warn("natlog: the logs do not hold the newest raft snapshot (an install was interrupted); restoring it",
			"snapshot", newest.ID, "index", newest.Index)
		_, rc, err := snaps.Open(newest.ID)
		if err != nil {
			return fmt.Errorf("raft snapshot %s: %w", newest.ID, err)
		}
		if err := n.fsm.Restore(rc); err != nil {
			return fmt.Errorf("restore raft snapshot %s: %w", newest.ID, err)
		}
	}
	n.fsm.StartedFrom(newest.Index)
	return nil
}

// run announces the node, bootstraps if it should, follows leadership
// changes and, while leading, reconciles the membership.
func (n *clusterNode) run(fresh bool) {
	defer close(n.done)
	tick := time.NewTicker(n.cfg.AnnounceInterval)
	defer tick.Stop()
	n.announce()
	for {
		if fresh && n.cfg.BootstrapExpect > 0 {
			fresh = !n.tryBootstrap()
		}
		n.notePromotion()
		n.syncLeadership()
		if n.raft.State() == raft.Leader {
			n.reconcile()
		}
		select {
		case <-n.stop:
			return
		case <-n.raft.LeaderCh():
		case <-tick.C:
			n.announce()
		}
	}
}

func (n *clusterNode) announce() {
	n.mu.Lock()
	leaving := n.leaving
	n.mu.Unlock()
	// A learner says so only once it holds Raft state: before, its
	// votes are refused anyway, and a node that joins through the
	// bootstrap may not know it yet.
	a := announcement{ID: n.id, HasState: n.hasState(), Applied: n.raft.AppliedIndex(), Leaving: leaving,
		Host: hostname, Reads: n.s.reads.Load(), ReadReplica: n.cfg.ReadReplica, Started: n.s.started.UnixNano(),
		Learner: n.learner() && n.hasRaftState()}
	b, _ := json.Marshal(a)
	if err := n.rnc.Publish(n.announceSubject, b); err != nil {
		n.s.logger.Debug("natlog: announce", "err", err)
	}
}

// hasState reports whether this node is in a Raft configuration or has
// log entries (after which it never bootstraps).
func (n *clusterNode) hasState() bool {
	if n.raft.LastIndex() > 0 {
		return true
	}
	f := n.raft.GetConfiguration()
	return f.Error() == nil && len(f.Configuration().Servers) > 0
}

func (n *clusterNode) onAnnounce(m *nats.Msg) {
	var a announcement
	if err := json.Unmarshal(m.Data, &a); err != nil || !protocol.ValidLogName(a.ID) {
		return
	}
	a.at = time.Now()
	noteBootstrap := n.startedEmpty && n.cfg.BootstrapExpect > 0 && !n.hasRaftState()
	n.mu.Lock()
	n.seen[a.ID] = a
	n.newest[a.ID] = max(n.newest[a.ID], a.Started)
	if noteBootstrap {
		n.noteBootstrapLocked(a)
	}
	n.mu.Unlock()
}

// noteBootstrapLocked learns from a, heard while this node has no Raft
// state, which node it expects to bootstrap the cluster (see voteRule):
// the lowest id of BootstrapExpect fresh nodes, this one among them, if
// no node with state (other than one heard fresh before) was heard first:
// then a cluster exists, and this node joins it as a learner. n.mu is
// held.
func (n *clusterNode) noteBootstrapLocked(a announcement) {
	if n.sawState || n.bootstrapper != "" || a.ReadReplica {
		return
	}
	if a.HasState {
		// A node heard fresh before is most likely the bootstrapper,
		// whose state is its bootstrap: the last node to start may hear
		// it only then. Any other node with state means a cluster runs.
		if a.ID != n.id && !n.everFresh[a.ID] {
			n.sawState = true
		}
		return
	}
	n.everFresh[a.ID] = true
	if len(n.everFresh) < n.cfg.BootstrapExpect || !n.everFresh[n.id] {
		return
	}
	for id := range n.everFresh {
		if n.bootstrapper == "" || id < n.bootstrapper {
			n.bootstrapper = id
		}
	}
}

// hasRaftState reports whether this node holds Raft log entries or a
// snapshot: it has been in a cluster's log (bootstrapped it, or stored an
// entry or a snapshot from a leader). A stored term alone does not count:
// a node that only voted has acknowledged nothing. Latched: Raft state,
// once there, stays until the data dir is wiped, which takes a restart. A
// store that cannot answer counts as no state (votes are refused).
func (n *clusterNode) hasRaftState() bool {
	if n.stateSeen.Load() {
		return true
	}
	if last, err := n.logs.LastIndex(); err == nil && last > 0 {
		n.stateSeen.Store(true)
		return true
	}
	if metas, err := n.snaps.List(); err == nil && len(metas) > 0 {
		n.stateSeen.Store(true)
		return true
	}
	return false
}

// learner reports whether this node's process started without Raft state,
// did not join through the bootstrap, and has not yet been promoted by a
// leader after catching up (see announcement.Learner).
func (n *clusterNode) learner() bool {
	if !n.startedEmpty || n.promoted.Load() {
		return false
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.bootstrapper == ""
}

// voteRule is the Raft transport's vote gate (raftfsm.NewVoteGate): whether
// this node may answer candidate's vote or pre-vote request.
//
// A voter restarted on a wiped data dir with its old id has lost its log,
// term and vote; Raft would grant its vote to any candidate, also one that
// lacks entries this node acknowledged before (committed, so acknowledged
// to clients): with it, that candidate has a majority, and the entries are
// lost. So a node votes only with Raft state, with two refinements:
//   - without state, it may vote for the node it expects to bootstrap the
//     cluster (--bootstrap-expect; see noteBootstrapLocked), which needs
//     the votes of fresh nodes to win the first election;
//   - a learner (joined a running cluster without state) votes only once
//     the leader has made it a non-voter and then promoted it, i.e. once
//     it holds everything committed when it joined: its partial log
//     during the catch-up would let a stale candidate win as well.
//
// Called on the transport's goroutine.
func (n *clusterNode) voteRule(candidate raft.ServerID, _ bool) bool {
	if n.learner() {
		return false
	}
	if n.hasRaftState() {
		return true
	}
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.bootstrapper != "" && string(candidate) == n.bootstrapper
}

// notePromotion follows this node's suffrage while it is a learner: seen
// a non-voter, then a voter, it has been promoted after catching up and
// votes again.
func (n *clusterNode) notePromotion() {
	if !n.learner() {
		return
	}
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) != n.id {
			continue
		}
		switch {
		case srv.Suffrage == raft.Nonvoter:
			n.sawNonvoter = true
		case srv.Suffrage == raft.Voter && n.sawNonvoter:
			n.promoted.Store(true)
			n.s.logger.Info("natlog: promoted to voter after catching up; votes in elections again")
		}
	}
}

// recent returns the announcements heard within 3 announce intervals.
func (n *clusterNode) recent() map[string]announcement {
	cut := time.Now().Add(-3 * n.cfg.AnnounceInterval)
	n.mu.Lock()
	defer n.mu.Unlock()
	out := make(map[string]announcement, len(n.seen))
	for id, a := range n.seen {
		if a.at.After(cut) {
			out[id] = a
		}
	}
	return out
}

// tryBootstrap bootstraps the cluster if BootstrapExpect fresh nodes see
// each other and this one has the lowest id. It returns true once
// bootstrapping is no longer this node's business: it bootstrapped, it
// has Raft state, or it saw a node with state.
func (n *clusterNode) tryBootstrap() bool {
	if n.hasState() || n.cfg.ReadReplica {
		return true
	}
	var fresh []string
	for id, a := range n.recent() {
		if a.HasState {
			return true // a cluster exists: its leader will add us
		}
		if !a.ReadReplica { // read replicas are added later, as non-voters
			fresh = append(fresh, id)
		}
	}
	if !slices.Contains(fresh, n.id) || len(fresh) < n.cfg.BootstrapExpect {
		return false
	}
	slices.Sort(fresh)
	if fresh[0] != n.id {
		return false
	}
	var conf raft.Configuration
	for _, id := range fresh[:n.cfg.BootstrapExpect] {
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(id)})
	}
	n.mu.Lock()
	n.bootstrapper = n.id // not a learner, whatever it heard
	n.mu.Unlock()
	if err := n.raft.BootstrapCluster(conf).Error(); err != nil && !errors.Is(err, raft.ErrCantBootstrap) {
		n.s.logger.Error("natlog: bootstrap failed", "err", err)
		return false
	}
	n.s.logger.Info("natlog: bootstrapped the cluster", "voters", fresh[:n.cfg.BootstrapExpect])
	return true
}

// syncLeadership holds the leader-only subscriptions while this node
// leads, and drops them when it does not.
func (n *clusterNode) syncLeadership() {
	leading := n.raft.State() == raft.Leader
	n.mu.Lock()
	defer n.mu.Unlock()
	if leading == (n.leaderSubs != nil) {
		return
	}
	if !leading {
		// Drain, not Unsubscribe: requests NATS delivered before the
		// interest went, still queued in the subscription, are handled
		// (Raft refuses them: "not leader, nothing was written") instead
		// of dropped without a reply, which left their clients waiting
		// for their timeout. But not while a connection is reconnecting:
		// nats.go then sends no UNSUB for a draining subscription and
		// subscribes it again on reconnect, leaving a member of the
		// queue group that swallows requests (reviewing helper, 17 of
		// 40 lost); Unsubscribe then, and lose only what was queued.
		reconnecting := n.s.nc.IsReconnecting() || n.rnc.IsReconnecting()
		for _, sub := range n.leaderSubs {
			if reconnecting {
				sub.Unsubscribe()
			} else {
				sub.Drain()
			}
		}
		n.leaderSubs = nil
		n.metrics.leadership.Inc()
		n.s.logger.Info("natlog: lost leadership; appends go to the new leader")
		return
	}
	subs, err := n.s.subscribeLeaderEndpoints()
	if err != nil {
		n.s.logger.Error("natlog: subscribing the leader endpoints", "err", err)
		return
	}
	n.leaderSubs = subs
	n.leaderSince = time.Now()
	n.metrics.leadership.Inc()
	n.s.logger.Info("natlog: leading the cluster", "term", n.raft.Stats()["term"])
}

// reconcile adds announced nodes that are not members, as non-voters; it
// promotes non-voters, other than read replicas, while fewer than Voters
// voters are there, each once it has caught up (promotable). A node thus
// holds the log before it counts toward a quorum or votes; see voteRule.
func (n *clusterNode) reconcile() {
	defer n.reconciles.Add(1)
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return
	}
	members := map[string]raft.ServerSuffrage{}
	voters := 0
	for _, srv := range f.Configuration().Servers {
		members[string(srv.ID)] = srv.Suffrage
		if srv.Suffrage == raft.Voter {
			voters++
		}
	}
	rec := n.recent()
	if n.removeDead(f.Configuration().Servers) {
		return // the configuration changed: reconcile on the next tick
	}
	if n.demoteReadReplica(members, rec) {
		return // the configuration changed: a non-voter is promoted next
	}
	if n.demoteLearner(f.Configuration().Servers, rec) {
		return // the configuration changed: promoted again once caught up
	}
	commit := n.raft.CommitIndex()
	ids := make([]string, 0, len(rec))
	for id := range rec {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	for _, id := range ids {
		if rec[id].Leaving {
			continue
		}
		suf, member := members[id]
		var fut raft.IndexFuture
		asVoter := false
		switch {
		case member && (suf == raft.Voter || voters >= n.cfg.Voters || rec[id].ReadReplica):
			continue
		case !member:
			fut = n.raft.AddNonvoter(raft.ServerID(id), raft.ServerAddress(id), 0, n.cfg.ApplyTimeout)
			n.promoteAt[id] = commit
		case !n.promotable(id, rec[id], commit):
			continue // still catching up
		default:
			fut = n.raft.AddVoter(raft.ServerID(id), raft.ServerAddress(id), 0, n.cfg.ApplyTimeout)
			voters++
			asVoter = true
		}
		if err := fut.Error(); err != nil {
			n.s.logger.Warn("natlog: adding a member", "node", id, "err", err)
			return
		}
		if member {
			delete(n.promoteAt, id)
			n.s.logger.Info("natlog: promoted a non-voter to voter (caught up)", "node", id, "applied", rec[id].Applied)
		} else {
			n.s.logger.Info("natlog: added a member", "node", id, "voter", asVoter)
		}
	}
}

// demoteReadReplica demotes one voter that now announces itself as a read
// replica (restarted with --read-replica), if a non-voter that may vote
// is there to take its place (the next pass promotes it), so the voters
// never drop below what they were. The leader is not demoted: it hands
// leadership over first (a graceful leave) or stays. It reports whether it
// changed the configuration.
func (n *clusterNode) demoteReadReplica(members map[string]raft.ServerSuffrage, rec map[string]announcement) bool {
	replacement := false
	for id, suf := range members {
		if a, ok := rec[id]; ok && suf == raft.Nonvoter && !a.ReadReplica && !a.Leaving {
			replacement = true
		}
	}
	if !replacement {
		return false
	}
	for id, suf := range members {
		if a, ok := rec[id]; !ok || suf != raft.Voter || !a.ReadReplica || id == n.id {
			continue
		}
		if err := n.raft.DemoteVoter(raft.ServerID(id), 0, n.cfg.ApplyTimeout).Error(); err != nil {
			n.s.logger.Warn("natlog: demoting a read replica", "node", id, "err", err)
			return false
		}
		n.s.logger.Info("natlog: demoted a voter that runs as a read replica now", "node", id)
		return true
	}
	return false
}

// promotable reports whether non-voter id, announcing a, has caught up:
// it has applied the commit index the leader saw when it added (or
// demoted) it, so it holds every entry committed before it joined,
// whatever it may have acknowledged before a wipe. A leader that did not
// add it takes its own commit index when it first looks (later, so
// stricter).
func (n *clusterNode) promotable(id string, a announcement, commit uint64) bool {
	at, ok := n.promoteAt[id]
	if !ok {
		at = commit
		n.promoteAt[id] = at
	}
	return a.Applied >= at
}

// demoteLearner demotes one voter, not this leader, that announces itself
// a learner: a node restarted with its id on a wiped data dir (see
// voteRule). As a non-voter it catches up and is promoted again
// (promotable). Only once the voters left, heard from since the leader
// first saw it a learner, are a majority of them: a voter that has just
// crashed, still in recent(), must not end up in the majority. Until then
// it stays a voter: it acknowledges only what it stores and votes only
// once promoted, so that is safe, if less available. It reports whether it
// changed the configuration.
func (n *clusterNode) demoteLearner(servers []raft.Server, rec map[string]announcement) bool {
	for id := range n.demoteAsked {
		if a, ok := rec[id]; !ok || !a.Learner {
			delete(n.demoteAsked, id)
		}
	}
	for _, srv := range servers {
		id := string(srv.ID)
		if a, ok := rec[id]; !ok || srv.Suffrage != raft.Voter || !a.Learner || a.Leaving || id == n.id {
			continue
		}
		asked, ok := n.demoteAsked[id]
		if !ok {
			n.demoteAsked[id] = time.Now()
			continue // the next passes check who is still there
		}
		if !liveMajority(servers, id, n.heardSince(asked)) {
			if time.Since(asked) > 3*n.cfg.AnnounceInterval {
				// Say so, and look again from now on.
				n.s.logger.Warn("natlog: not demoting a wiped voter yet: the voters left would lack a live majority", "node", id)
				n.demoteAsked[id] = time.Now()
			}
			continue
		}
		commit := n.raft.CommitIndex()
		if err := n.raft.DemoteVoter(srv.ID, 0, n.cfg.ApplyTimeout).Error(); err != nil {
			n.s.logger.Warn("natlog: demoting a wiped voter", "node", id, "err", err)
			return false
		}
		n.promoteAt[id] = commit
		delete(n.demoteAsked, id)
		n.s.logger.Warn("natlog: demoted a voter that rejoined without its Raft state (wiped); promoted again once caught up",
			"node", id, "catch_up_to", commit)
		return true
	}
	return false
}

// heardSince returns whether a node is this one or has announced itself
// after t. Asked about a moment before the question arose, it tells the
// nodes up now from one that crashed within the last announce intervals,
// which recent() still lists.
func (n *clusterNode) heardSince(t time.Time) func(string) bool {
	n.mu.Lock()
	at := make(map[string]time.Time, len(n.seen))
	for id, a := range n.seen {
		at[id] = a.at
	}
	n.mu.Unlock()
	return func(id string) bool { return id == n.id || at[id].After(t) }
}

// liveMajority reports whether, in servers less the voter without (removed
// or demoted), the voters for which alive holds are a strict majority of
// the voters. No voter left is no majority.
func liveMajority(servers []raft.Server, without string, alive func(id string) bool) bool {
	voters, live := 0, 0
	for _, srv := range servers {
		if srv.Suffrage != raft.Voter || string(srv.ID) == without {
			continue
		}
		voters++
		if alive(string(srv.ID)) {
			live++
		}
	}
	return live > voters/2
}

// deadMembers returns the members removeDead may remove: unheard of for
// DeadNodeTimeout, measured from the later of their last announcement and
// the moment this node became leader (after an outage of NATS longer than
// the timeout, every announcement is old; a new leader gives the members
// the timeout to announce themselves again), and, for voters, only if the
// voters left keep a live majority.
func (n *clusterNode) deadMembers(servers []raft.Server, now time.Time) []raft.Server {
	timeout := n.cfg.DeadNodeTimeout
	n.mu.Lock()
	defer n.mu.Unlock()
	since := n.started
	if n.leaderSince.After(since) {
		since = n.leaderSince
	}
	if timeout <= 0 || now.Sub(since) < timeout {
		return nil
	}
	cut := now.Add(-timeout)
	alive := func(id string) bool { a, ok := n.seen[id]; return id == n.id || ok && a.at.After(cut) }
	var dead []raft.Server
	for _, srv := range servers {
		if alive(string(srv.ID)) {
			continue
		}
		if srv.Suffrage == raft.Voter && !liveMajority(servers, string(srv.ID), alive) {
			continue // the voters left would not have a live majority
		}
		dead = append(dead, srv)
	}
	return dead
}

// removeDead removes one member unheard of for DeadNodeTimeout, if
// enabled and safe (see ClusterConfig.DeadNodeTimeout and deadMembers).
// It reports whether it removed one.
func (n *clusterNode) removeDead(servers []raft.Server) bool {
	timeout := n.cfg.DeadNodeTimeout
	for _, srv := range n.deadMembers(servers, time.Now()) {
		if err := n.raft.RemoveServer(srv.ID, 0, n.cfg.ApplyTimeout).Error(); err != nil {
			n.s.logger.Warn("natlog: removing a dead member", "node", srv.ID, "err", err)
			return false
		}
		n.s.logger.Warn("natlog: removed a member unheard of for the dead node timeout", "node", srv.ID, "timeout", timeout)
		return true
	}
	return false
}

// onLeave serves <prefix>._cluster.<name>.leave on the leader: the body is
// the id of the node to remove.
func (n *clusterNode) onLeave(m *nats.Msg) {
	// "<id>", or from a node leaving by itself "<id> <started>".
	id, startedText, self := strings.Cut(string(m.Data), " ")
	reply := func(err error) {
		if m.Reply == "" {
			return
		}
		if err != nil {
			m.Respond([]byte("error: " + err.Error()))
			return
		}
		m.Respond([]byte("ok"))
	}
	if n.raft.State() != raft.Leader {
		reply(raft.ErrNotLeader)
		return
	}
	if !protocol.ValidLogName(id) {
		reply(fmt.Errorf("bad node id %q", id))
		return
	}
	if self {
		started, err := strconv.ParseInt(startedText, 10, 64)
		n.mu.Lock()
		newest := n.newest[id]
		n.mu.Unlock()
		if err != nil || started < newest {
			// An older process of the node, leaving as a newer one
			// (restarted meanwhile) runs: removing the id would
			// remove the newer one.
			n.s.logger.Warn("natlog: refused the leave of an older process of a node", "node", id)
			reply(fmt.Errorf("stale: a process of %s started later runs", id))
			return
		}
	}
	go func() {
		if err := n.checkRemoval(id); err != nil {
			n.s.logger.Warn("natlog: refused to remove a member", "node", id, "err", err)
			reply(err)
			return
		}
		n.mu.Lock()
		if a, ok := n.seen[id]; ok {
			a.Leaving = true
			n.seen[id] = a
		}
		n.mu.Unlock()
		err := n.raft.RemoveServer(raft.ServerID(id), 0, n.cfg.ApplyTimeout).Error()
		if err == nil {
			n.s.logger.Info("natlog: removed a member", "node", id)
		}
		reply(err)
	}()
}

// errWouldLoseQuorum: removing the member would leave a configuration
// whose voters heard from lately are no majority of it (it would stall
// until the silent ones return). Nothing was changed.
var errWouldLoseQuorum = errors.New("would lose quorum")

// checkRemoval refuses the removal of voter id unless the voters that
// announce themselves after the request (within about one announce
// interval; this leader always), in the configuration without id, are a
// strict majority of it. A graceful leave
// while another voter is down would otherwise remove a live voter and
// leave the dead one in the majority of what remains.
func (n *clusterNode) checkRemoval(id string) error {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	servers := f.Configuration().Servers
	if !slices.ContainsFunc(servers, func(srv raft.Server) bool { return string(srv.ID) == id && srv.Suffrage == raft.Voter }) {
		return nil // a non-voter, or not a member: the voters do not change
	}
	// Wait for the voters to announce themselves after the request,
	// about one announce interval: only one that does is up.
	asked := time.Now()
	deadline := asked.Add(n.cfg.AnnounceInterval * 3 / 2)
	for !liveMajority(servers, id, n.heardSince(asked)) {
		if time.Now().After(deadline) {
			break
		}
		select {
		case <-n.stop:
			return raft.ErrRaftShutdown
		case <-time.After(n.cfg.AnnounceInterval / 20):
		}
	}
	alive := n.heardSince(asked)
	if liveMajority(servers, id, alive) {
		return nil
	}
	var left, heard []string
	for _, srv := range servers {
		if sid := string(srv.ID); srv.Suffrage == raft.Voter && sid != id {
			left = append(left, sid)
			if alive(sid) {
				heard = append(heard, sid)
			}
		}
	}
	return fmt.Errorf("%w: removing voter %s leaves voters %v, of which only %v announced themselves since the request; not removed",
		errWouldLoseQuorum, id, left, heard)
}

// onStepDown serves <prefix>._cluster.<name>.stepdown on the leader: it
// hands leadership to the voter named in the body, or to any voter if the
// body is empty, and answers "ok <its id>" once it no longer leads (or
// "invalid: ..." for a target that cannot lead, "error: ...").
func (n *clusterNode) onStepDown(m *nats.Msg) {
	to := string(m.Data)
	reply := func(err error) {
		if m.Reply == "" {
			return
		}
		switch {
		case errors.Is(err, errStepDownTarget):
			m.Respond([]byte("invalid: " + err.Error()))
		case err != nil:
			m.Respond([]byte("error: " + err.Error()))
		default:
			m.Respond([]byte("ok " + n.id))
		}
	}
	if n.raft.State() != raft.Leader {
		reply(raft.ErrNotLeader)
		return
	}
	if to == "" {
		go func() { reply(n.raft.LeadershipTransfer().Error()) }()
		return
	}
	if to == n.id {
		reply(nil) // already leads
		return
	}
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		reply(err)
		return
	}
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) != to {
			continue
		}
		if srv.Suffrage != raft.Voter {
			reply(fmt.Errorf("%w: %s is not a voter; only voters can lead", errStepDownTarget, to))
			return
		}
		// A transfer to a node that is down would refuse appends until
		// it times out (an election timeout).
		if a, heard := n.recent()[to]; !heard || a.Leaving {
			reply(fmt.Errorf("%w: %s has not been heard from lately (unreachable or leaving)", errStepDownTarget, to))
			return
		}
		go func() { reply(n.raft.LeadershipTransferToServer(srv.ID, srv.Address).Error()) }()
		return
	}
	reply(fmt.Errorf("%w: %s is not a member of the cluster", errStepDownTarget, to))
}

// errStepDownTarget: the node named to take over leadership cannot.
var errStepDownTarget = errors.New("cannot lead")

// stepDownTargetError is the leader's errStepDownTarget, as its text came
// back.
type stepDownTargetError string

func (e stepDownTargetError) Error() string        { return string(e) }
func (e stepDownTargetError) Is(target error) bool { return target == errStepDownTarget }

// stepDown has the leader hand leadership to the voter to (any voter if
// to is empty) and waits until this node sees a leader that the request
// allows: to, or any other than the old one. It returns the new leader.
func (n *clusterNode) stepDown(to string, timeout time.Duration) (string, error) {
	deadline := time.Now().Add(timeout)
	old := "" // the leader that stepped down
	asked := false
	for !asked {
		m, err := n.rnc.Request(n.stepDownSubject, []byte(to), min(time.Until(deadline), n.cfg.ApplyTimeout))
		switch {
		case err == nil && strings.HasPrefix(string(m.Data), "ok "):
			old, asked = strings.TrimPrefix(string(m.Data), "ok "), true
		case err == nil && strings.HasPrefix(string(m.Data), "invalid: "):
			return "", stepDownTargetError(strings.TrimPrefix(string(m.Data), "invalid: "))
		case err == nil:
			return "", errors.New(strings.TrimPrefix(string(m.Data), "error: "))
		case time.Now().After(deadline):
			return "", fmt.Errorf("no leader answered: %w", err)
		default:
			// No leader right now (an election): try again.
			time.Sleep(50 * time.Millisecond)
		}
	}
	for {
		if _, id := n.raft.LeaderWithID(); id != "" && (string(id) == to || (to == "" && string(id) != old)) {
			return string(id), nil
		}
		if time.Now().After(deadline) {
			_, id := n.raft.LeaderWithID()
			return string(id), fmt.Errorf("leadership was handed over, but this node sees leader %q", id)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// removeMember asks the leader to remove id from the configuration.
func (n *clusterNode) removeMember(id string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		// Short tries: a request may reach a deposed leader's
		// subscription as it is dropped, and get no reply.
		body := id
		if id == n.id {
			body += " " + strconv.FormatInt(n.s.started.UnixNano(), 10)
		}
		m, err := n.rnc.Request(n.leaveSubject, []byte(body), min(time.Until(deadline), n.cfg.ApplyTimeout/4))
		if err == nil && string(m.Data) == "ok" {
			return nil
		}
		if err == nil {
			err = errors.New(string(m.Data))
			if strings.HasPrefix(string(m.Data), "error: stale:") {
				return err // a newer process of this node runs
			}
			if after, ok := strings.CutPrefix(string(m.Data), "error: "+errWouldLoseQuorum.Error()); ok {
				return fmt.Errorf("%w%s", errWouldLoseQuorum, after) // refused for good
			}
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// leave is a graceful leave: stop announcing, hand leadership over if this
// node leads, then have the leader remove it.
func (n *clusterNode) leave(timeout time.Duration) error {
	n.mu.Lock()
	n.leaving = true
	n.mu.Unlock()
	n.announce()
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return f.Error()
	}
	servers := f.Configuration().Servers
	voter, voters := false, 0
	for _, srv := range servers {
		if srv.Suffrage == raft.Voter {
			voters++
			voter = voter || string(srv.ID) == n.id
		}
	}
	if len(servers) <= 1 || voter && voters == 1 {
		// The last member, or the last voter (read replicas are no
		// quorum): nothing to hand over; it stays the cluster.
		n.s.logger.Info("natlog: the only voter of the cluster stays a member (not leaving)")
		return nil
	}
	if n.raft.State() == raft.Leader {
		if err := n.raft.LeadershipTransfer().Error(); err != nil {
			n.s.logger.Warn("natlog: leadership transfer", "err", err)
		}
	}
	err := n.removeMember(n.id, timeout)
	if errors.Is(err, errWouldLoseQuorum) {
		n.s.logger.Warn("natlog: not leaving the cluster: the leader refused, as the voters left would lose quorum; "+
			"shutting down as a member, as on SIGINT (a restart rejoins as it was)", "err", err)
	}
	return err
}

// stopServing stops the run goroutine and drains the leader-only
// subscriptions: requests already delivered are still served (Raft is
// still running), no new ones arrive. Idempotent.
func (n *clusterNode) stopServing() {
	select {
	case <-n.stop:
	default:
		close(n.stop)
	}
	if !n.running {
		return
	}
	<-n.done
	n.mu.Lock()
	for _, sub := range n.leaderSubs {
		sub.Drain()
	}
	n.leaderSubs = nil
	n.mu.Unlock()
}

// close shuts Raft down and closes the stores, the FSM and the Raft
// connection.
func (n *clusterNode) close() error {
	n.stopServing()
	var errs []error
	if n.raft != nil {
		if err := n.raft.Shutdown().Error(); err != nil {
			errs = append(errs, fmt.Errorf("raft shutdown: %w", err))
		}
	}
	if n.trans != nil {
		n.trans.Close()
	}
	if n.rnc != nil {
		n.rnc.Close()
	}
	if n.fsm != nil {
		if err := n.fsm.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if n.logs != nil {
		if err := n.logs.Close(); err != nil {
			errs = append(errs, err)
		}
	}
	if n.stable != nil {
		n.stable.Close()
	}
	return errors.Join(errs...)
}

// status describes the cluster as this node sees it. Each member's lag is
// computed from the applied indexes the nodes announce, so it is as old as
// the last announcement (AnnounceInterval).
func (n *clusterNode) status() protocol.ClusterStatus {
	st := n.raft.Stats()
	u := func(k string) uint64 { v, _ := strconv.ParseUint(st[k], 10, 64); return v }
	_, leader := n.raft.LeaderWithID()
	cs := protocol.ClusterStatus{
		NodeID:       n.id,
		Leader:       string(leader),
		State:        stateName(n.raft.State()),
		Mode:         "cluster",
		Cluster:      n.cfg.Name,
		Term:         u("term"),
		CommitIndex:  u("commit_index"),
		AppliedIndex: u("applied_index"),
		Peers:        []protocol.Peer{},
		Logs:         len(n.fsm.Logs()),
	}
	rec := n.recent()
	// Lag is measured against the furthest index known: this node's
	// commit index, or a higher applied index another node announced (a
	// follower that just restarted does not know the commit index yet).
	ref := cs.CommitIndex
	for _, a := range rec {
		ref = max(ref, a.Applied)
	}
	f := n.raft.GetConfiguration()
	if f.Error() == nil {
		for _, srv := range f.Configuration().Servers {
			id := string(srv.ID)
			p := protocol.Peer{ID: id, Address: string(srv.Address), Voter: srv.Suffrage == raft.Voter, State: "follower"}
			switch {
			case id == string(leader):
				p.State = "leader"
			case id == n.id:
				p.State = cs.State
			}
			if srv.Suffrage == raft.Nonvoter {
				p.Role = "nonvoter"
			} else {
				p.Role = "voter"
			}
			applied := uint64(0)
			if id == n.id {
				applied = cs.AppliedIndex
				p.Host, p.Reads = hostname, n.s.reads.Load()
			} else if a, ok := rec[id]; ok {
				applied = a.Applied
				p.Host, p.Reads = a.Host, a.Reads
			} else {
				p.State = "unreachable"
			}
			if ref > applied {
				p.LagIndex = ref - applied
			}
			cs.Peers = append(cs.Peers, p)
		}
	}
	return cs
}

func stateName(s raft.RaftState) string {
	switch s {
	case raft.Leader:
		return "leader"
	case raft.Follower:
		return "follower"
	case raft.Candidate:
		return "candidate"
	case raft.Shutdown:
		return "shutdown"
	}
	return s.String()
}

// fsmDedupWindow is the FSM's DedupWindow for --dedup-window: 0 there
// disables deduplication, which the FSM says with a negative window (its
// 0 takes the default).
func fsmDedupWindow(w time.Duration) time.Duration {
	if w == 0 {
		return -1
	}
	return w
}
