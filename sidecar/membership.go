package sidecar

// Membership: how nodes find each other (announcements), how a cluster
// forms (--bootstrap-expect), joins as non-voters, promotions, the
// demotion of a voter that rejoined with a wiped data dir, leaves and
// removals.

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/hashicorp/raft"
	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/sidecar/protocol"
)

// announce publishes this node's announcement: who it is, whether it
// holds Raft state, how far it has applied, whether it is leaving. The
// leader reconciles the membership from them.
func (n *clusterNode) announce() {
	n.mu.Lock()
	leaving := n.leaving
	n.mu.Unlock()
	// A learner says so only once it holds Raft state: before, its
	// votes are refused anyway, and a node that joins through the
	// bootstrap may not know it yet.
	a := announcement{ID: n.id, HasState: n.hasState(), Applied: n.raft.AppliedIndex(), Leaving: leaving,
		Host: hostname, Reads: n.s.reads.Load(), ReadReplica: n.cfg.ReadReplica, Started: n.s.started.UnixNano(),
		Learner: n.learner() && n.hasState()}
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
	noteBootstrap := n.startedEmpty && n.cfg.BootstrapExpect > 0 && !n.hasState()
	n.mu.Lock()
	n.seen[a.ID] = a
	n.newest[a.ID] = max(n.newest[a.ID], a.Started)
	if noteBootstrap {
		n.noteBootstrapLocked(a)
	}
	n.mu.Unlock()
}

// noteBootstrapLocked learns from a, heard while this node has no Raft
// state, which node it expects to bootstrap the cluster (see learner):
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

// storesHoldLog reports, before Raft starts, whether this node's stores
// hold Raft log entries or a snapshot: it has been in a cluster's log
// (bootstrapped it, or stored what a leader sent). A stored term alone
// does not count: a node that only voted has acknowledged nothing. Once
// Raft runs, hasState says the same.
func (n *clusterNode) storesHoldLog() bool {
	if last, err := n.logs.LastIndex(); err == nil && last > 0 {
		return true
	}
	metas, err := n.snaps.List()
	return err == nil && len(metas) > 0
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

// reconcile adds announced nodes that are not members, as non-voters; it
// promotes non-voters, other than read replicas, while fewer than Voters
// voters are there, each once it has caught up (promotable). A node thus
// holds the log before it counts toward a quorum or votes.
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
// a learner: a node restarted with its id on a wiped data dir, which has
// forgotten what it acknowledged and whom it voted for, so its vote could
// elect a candidate that lacks committed entries. As a non-voter it has no
// vote; it catches up and is promoted again (promotable). Only once the
// voters left, heard from since the leader first saw it a learner, are a
// majority of them: a voter that has just crashed, still in recent(), must
// not end up in the majority. Until then it stays a voter, and votes (see
// docs/operations.md: do not restart a voter empty while another is
// down). It reports whether it changed the configuration.
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
		voters := 0
		for _, s := range servers {
			if s.Suffrage == raft.Voter {
				voters++
			}
		}
		if voters-1 < 2 {
			// Never down to the leader alone: demoting every
			// learner at once (all followers restarted empty during
			// a bootstrap, say) would leave appends acknowledged on
			// one disk. The next learner waits for a promotion.
			continue
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
