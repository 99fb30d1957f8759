package sidecar

import (
	"context"
	"errors"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/raftfsm"
	"github.com/natlog/natlog/sidecar/protocol"
)

// configHistory returns the suffrage of node member in every configuration
// entry of node id's Raft log, oldest first ("absent" where it is not a
// member).
func (tc *testCluster) configHistory(id, member string) []string {
	tc.t.Helper()
	n := tc.node(id).cluster
	first, _ := n.raftLogs.FirstIndex()
	last, _ := n.raftLogs.LastIndex()
	var out []string
	for i := max(first, 1); i <= last; i++ {
		var e raft.Log
		if err := n.raftLogs.GetLog(i, &e); err != nil || e.Type != raft.LogConfiguration {
			continue
		}
		conf := raft.DecodeConfiguration(e.Data)
		suf := "absent"
		for _, srv := range conf.Servers {
			if string(srv.ID) == member {
				suf = strings.ToLower(srv.Suffrage.String())
			}
		}
		if len(out) == 0 || out[len(out)-1] != suf {
			out = append(out, suf)
		}
	}
	return out
}

// others returns n1..n3 without id.
func others(id string) []string {
	var out []string
	for _, o := range []string{"n1", "n2", "n3"} {
		if o != id {
			out = append(out, o)
		}
	}
	return out
}

// neverFor polls cond for d and fails if it ever holds: no event that
// should not happen may happen within d (several election timeouts).
func neverFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if cond() {
			t.Fatalf("%s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// A voter restarted with its id on a wiped data dir has forgotten what it
// acknowledged: it must not give the vote that would elect a candidate
// lacking those (committed, acknowledged) appends. Once the leader that
// holds them is back, the wiped node rejoins as a non-voter, catches up,
// and is a voter again; nothing acknowledged is lost.
func TestClusterWipedVoterRefusesVotesAndRejoinsAsLearner(t *testing.T) {
	tc := newThreeNodes(t)
	nc := tc.client()
	base := appendN(t, nc, "orders", "base", 3)
	leader := tc.leader()
	f := others(leader)
	stale, wiped := f[0], f[1]
	tc.converged("orders", base)
	tc.stop(stale)
	acked := appendN(t, nc, "orders", "acked", 5) // committed by the leader and wiped
	tc.stop(wiped)
	tc.stop(leader)
	if err := os.RemoveAll(tc.cfgs[wiped].DataDir); err != nil {
		t.Fatal(err)
	}
	tc.start(wiped, 3) // same id, fresh data dir
	tc.start(stale, 3)
	// stale lacks the acknowledged appends: wiped's vote would elect it.
	neverFor(t, 3*time.Second, stale+" elected with the vote of the wiped "+wiped, func() bool {
		return tc.node(stale).status().State == "leader"
	})

	tc.start(leader, 3)
	want := append(append(base, acked...), appendN(t, nc, "orders", "after", 2)...)
	tc.converged("orders", want)
	newLeader := tc.leader()
	eventually(t, 20*time.Second, wiped+" a voter again", func() bool {
		p, ok := tc.peer(wiped)
		return ok && p.Voter && tc.node(wiped).cluster.promoted.Load()
	})
	if h := tc.configHistory(newLeader, wiped); !slices.Contains(h, "nonvoter") || h[len(h)-1] != "voter" {
		t.Errorf("%s's suffrage in the configurations: %v; want a non-voter before a voter again", wiped, h)
	}
}

// The leader adds a node to a running cluster as a non-voter and promotes
// it only once it has caught up: it holds the log before it counts toward
// a quorum.
func TestClusterNewMemberJoinsAsNonvoterFirst(t *testing.T) {
	tc := newTestCluster(t)
	tc.start("n1", 2)
	tc.start("n2", 2)
	nc := tc.client()
	want := appendN(t, nc, "orders", "a", 20)
	tc.start("n3", 0)
	eventually(t, 20*time.Second, "n3 a voter", func() bool { p, ok := tc.peer("n3"); return ok && p.Voter })
	tc.converged("orders", want)
	h := tc.configHistory(tc.leader(), "n3")
	if !slices.Equal(h, []string{"absent", "nonvoter", "voter"}) {
		t.Errorf("n3's suffrage in the configurations: %v; want absent, nonvoter, voter", h)
	}
}

// A fresh node votes only for the node it expects to bootstrap the cluster
// (the lowest id of --bootstrap-expect fresh nodes), and, having heard a
// node with state first (a running cluster), for none until it has state.
func TestVoteRuleWithoutRaftState(t *testing.T) {
	fresh := func(id string) announcement { return announcement{ID: id} }
	withState := func(id string) announcement { return announcement{ID: id, HasState: true} }
	for _, tc := range []struct {
		name  string
		heard []announcement
		votes []string // of n1, n2, n3, n4
	}{
		{"nothing heard", nil, nil},
		{"two of three fresh", []announcement{fresh("n2"), fresh("n3")}, nil},
		{"three fresh", []announcement{fresh("n2"), fresh("n3"), fresh("n1")}, []string{"n1"}},
		{"a read replica does not count", []announcement{fresh("n2"), {ID: "n1", ReadReplica: true}, fresh("n3")}, nil},
		{"a cluster with state runs", []announcement{fresh("n2"), withState("n1"), fresh("n3"), fresh("n4")}, nil},
		{"the bootstrapper heard fresh, then with state", []announcement{fresh("n1"), fresh("n2"), withState("n1"), fresh("n3")}, []string{"n1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			logs, err := raftfsm.OpenLogStore(dir+"/log", logcore.DefaultConfig())
			if err != nil {
				t.Fatal(err)
			}
			defer logs.Close()
			snaps, err := raftfsm.NewSnapshotStore(dir, 2, nil)
			if err != nil {
				t.Fatal(err)
			}
			cfg := FastClusterConfig()
			cfg.BootstrapExpect = 3
			n := &clusterNode{id: "n2", cfg: cfg, logs: logs, snaps: snaps, startedEmpty: true,
				seen: map[string]announcement{}, newest: map[string]int64{}, everFresh: map[string]bool{}}
			for _, a := range append([]announcement{fresh("n2")}, tc.heard...) {
				n.mu.Lock()
				n.noteBootstrapLocked(a)
				n.mu.Unlock()
			}
			var votes []string
			for _, c := range []string{"n1", "n2", "n3", "n4"} {
				if n.voteRule(raft.ServerID(c), false) {
					votes = append(votes, c)
				}
			}
			if !slices.Equal(votes, tc.votes) {
				t.Errorf("votes for %v, want %v", votes, tc.votes)
			}
		})
	}
}

// A graceful leave while another voter is down would leave a configuration
// whose majority includes the dead voter: the leader refuses it ("would
// lose quorum"), the node shuts down as a member, and after its restart
// the cluster takes appends again.
func TestClusterLeaveRefusedWhileAnotherVoterDown(t *testing.T) {
	tc := newThreeNodes(t)
	nc := tc.client()
	appendN(t, nc, "orders", "base", 2)
	leader := tc.leader()
	f := others(leader)
	dead, leaver := f[0], f[1]
	tc.stop(dead) // crashed, say; still a member (and announced a moment ago)
	appendN(t, nc, "orders", "two-of-three", 2)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	err := tc.node(leader).Leave(ctx) // even the leader's own leave
	cancel()
	if !errors.Is(err, errWouldLoseQuorum) {
		t.Fatalf("leave of %s while %s is down: %v; want %v", leader, dead, err, errWouldLoseQuorum)
	}
	ctx, cancel = context.WithTimeout(context.Background(), 5*time.Second)
	err = tc.node(leaver).Leave(ctx)
	cancel()
	if !errors.Is(err, errWouldLoseQuorum) {
		t.Fatalf("leave of %s while %s is down: %v; want %v", leaver, dead, err, errWouldLoseQuorum)
	}
	tc.stop(leaver)
	tc.start(leaver, 3) // a rolling restart: it comes back with its data dir
	if _, err := appendRetry(t, nc, "orders", "after", "after"); err != nil {
		t.Fatalf("append after %s tried to leave (while %s was down) and restarted: %v", leaver, dead, err)
	}
	for _, id := range []string{dead, leaver} {
		if p, ok := tc.peer(id); !ok || !p.Voter {
			t.Errorf("%s is no voter any more: %+v", id, p)
		}
	}
}

// `natlog cluster remove` of a live voter while another is down is refused
// the same way; of the dead one it is not.
func TestClusterRemoveLiveVoterRefusedWhileAnotherDown(t *testing.T) {
	tc := newThreeNodes(t)
	leader := tc.leader()
	f := others(leader)
	dead, live := f[0], f[1]
	tc.stop(dead)
	if err := tc.node(leader).cluster.removeMember(live, 5*time.Second); !errors.Is(err, errWouldLoseQuorum) {
		t.Fatalf("removing live voter %s while %s is down: %v; want %v", live, dead, err, errWouldLoseQuorum)
	}
	if err := tc.node(live).cluster.removeMember(dead, 5*time.Second); err != nil {
		t.Fatalf("removing dead voter %s: %v", dead, err)
	}
	eventually(t, 20*time.Second, dead+" removed", func() bool { _, ok := tc.peer(dead); return !ok })
	if _, err := appendRetry(t, tc.client(), "orders", "x", "x"); err != nil {
		t.Fatal(err)
	}
}

// The only voter's leave, with read replicas around, keeps it a member:
// removing it would leave no voter at all.
func TestClusterOnlyVoterStaysWithReadReplicas(t *testing.T) {
	tc := newTestCluster(t)
	tc.tweak = func(c *Config) {
		if c.NodeID == "r1" {
			c.Cluster.ReadReplica = true
			c.Cluster.BootstrapExpect = 0
		}
	}
	tc.start("n1", 1)
	tc.start("r1", 0)
	eventually(t, 20*time.Second, "r1 a non-voter", func() bool { p, ok := tc.peer("r1"); return ok && !p.Voter })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	err := tc.node("n1").Leave(ctx)
	cancel()
	if err != nil {
		t.Fatalf("leave of the only voter: %v", err)
	}
	f := tc.node("n1").cluster.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		t.Fatal(err)
	}
	if !slices.ContainsFunc(f.Configuration().Servers, func(s raft.Server) bool { return s.ID == "n1" && s.Suffrage == raft.Voter }) {
		t.Fatalf("the only voter left: configuration %+v", f.Configuration().Servers)
	}
}

// After an outage of NATS longer than the dead node timeout every
// announcement is old; a leader elected then must give the members the
// timeout to announce themselves before it removes any.
func TestDeadMembersCountFromLeadership(t *testing.T) {
	now := time.Now()
	servers := []raft.Server{
		{ID: "n1", Suffrage: raft.Voter}, {ID: "n2", Suffrage: raft.Voter}, {ID: "n3", Suffrage: raft.Voter},
		{ID: "r1", Suffrage: raft.Nonvoter},
	}
	for _, tc := range []struct {
		name        string
		leaderSince time.Duration // ago
		heard       map[string]time.Duration
		dead        []raft.ServerID
	}{
		{"leader since less than the timeout", 10 * time.Second, map[string]time.Duration{"n2": 2 * time.Minute, "n3": 2 * time.Minute}, nil},
		{"leader for longer: unheard members go", 2 * time.Minute, map[string]time.Duration{"n2": time.Second, "n3": 2 * time.Minute}, []raft.ServerID{"n3", "r1"}},
		{"never a voter without a live majority", 2 * time.Minute, map[string]time.Duration{"n2": 2 * time.Minute, "n3": 2 * time.Minute}, []raft.ServerID{"r1"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cfg := FastClusterConfig()
			cfg.DeadNodeTimeout = time.Minute
			n := &clusterNode{id: "n1", cfg: cfg, seen: map[string]announcement{}, started: now.Add(-time.Hour),
				leaderSince: now.Add(-tc.leaderSince)}
			for id, ago := range tc.heard {
				n.seen[id] = announcement{ID: id, at: now.Add(-ago)}
			}
			var dead []raft.ServerID
			for _, srv := range n.deadMembers(servers, now) {
				dead = append(dead, srv.ID)
			}
			if !slices.Equal(dead, tc.dead) {
				t.Errorf("dead %v, want %v", dead, tc.dead)
			}
		})
	}
}

// raft.ErrRaftShutdown can fail the future of an entry the followers have
// committed: the outcome is indefinite, and clients retry with their msg id.
func TestRaftErrorShutdownIsIndefinite(t *testing.T) {
	for _, err := range []error{raft.ErrRaftShutdown, errors.Join(errors.New("apply"), raft.ErrRaftShutdown)} {
		e := raftError(err)
		if e.Code != 409 || e.ErrCode != protocol.CodeNotLeader || !strings.Contains(e.Description, "indefinite") ||
			strings.Contains(e.Description, "nothing was written") {
			t.Errorf("raftError(%v) = %d %d %q; want 409, not leader, indefinite", err, e.Code, e.ErrCode, e.Description)
		}
	}
}
