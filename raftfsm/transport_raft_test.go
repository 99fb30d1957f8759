package raftfsm

import (
	"bytes"
	"errors"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/nats-io/nats.go"
)

// applyAll applies the commands through whichever node leads, all in
// flight at once, as a client would: when leadership moves (under -race on
// a loaded host, 50 ms timeouts do expire), it re-applies what did not
// definitely commit on the new leader; the FSM skips repeats. It returns
// the node that led last and how many times it had to retry.
func applyAll(tb testing.TB, nodes []*transportNode, cmds [][]byte) (*transportNode, int) {
	tb.Helper()
	retries := 0
	for {
		leader := waitTransportLeader(tb, 10*time.Second, nodes...)
		futures := make([]raft.ApplyFuture, len(cmds))
		for i, cmd := range cmds {
			futures[i] = leader.raft.Apply(cmd, 5*time.Second)
		}
		failed := -1
		for i, f := range futures {
			err := f.Error()
			if err == nil {
				continue
			}
			if !errors.Is(err, raft.ErrLeadershipLost) && !errors.Is(err, raft.ErrNotLeader) {
				tb.Fatalf("Apply %d on %s: %v", i, leader.id, err)
			}
			if failed < 0 {
				failed = i
			}
		}
		if failed < 0 {
			return leader, retries
		}
		if retries++; retries > 20 {
			tb.Fatalf("leadership moved %d times while applying", retries)
		}
		tb.Logf("leadership moved away from %s at command %d of %d; retrying", leader.id, failed, len(cmds))
		cmds = cmds[failed:]
	}
}

// commands returns n distinct commands of about size bytes each, numbered
// from first.
func commands(first, n, size int) [][]byte {
	cmds := make([][]byte, n)
	for i := range cmds {
		cmd := fmt.Appendf(nil, "cmd-%06d-", first+i)
		cmds[i] = append(cmd, bytes.Repeat([]byte{'x'}, max(0, size-len(cmd)))...)
	}
	return cmds
}

// waitApplied waits until every node's FSM holds each of want exactly once,
// all nodes in the same order; with inOrder, in want's order too (which
// holds when no command had to be retried).
func waitApplied(tb testing.TB, timeout time.Duration, want [][]byte, inOrder bool, nodes ...*transportNode) {
	tb.Helper()
	wanted := make(map[string]bool, len(want))
	for _, w := range want {
		wanted[string(w)] = true
	}
	var first [][]byte
	for _, n := range nodes {
		pollUntil(tb, timeout, fmt.Sprintf("%s to apply %d commands", n.id, len(want)), func() bool {
			got, _ := n.fsm.state()
			return len(got) >= len(want)
		})
		got, _ := n.fsm.state()
		if len(got) != len(want) {
			tb.Fatalf("%s applied %d commands, want %d", n.id, len(got), len(want))
		}
		for i, g := range got {
			switch {
			case !wanted[string(g)]:
				tb.Fatalf("%s: command %d is %.20q, never applied", n.id, i, g)
			case inOrder && !bytes.Equal(g, want[i]):
				tb.Fatalf("%s: command %d is %.20q, want %.20q", n.id, i, g, want[i])
			case first != nil && !bytes.Equal(g, first[i]):
				tb.Fatalf("%s: command %d is %.20q, but %s has %.20q", n.id, i, g, nodes[0].id, first[i])
			}
		}
		if first == nil {
			first = got
		}
	}
}

// Three Raft servers that talk only over NATS elect a leader, replicate,
// and survive the loss of the leader (its Raft and its NATS connection).
func TestRaftOverNATSReplicatesAndFailsOver(t *testing.T) {
	ns := startStreamNATS(t, 0)
	nodes := []*transportNode{
		startNATSTransportNode(t, ns, "n1", nil),
		startNATSTransportNode(t, ns, "n2", nil),
		startNATSTransportNode(t, ns, "n3", nil),
	}
	bootstrapTransportNodes(t, nodes...)

	want := commands(0, 1000, 64)
	leader, retries := applyAll(t, nodes, want)
	waitApplied(t, 10*time.Second, want, retries == 0, nodes...)

	// Kill the leader: its Raft stops and its NATS connection drops, so
	// nothing it held is closed politely.
	if err := leader.raft.Shutdown().Error(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	leader.nc.Close()
	var rest []*transportNode
	for _, n := range nodes {
		if n != leader {
			rest = append(rest, n)
		}
	}
	start := time.Now()
	next := waitTransportLeader(t, 10*time.Second, rest...)
	t.Logf("leader %s killed; %s elected after %s", leader.id, next.id, time.Since(start).Round(time.Millisecond))

	more := commands(len(want), 200, 64)
	applyAll(t, rest, more)
	waitApplied(t, 10*time.Second, append(want, more...), false, rest...)
}

// A server that joins after the log was compacted catches up through an
// InstallSnapshot whose stream crosses NATS in many chunks.
func TestRaftOverNATSInstallsSnapshot(t *testing.T) {
	const maxPayload = 16 << 10
	ns := startStreamNATS(t, maxPayload)
	tweak := func(c *raft.Config) {
		c.SnapshotThreshold = 64
		c.TrailingLogs = 16
	}
	n1 := startNATSTransportNode(t, ns, "n1", tweak)
	n2 := startNATSTransportNode(t, ns, "n2", tweak)
	bootstrapTransportNodes(t, n1, n2)

	want := commands(0, 600, 512) // a snapshot of about 300 KiB
	applyAll(t, []*transportNode{n1, n2}, want)
	waitApplied(t, 10*time.Second, want, false, n1, n2)
	// Both compact their logs, so that whichever leads must send n3 a
	// snapshot.
	for _, n := range []*transportNode{n1, n2} {
		if err := n.raft.Snapshot().Error(); err != nil {
			t.Fatalf("Snapshot on %s: %v", n.id, err)
		}
		if first, err := n.logs.FirstIndex(); err != nil || first <= 1 {
			t.Fatalf("%s's log not compacted after the snapshot: first index %d, %v", n.id, first, err)
		}
	}

	// Count what crosses NATS towards the new server.
	sniffer := connectStreamNATS(t, ns)
	var frames, dataBytes, largest atomic.Int64
	sub, err := sniffer.Subscribe("natlog._raft.test.n3.conn.*", func(m *nats.Msg) {
		frames.Add(1)
		if kind, _, payload, ok := parseFrame(m.Data); ok && kind == frameData {
			dataBytes.Add(int64(len(payload)))
		}
		if n := int64(len(m.Data)); n > largest.Load() {
			largest.Store(n) // only this callback writes it
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := sniffer.Flush(); err != nil {
		t.Fatal(err)
	}

	n3 := startNATSTransportNode(t, ns, "n3", tweak)
	addVoter(t, []*transportNode{n1, n2}, n3)
	waitApplied(t, 15*time.Second, want, false, n1, n2, n3)
	if _, restores := n3.fsm.state(); restores < 1 {
		t.Fatal("n3 caught up without a snapshot, though the log it needed was compacted")
	}

	snapshotSize := 0
	for _, c := range want {
		snapshotSize += len(c)
	}
	pollUntil(t, 5*time.Second, "the sniffer to see the snapshot", func() bool { return dataBytes.Load() >= int64(snapshotSize) })
	if largest.Load() > maxPayload {
		t.Fatalf("a frame of %d bytes exceeds max payload %d", largest.Load(), maxPayload)
	}
	t.Logf("snapshot of %d bytes; %d frames, %d data bytes towards n3", snapshotSize, frames.Load(), dataBytes.Load())

	// The cluster goes on with three members.
	all := []*transportNode{n1, n2, n3}
	more := commands(len(want), 50, 512)
	applyAll(t, all, more)
	waitApplied(t, 10*time.Second, append(want, more...), false, all...)
}

// addVoter adds n through whichever of nodes leads, retrying when
// leadership moves.
func addVoter(tb testing.TB, nodes []*transportNode, n *transportNode) {
	tb.Helper()
	for try := 0; ; try++ {
		leader := waitTransportLeader(tb, 10*time.Second, nodes...)
		err := leader.raft.AddVoter(n.id, n.addr, 0, 5*time.Second).Error()
		if err == nil {
			return
		}
		if try > 20 || !errors.Is(err, raft.ErrLeadershipLost) && !errors.Is(err, raft.ErrNotLeader) {
			tb.Fatalf("AddVoter %s on %s: %v", n.id, leader.id, err)
		}
	}
}
