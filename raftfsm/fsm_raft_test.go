package raftfsm

import (
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
)

// fsmNode is one Raft node of an in-process cluster running the FSM on our
// own log and stable stores (the transport is raft's in-memory one; the
// NATS transport has its own tests).
type fsmNode struct {
	id    raft.ServerID
	dir   string
	fsm   *FSM
	logs  *LogStore
	stab  *StableStore
	trans *raft.InmemTransport
	raft  *raft.Raft
}

func startFSMNode(t *testing.T, id raft.ServerID, dir string, trailing uint64) *fsmNode {
	t.Helper()
	n := &fsmNode{id: id, dir: dir}
	var err error
	n.fsm = openFSM(t, fsmConfig(filepath.Join(dir, "fsm"), logcore.OSFS{}))
	if n.logs, err = OpenLogStore(filepath.Join(dir, "raft", "log"), testLogConfig(logcore.OSFS{})); err != nil {
		t.Fatal(err)
	}
	if n.stab, err = OpenStableStore(filepath.Join(dir, "raft", "stable"), logcore.OSFS{}); err != nil {
		t.Fatal(err)
	}
	snaps, err := raft.NewFileSnapshotStore(filepath.Join(dir, "raft"), 2, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	_, n.trans = raft.NewInmemTransport(raft.ServerAddress(id))
	c := raft.DefaultConfig()
	c.LocalID = id
	c.HeartbeatTimeout = 50 * time.Millisecond
	c.ElectionTimeout = 50 * time.Millisecond
	c.LeaderLeaseTimeout = 50 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	c.SnapshotThreshold = 1 << 30 // snapshots only when the test asks
	c.TrailingLogs = trailing
	c.NoSnapshotRestoreOnStart = true // the FSM is persistent
	c.LogOutput = io.Discard
	if n.raft, err = raft.NewRaft(c, n.fsm, n.logs, n.stab, snaps, n.trans); err != nil {
		t.Fatal(err)
	}
	return n
}

func (n *fsmNode) stop(t *testing.T) {
	t.Helper()
	if err := n.raft.Shutdown().Error(); err != nil {
		t.Fatal(err)
	}
	n.fsm.Close()
	n.logs.Close()
	n.stab.Close()
}

// connect wires the in-memory transports of all nodes to each other.
func connect(nodes ...*fsmNode) {
	for _, a := range nodes {
		for _, b := range nodes {
			if a != b {
				a.trans.Connect(raft.ServerAddress(b.id), b.trans)
			}
		}
	}
}

// waitUntil waits for cond with the package's polling helper.
func waitUntil(t *testing.T, what string, cond func() bool) {
	t.Helper()
	waitFor(t, 20*time.Second, func() string { return what }, cond)
}

func leaderOf(nodes []*fsmNode) *fsmNode {
	for _, n := range nodes {
		if n != nil && n.raft.State() == raft.Leader {
			return n
		}
	}
	return nil
}

// state is what a node's FSM holds, for comparison.
func state(t *testing.T, f *FSM) string {
	out := ""
	for _, name := range f.Logs() {
		out += fmt.Sprintf("%s%v;", name, values(t, f, name))
	}
	return out
}

// applyN applies commands from to to, each with a msg id so that a retry
// after a leadership change (an indefinite outcome) never duplicates.
func applyN(t *testing.T, nodes []*fsmNode, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		op := appendOp(fmt.Sprintf("log%d", i%2), fmt.Sprint(i))
		op.MsgID = fmt.Sprintf("cmd-%d", i)
		ops := []Op{op}
		if i%10 == 0 {
			o := appendOp("log0", "once")
			o.MsgID = "every-tenth"
			ops = append(ops, o)
		}
		b, err := EncodeCommand(&Command{Time: int64(i), Ops: ops})
		must(t, err)
		for attempt := 0; ; attempt++ {
			var l *fsmNode
			waitUntil(t, "a leader", func() bool { l = leaderOf(nodes); return l != nil })
			f := l.raft.Apply(b, 5*time.Second)
			err := f.Error()
			if (errors.Is(err, raft.ErrLeadershipLost) || errors.Is(err, raft.ErrNotLeader)) && attempt < 20 {
				continue
			}
			if err != nil {
				t.Fatalf("apply %d: %v", i, err)
			}
			for _, r := range f.Response().([]Result) {
				if r.Err != nil {
					t.Fatalf("apply %d: %v", i, r.Err)
				}
			}
			break
		}
	}
}

// TestFSMReplicatedWithRaft runs the FSM in a 3-node Raft cluster: every
// replica holds the same records; a follower restarted on its files replays
// Raft entries without duplicating any; a new node catches up from a
// snapshot after the log was compacted.
func TestFSMReplicatedWithRaft(t *testing.T) {
	base := t.TempDir()
	nodes := make([]*fsmNode, 3)
	var servers []raft.Server
	for i := range nodes {
		id := raft.ServerID(fmt.Sprintf("n%d", i))
		nodes[i] = startFSMNode(t, id, filepath.Join(base, string(id)), 20)
		servers = append(servers, raft.Server{ID: id, Address: raft.ServerAddress(id)})
	}
	defer func() {
		for _, n := range nodes {
			if n != nil {
				n.stop(t)
			}
		}
	}()
	connect(nodes...)
	must(t, nodes[0].raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error())
	applyN(t, nodes, 0, 100)
	want := state(t, leaderOf(nodes).fsm)
	for _, n := range nodes {
		waitUntil(t, "replication to "+string(n.id), func() bool { return state(t, n.fsm) == want })
	}

	// Restart a follower on its files: Raft replays entries it has
	// already applied; the FSM skips them.
	var f int
	for i, n := range nodes {
		if n.raft.State() != raft.Leader {
			f = i
			break
		}
	}
	nodes[f].stop(t)
	nodes[f] = startFSMNode(t, nodes[f].id, nodes[f].dir, 20)
	connect(nodes...)
	applyN(t, nodes, 100, 150)
	want = state(t, leaderOf(nodes).fsm)
	for _, n := range nodes {
		waitUntil(t, "catch-up of "+string(n.id), func() bool { return state(t, n.fsm) == want })
	}
	// log0 has the 75 even entries and one "once" (the msg id repeats).
	if got := len(values(t, nodes[f].fsm, "log0")); got != 75+1 {
		t.Fatalf("log0 holds %d records on the restarted node, want 76", got)
	}

	// Compact the leader's log behind a snapshot, then add a new node: it
	// can only catch up from the snapshot.
	leader := leaderOf(nodes)
	must(t, leader.raft.Snapshot().Error())
	applyN(t, nodes, 150, 200)
	n4 := startFSMNode(t, "n3", filepath.Join(base, "n3"), 20)
	nodes = append(nodes, n4)
	connect(nodes...)
	waitUntil(t, "a leader", func() bool { leader = leaderOf(nodes); return leader != nil })
	must(t, leader.raft.AddVoter(n4.id, raft.ServerAddress(n4.id), 0, 5*time.Second).Error())
	applyN(t, nodes, 200, 210)
	want = state(t, leaderOf(nodes).fsm)
	waitUntil(t, "snapshot catch-up of n3", func() bool { return state(t, n4.fsm) == want })
	if first, _ := n4.logs.FirstIndex(); first <= 1 {
		t.Fatalf("the new node's Raft log starts at %d: it did not need the snapshot", first)
	}
}
