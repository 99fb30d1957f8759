package raftfsm

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
)

// countingFSM is the test's state machine: the commands "cmd-<k>" it
// applied, in order. Like natlog's FSM it is idempotent: a command whose k
// it already applied (a client retry after a leadership change whose first
// attempt did commit) is skipped, and a k beyond the next one is a gap, which
// the tests report. It is in memory, so a restarted node rebuilds it from
// its snapshot and its Raft log, which is what these tests check.
type countingFSM struct {
	mu       sync.Mutex
	applied  []string // guarded by mu
	gaps     []string // guarded by mu: commands that skipped ahead
	restores int      // guarded by mu: snapshots restored
}

func (f *countingFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	var k int
	if _, err := fmt.Sscanf(string(l.Data), "cmd-%d", &k); err != nil || k > len(f.applied)+1 {
		f.gaps = append(f.gaps, fmt.Sprintf("%q at index %d after %d commands", l.Data, l.Index, len(f.applied)))
		return nil
	}
	if k == len(f.applied)+1 {
		f.applied = append(f.applied, string(l.Data))
	}
	return nil
}

func (f *countingFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return fsmSnapshot(slices.Clone(f.applied)), nil
}

func (f *countingFSM) Restore(r io.ReadCloser) error {
	defer r.Close()
	var applied []string
	if err := json.NewDecoder(r).Decode(&applied); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.applied = applied
	f.restores++
	return nil
}

// state returns a copy of what the FSM applied, the gaps it saw, and how
// many snapshots it restored.
func (f *countingFSM) state() (applied, gaps []string, restores int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return slices.Clone(f.applied), slices.Clone(f.gaps), f.restores
}

type fsmSnapshot []string

func (s fsmSnapshot) Persist(sink raft.SnapshotSink) error {
	if err := json.NewEncoder(sink).Encode([]string(s)); err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (fsmSnapshot) Release() {}

// raftNode is one Raft server on our stores, with an in-memory transport.
type raftNode struct {
	id, dir string
	logs    *LogStore
	stable  *StableStore
	snaps   *raft.FileSnapshotStore
	trans   *raft.InmemTransport
	fsm     *countingFSM
	raft    *raft.Raft
}

// testRaftConfig has timeouts in tens of milliseconds (raft's own tests use
// the same), a TrailingLogs small enough that compaction removes segments,
// and no automatic snapshots: tests take them.
func testRaftConfig(t testing.TB, id string) *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = raft.ServerID(id)
	c.HeartbeatTimeout = 50 * time.Millisecond
	c.ElectionTimeout = 50 * time.Millisecond
	c.LeaderLeaseTimeout = 50 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	c.SnapshotThreshold = 1 << 40
	c.SnapshotInterval = time.Hour
	c.TrailingLogs = 16
	c.Logger = hclog.New(&hclog.LoggerOptions{Name: id, Level: hclog.Warn, Output: newTestWriter(t)})
	return c
}

// startRaftNode opens the stores in dir and starts Raft on them. With
// bootstrap set it first bootstraps the given servers, as a fresh node does.
func startRaftNode(t testing.TB, dir, id string, servers []raft.Server, bootstrap bool) *raftNode {
	t.Helper()
	return startRaftNodeWith(t, dir, id, servers, bootstrap, testLogConfig(logcore.OSFS{}))
}

// startRaftNodeWith is startRaftNode with the log store's logcore config.
func startRaftNodeWith(t testing.TB, dir, id string, servers []raft.Server, bootstrap bool, logCfg logcore.Config) *raftNode {
	t.Helper()
	n := &raftNode{id: id, dir: dir, fsm: &countingFSM{}}
	var err error
	if n.logs, err = OpenLogStore(filepath.Join(dir, "log"), logCfg); err != nil {
		t.Fatal(err)
	}
	if n.stable, err = OpenStableStore(filepath.Join(dir, "stable"), nil); err != nil {
		t.Fatal(err)
	}
	// The snapshot store keeps its files in dir/snapshots.
	if n.snaps, err = raft.NewFileSnapshotStore(dir, 2, newTestWriter(t)); err != nil {
		t.Fatal(err)
	}
	_, n.trans = raft.NewInmemTransport(raft.ServerAddress(id))
	conf := testRaftConfig(t, id)
	if bootstrap {
		err := raft.BootstrapCluster(conf, n.logs, n.stable, n.snaps, n.trans, raft.Configuration{Servers: servers})
		if err != nil {
			t.Fatalf("%s: BootstrapCluster: %v", id, err)
		}
	}
	if n.raft, err = raft.NewRaft(conf, n.fsm, n.logs, n.stable, n.snaps, n.trans); err != nil {
		t.Fatalf("%s: NewRaft: %v", id, err)
	}
	t.Cleanup(n.stop)
	return n
}

// stop shuts Raft down and closes the stores; it may be called twice.
func (n *raftNode) stop() {
	if n.raft == nil {
		return
	}
	n.raft.Shutdown().Error()
	n.trans.Close()
	n.logs.Close()
	n.stable.Close()
	n.raft = nil
}

// waitLeader waits until one of nodes leads and returns it.
func waitLeader(t testing.TB, nodes ...*raftNode) *raftNode {
	t.Helper()
	var leader *raftNode
	waitFor(t, 10*time.Second, func() string { return "no leader" }, func() bool {
		for _, n := range nodes {
			if n.raft != nil && n.raft.State() == raft.Leader {
				leader = n
				return true
			}
		}
		return false
	})
	return leader
}

// applyCommands applies "cmd-<from>".."cmd-<to>" on whichever of nodes
// leads, many in flight at once. Commands whose outcome is indefinite
// because leadership moved (50 ms timeouts on a busy machine) are applied
// again, in order, on the new leader, as a client would; the FSM skips the
// ones that did commit.
func applyCommands(t *testing.T, nodes []*raftNode, from, to int) {
	t.Helper()
	var pending []int
	for i := from; i <= to; i++ {
		pending = append(pending, i)
	}
	for attempt := 1; len(pending) > 0; attempt++ {
		if attempt > 20 {
			t.Fatalf("%d commands still not applied after %d attempts", len(pending), attempt-1)
		}
		leader := waitLeader(t, nodes...)
		futures := make([]raft.ApplyFuture, len(pending))
		for i, k := range pending {
			futures[i] = leader.raft.Apply(fmt.Appendf(nil, "cmd-%d", k), 5*time.Second)
		}
		var failed []int
		for i, f := range futures {
			switch err := f.Error(); {
			case err == nil:
			case errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrNotLeader):
				failed = append(failed, pending[i])
			default:
				t.Fatalf("Apply(cmd-%d) on %s: %v", pending[i], leader.id, err)
			}
		}
		pending = failed
	}
}

// cmdList returns "cmd-1".."cmd-n".
func cmdList(n int) []string {
	var c []string
	for i := 1; i <= n; i++ {
		c = append(c, fmt.Sprintf("cmd-%d", i))
	}
	return c
}

// waitFSMApplied waits until n's FSM has applied exactly want.
func waitFSMApplied(t *testing.T, n *raftNode, want []string) {
	t.Helper()
	waitFor(t, 10*time.Second, func() string {
		got, _, _ := n.fsm.state()
		return fmt.Sprintf("%s applied %d commands, want %d", n.id, len(got), len(want))
	}, func() bool {
		got, gaps, _ := n.fsm.state()
		return len(got) >= len(want) || len(gaps) > 0
	})
	got, gaps, _ := n.fsm.state()
	if len(gaps) > 0 {
		t.Fatalf("%s applied commands out of order: %q", n.id, gaps)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("%s applied %d commands that differ from the %d wanted (first %q, last %q)",
			n.id, len(got), len(want), got[0], got[len(got)-1])
	}
}

// checkLogHolds checks that the log store holds every index from its
// FirstIndex on and that its commands run in order up to "cmd-<lastCmd>"
// without skipping one (a command may repeat: a client retry).
func checkLogHolds(t *testing.T, s raft.LogStore, lastCmd int) {
	t.Helper()
	first, last := indexes(t, s)
	if first == 0 {
		t.Fatal("the log is empty")
	}
	prev := 0
	for i := first; i <= last; i++ {
		var l raft.Log
		if err := s.GetLog(i, &l); err != nil {
			t.Fatalf("GetLog(%d) of %d..%d: %v", i, first, last, err)
		}
		if l.Index != i || l.Term == 0 {
			t.Fatalf("entry %d: %+v", i, l)
		}
		if l.Type != raft.LogCommand {
			continue // the bootstrap configuration has no AppendedAt
		}
		if l.AppendedAt.IsZero() {
			t.Fatalf("entry %d: no AppendedAt", i)
		}
		var k int
		if _, err := fmt.Sscanf(string(l.Data), "cmd-%d", &k); err != nil {
			t.Fatalf("entry %d holds %q", i, l.Data)
		}
		if prev != 0 && k > prev+1 {
			t.Fatalf("entry %d holds cmd-%d after cmd-%d", i, k, prev)
		}
		prev = max(prev, k)
	}
	if prev != lastCmd {
		t.Fatalf("the last command in the log is cmd-%d, want cmd-%d", prev, lastCmd)
	}
}

// TestRaftSingleNodeRestart runs a real single-node Raft on our LogStore,
// StableStore and a FileSnapshotStore: bootstrap, apply, snapshot (which
// compacts the log), apply more, restart on the same files, and check that
// the log holds every entry, that the node does not bootstrap again, and
// that the FSM, rebuilt from the snapshot and the log, saw every command
// exactly once.
func TestRaftSingleNodeRestart(t *testing.T) {
	dir := t.TempDir()
	servers := []raft.Server{{ID: "n1", Address: "n1"}}
	n := startRaftNode(t, dir, "n1", servers, true)
	waitLeader(t, n)
	applyCommands(t, []*raftNode{n}, 1, 150)
	if err := n.raft.Snapshot().Error(); err != nil {
		t.Fatalf("Snapshot: %v", err)
	}
	if first, _ := indexes(t, n.logs); first <= 1 {
		t.Fatalf("FirstIndex after a snapshot with 16 trailing logs is %d: nothing was compacted", first)
	}
	applyCommands(t, []*raftNode{n}, 151, 300)
	waitFSMApplied(t, n, cmdList(300))
	lastIndex := n.raft.LastIndex()
	term, err := n.stable.GetUint64(keyCurrentTerm)
	if err != nil || term == 0 {
		t.Fatalf("CurrentTerm = %d, %v", term, err)
	}
	n.stop()

	// The files, read back on their own.
	logs, err := OpenLogStore(filepath.Join(dir, "log"), testLogConfig(logcore.OSFS{}))
	if err != nil {
		t.Fatal(err)
	}
	if _, last := indexes(t, logs); last != lastIndex {
		t.Fatalf("LastIndex on disk = %d, raft said %d", last, lastIndex)
	}
	checkLogHolds(t, logs, 300)
	stable, err := OpenStableStore(filepath.Join(dir, "stable"), nil)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := stable.GetUint64(keyCurrentTerm); err != nil || got != term {
		t.Fatalf("CurrentTerm on disk = %d, %v; want %d", got, err, term)
	}
	snaps, err := raft.NewFileSnapshotStore(dir, 2, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if ok, err := raft.HasExistingState(logs, stable, snaps); err != nil || !ok {
		t.Fatalf("HasExistingState = %v, %v", ok, err)
	}
	_, trans := raft.NewInmemTransport("n1")
	err = raft.BootstrapCluster(testRaftConfig(t, "n1"), logs, stable, snaps, trans, raft.Configuration{Servers: servers})
	if !errors.Is(err, raft.ErrCantBootstrap) {
		t.Fatalf("BootstrapCluster on existing state = %v, want ErrCantBootstrap", err)
	}
	logs.Close()
	stable.Close()

	// The restart.
	n = startRaftNode(t, dir, "n1", servers, false)
	waitLeader(t, n)
	waitFSMApplied(t, n, cmdList(300))
	if _, _, restores := n.fsm.state(); restores != 1 {
		t.Fatalf("the restarted FSM restored %d snapshots, want 1", restores)
	}
	applyCommands(t, []*raftNode{n}, 301, 320)
	waitFSMApplied(t, n, cmdList(320))
	checkLogHolds(t, n.logs, 320)
}

// TestRaftThreeNodesFollowerRestart runs three Raft servers in one process
// on our stores and restarts a follower while the others go on. The
// follower catches up either from the leader's log or, when the leader has
// compacted the entries it needs, by installing a snapshot (Raft finds them
// missing through raft.ErrLogNotFound, and then, since our store is
// monotonic, empties the follower's log before the entries that follow).
func TestRaftThreeNodesFollowerRestart(t *testing.T) {
	for _, bySnapshot := range []bool{false, true} {
		name := "catch up from the log"
		if bySnapshot {
			name = "catch up by snapshot"
		}
		t.Run(name, func(t *testing.T) {
			root := t.TempDir()
			ids := []string{"n1", "n2", "n3"}
			var servers []raft.Server
			for _, id := range ids {
				servers = append(servers, raft.Server{ID: raft.ServerID(id), Address: raft.ServerAddress(id)})
			}
			nodes := map[string]*raftNode{}
			for _, id := range ids {
				nodes[id] = startRaftNode(t, filepath.Join(root, id), id, servers, true)
			}
			connectAll := func() {
				for _, a := range nodes {
					for _, b := range nodes {
						if a != b && a.raft != nil && b.raft != nil {
							a.trans.Connect(raft.ServerAddress(b.id), b.trans)
						}
					}
				}
			}
			connectAll()
			all := func() []*raftNode { return []*raftNode{nodes["n1"], nodes["n2"], nodes["n3"]} }
			applyCommands(t, all(), 1, 100)
			for _, n := range all() {
				waitFSMApplied(t, n, cmdList(100))
			}
			var follower, others = (*raftNode)(nil), []*raftNode{}
			leader := waitLeader(t, all()...)
			for _, n := range all() {
				if n != leader && follower == nil {
					follower = n
				} else {
					others = append(others, n)
				}
			}

			// The follower goes away; the other two go on.
			for _, n := range others {
				n.trans.Disconnect(raft.ServerAddress(follower.id))
			}
			follower.stop()
			applyCommands(t, all(), 101, 250)
			if bySnapshot {
				// Both, so that whichever leads next has compacted
				// the entries the follower needs.
				need := follower.lastIndexOnDisk(t) + 1
				for _, n := range others {
					if err := n.raft.Snapshot().Error(); err != nil {
						t.Fatalf("%s: Snapshot: %v", n.id, err)
					}
					if first, _ := indexes(t, n.logs); first <= need {
						t.Fatalf("%s's log starts at %d; the follower needs %d: no snapshot would be sent", n.id, first, need)
					}
				}
			}

			// It comes back on the same files.
			nodes[follower.id] = startRaftNode(t, follower.dir, follower.id, servers, false)
			follower = nodes[follower.id]
			connectAll()
			applyCommands(t, all(), 251, 260)
			for _, n := range all() {
				waitFSMApplied(t, n, cmdList(260))
			}
			if _, _, restores := follower.fsm.state(); bySnapshot != (restores > 0) {
				t.Fatalf("the follower restored %d snapshots; by snapshot: %v", restores, bySnapshot)
			}
			checkLogHolds(t, follower.logs, 260)
			leader = waitLeader(t, all()...)
			waitFor(t, 5*time.Second, func() string { return "follower's log does not end where the leader's does" }, func() bool {
				_, fl := indexes(t, follower.logs)
				_, ll := indexes(t, leader.logs)
				return fl == ll
			})
			sameEntries(t, leader.logs, follower.logs)
		})
	}
}

// lastIndexOnDisk opens the stopped node's log store for a look.
func (n *raftNode) lastIndexOnDisk(t *testing.T) uint64 {
	t.Helper()
	s, err := OpenLogStore(filepath.Join(n.dir, "log"), testLogConfig(logcore.OSFS{}))
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	_, last := indexes(t, s)
	return last
}

// sameEntries checks that two log stores agree on every index both hold.
func sameEntries(t *testing.T, a, b raft.LogStore) {
	t.Helper()
	af, al := indexes(t, a)
	bf, bl := indexes(t, b)
	for i := max(af, bf); i <= min(al, bl); i++ {
		var x, y raft.Log
		if err := a.GetLog(i, &x); err != nil {
			t.Fatal(err)
		}
		if err := b.GetLog(i, &y); err != nil {
			t.Fatal(err)
		}
		if d := entryDiff(&y, &x); d != "" {
			t.Fatalf("entry %d: %s", i, d)
		}
	}
}
