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

// A voter restarted with its id on a wiped data dir has forgotten what it
// acknowledged and whom it voted for: the leader demotes it (the other
// voters being live), it catches up as a non-voter and is a voter again;
// nothing acknowledged is lost.
func TestClusterWipedVoterRejoinsAsLearner(t *testing.T) {
	tc := newThreeNodes(t)
	nc := tc.client()
	acked := appendN(t, nc, "orders", "acked", 5)
	leader := tc.leader()
	wiped := others(leader)[0]
	tc.converged("orders", acked)
	tc.stop(wiped)
	if err := os.RemoveAll(tc.cfgs[wiped].DataDir); err != nil {
		t.Fatal(err)
	}
	tc.start(wiped, 3) // same id, fresh data dir
	want := append(acked, appendN(t, nc, "orders", "after", 2)...)
	tc.converged("orders", want)
	eventually(t, 20*time.Second, wiped+" a voter again", func() bool {
		p, ok := tc.peer(wiped)
		return ok && p.Voter && tc.node(wiped).cluster.promoted.Load()
	})
	if h := tc.configHistory(tc.leader(), wiped); !slices.Contains(h, "nonvoter") || h[len(h)-1] != "voter" {
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

// Five fresh nodes, all with --bootstrap-expect 3 and started in an order
// where the first three heard are not the lowest ids, form one cluster:
// three voters, the others non-voters, appends committed. (A vote rule that
// kept fresh nodes to the bootstrapper they first expected deadlocked this.)
func TestClusterFormsWithMoreFreshNodesThanExpected(t *testing.T) {
	tc := newTestCluster(t)
	for _, id := range []string{"n3", "n2", "n4", "n5", "n1"} {
		tc.start(id, 3)
	}
	nc := tc.client()
	want := appendN(t, nc, "orders", "a", 3)
	tc.converged("orders", want)
	eventually(t, 20*time.Second, "three voters", func() bool {
		voters := 0
		for _, id := range tc.ids() {
			if p, ok := tc.peer(id); ok && p.Voter {
				voters++
			}
		}
		return voters == 3
	})
}
