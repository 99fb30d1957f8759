package sidecar

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
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
	// readyTerm is the term in which this leader has committed an entry
	// of its own (a barrier, see readIndex); 0: none yet.
	readyTerm atomic.Uint64
	// leaderReads shares the leader's read index among concurrent
	// linearizable reads (its own, and followers' questions for it);
	// followerReads shares a follower's question for it.
	leaderReads, followerReads coalescer
	// reconciles counts the leader's membership passes (for tests).
	reconciles atomic.Uint64
	// handingOver is set while this leader hands its leadership over
	// because its copy of a log failed (failedHere).
	handingOver atomic.Bool
	metrics     *clusterMetrics
	stable      *raftfsm.StableStore
	snaps       *raftfsm.SnapshotStore
	trans       *raftfsm.NATSTransport

	announceSubject string
	leaveSubject    string
	stepDownSubject string
	announceSub     *nats.Subscription
	termSub         *nats.Subscription // onTerm

	applier applier

	mu         sync.Mutex // guards seen, newest, leaderSubs, leaving, leaderSince and the bootstrap fields
	seen       map[string]announcement
	newest     map[string]int64     // node id -> latest Started announced
	leaderSubs []*nats.Subscription // the leader-only endpoints, while leading
	leaving    bool                 // stop announcing: a graceful leave
	// leaderSince is when this node last took up the leadership: a
	// member is unheard of (removeDead) only from then on.
	leaderSince time.Time

	// A node that starts without Raft state and joins a running cluster
	// is a learner (see learner): startedEmpty is set before Raft starts.
	// While this node has no Raft state and has heard no node with state
	// (sawState), everFresh collects the nodes it heard announce none;
	// once they are --bootstrap-expect many, the lowest of them is the
	// bootstrapper, and this node joined through the bootstrap, not as a
	// learner (latched).
	startedEmpty bool
	everFresh    map[string]bool
	sawState     bool
	bootstrapper string
	// promoted: this node, started empty, has seen itself a non-voter and
	// then a voter again (the leader promoted it once it had caught up).
	// sawNonvoter is owned by run.
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
	n.leaderReads.run, n.followerReads.run = n.readIndex, n.askReadIndex
	// A question to the leader takes a round trip, the first read index
	// of a term a barrier: one taking longer than this is likely lost.
	n.leaderReads.stale, n.followerReads.stale = cfg.HeartbeatTimeout/4, cfg.HeartbeatTimeout/4
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
	n.startedEmpty = !n.storesHoldLog()
	if n.raft, err = raft.NewRaft(rc, n.fsm, cache, n.stable, snaps, n.trans); err != nil {
		return fmt.Errorf("start raft: %w", err)
	}
	if n.announceSub, err = n.rnc.Subscribe(n.announceSubject, n.onAnnounce); err != nil {
		return err
	}
	n.announceSub.SetPendingLimits(-1, -1)
	if n.termSub, err = n.rnc.Subscribe(n.termSubject(n.id), n.onTerm); err != nil {
		return err
	}
	n.termSub.SetPendingLimits(-1, -1)
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
