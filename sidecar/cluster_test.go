package sidecar

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/sidecar/protocol"
)

func TestClusterElectsReplicatesAndReads(t *testing.T) {
	tc := newThreeNodes(t)
	leader := tc.leader()
	nc := tc.client()
	want := appendN(t, nc, "orders", "v", 50)
	tc.converged("orders", want)

	// A batch append is one op: its records are consecutive.
	batch := protocol.AppendBatchRequest{Records: []protocol.AppendRecord{{Value: []byte("b0")}, {Value: []byte("b1")}}}
	m := request(t, nc, "natlog.append.orders", batch.AppendMsgpack(nil), nats.Header{protocol.HeaderContentType: {protocol.ContentTypeMsgpack}})
	wantOK(t, m)
	want = append(want, "b0", "b1")
	tc.converged("orders", want)

	// Reads: every node answers; min_offset waits for the record.
	for range 6 {
		m := request(t, nc, "natlog.read.orders", []byte("3"), nil)
		wantOK(t, m)
		if string(m.Data) != "v-3" {
			t.Fatalf("read 3: %q", m.Data)
		}
	}
	r, err := appendRetry(t, nc, "orders", "ryw", "ryw")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := json.Marshal(map[string]any{"offset": r.Offset, "min_offset": r.Offset, "max": 1})
	for range 6 {
		m := request(t, nc, "natlog.read.orders", body, nats.Header{protocol.HeaderAccept: {protocol.ContentTypeJSON}})
		wantOK(t, m)
		var rep protocol.ReadReply
		if err := json.Unmarshal(m.Data, &rep); err != nil || len(rep.Records) != 1 || string(rep.Records[0].Value) != "ryw" {
			t.Fatalf("read-your-writes read: %s (%v)", m.Data, err)
		}
	}
	lin, _ := json.Marshal(map[string]any{"offset": 0, "linearizable": true})
	for range 6 {
		wantOK(t, request(t, nc, "natlog.read.orders", lin, nil))
	}

	// A retry with the same msg id is a duplicate, also on a new leader.
	dup, err := appendRetry(t, nc, "orders", "ryw", "ryw")
	if err != nil || !dup.Duplicate || dup.Offset != r.Offset {
		t.Fatalf("retried append: %+v, %v", dup, err)
	}

	// Status from any node: three voters, one leader.
	var st protocol.ClusterStatus
	if err := json.Unmarshal(request(t, nc, "natlog.cluster.status", nil, nil).Data, &st); err != nil {
		t.Fatal(err)
	}
	if st.Mode != "cluster" || st.Leader != leader || len(st.Peers) != 3 || st.CommitIndex == 0 {
		t.Fatalf("status: %+v", st)
	}
	for _, p := range st.Peers {
		if !p.Voter || p.Role != "voter" {
			t.Fatalf("peer %+v: want a voter", p)
		}
	}

	// Info on every node: the records' bytes (the FSM's logs keep their
	// newest records in the write buffer) and when the log was created
	// (the leader's time, the same on every replica).
	before := time.Now().Add(-time.Minute).UnixNano()
	var created int64
	for _, id := range tc.ids() {
		li, perr := tc.node(id).cluster.info("orders")
		if perr != nil {
			t.Fatal(perr)
		}
		if li.Bytes < int64(len(want))*10 || li.Created < before || li.Created > time.Now().UnixNano() {
			t.Fatalf("%s: info %+v: want bytes for %d records and a creation time of this test", id, li, len(want))
		}
		if created != 0 && li.Created != created {
			t.Fatalf("%s: created %d, another node says %d", id, li.Created, created)
		}
		created = li.Created
	}

	// Raft and the replicated logs in each node's metrics.
	want = append(want, "ryw")
	tc.converged("orders", want)
	for _, id := range tc.ids() {
		m := gatherMetrics(t, tc.node(id))
		isLeader := 0.0
		if id == leader {
			isLeader = 1
		}
		checks := map[string]float64{
			`natlog_raft_state{state="leader"}`: isLeader,
			`natlog_raft_members{role="voter"}`: 3,
			`natlog_log_records{log="orders"}`:  float64(len(want)),
			`natlog_logs`:                       1,
		}
		for k, v := range checks {
			if got, ok := m[k]; !ok || got != v {
				t.Errorf("%s: metric %s = %v (present %v), want %v", id, k, got, ok, v)
			}
		}
		if m["natlog_raft_commit_index"] == 0 || m["natlog_raft_fsm_applied_index"] == 0 || m["natlog_raft_term"] == 0 {
			t.Errorf("%s: raft indexes missing from the metrics", id)
		}
		if id == leader && (m["natlog_raft_apply_duration_seconds_count"] == 0 || m["natlog_raft_leadership_changes_total"] < 1) {
			t.Errorf("leader %s: no apply latency or leadership change in the metrics", id)
		}
	}

	// Create and delete go through Raft too.
	wantOK(t, request(t, nc, "natlog.create.events", []byte(`{"max_segment_bytes":1048576}`), nil))
	eventually(t, 10*time.Second, "events on every node", func() bool {
		for _, id := range tc.ids() {
			if tc.node(id).cluster.fsm.Log("events") == nil {
				return false
			}
		}
		return true
	})
	wantOK(t, request(t, nc, "natlog.delete.events", nil, nil))
	eventually(t, 10*time.Second, "events gone from every node", func() bool {
		for _, id := range tc.ids() {
			if tc.node(id).cluster.fsm.Log("events") != nil {
				return false
			}
		}
		return true
	})
}

// TestClusterLeaderKilledWhileAppending: clients append with msg ids and
// retry; the leader is stopped mid-stream and later restarted. Every
// acknowledged record is on every node exactly once, in the same order.
func TestClusterLeaderKilledWhileAppending(t *testing.T) {
	tc := newThreeNodes(t)
	old := tc.leader()
	nc := tc.client()

	const writers, perWriter = 4, 60
	var wg sync.WaitGroup
	acked := make(chan string, writers*perWriter)
	errs := make(chan error, writers)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				v := "w" + strconv.Itoa(w) + "-" + strconv.Itoa(i)
				if _, err := appendRetry(t, nc, "orders", v, v); err != nil {
					errs <- err
					return
				}
				acked <- v
			}
		}()
	}
	eventually(t, 20*time.Second, "some appends", func() bool { return len(acked) >= 40 })
	tc.stop(old)
	newLeader := tc.leader()
	if newLeader == old {
		t.Fatalf("leader %s did not change", old)
	}
	tc.start(old, 3)
	wg.Wait()
	close(acked)
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	var got []string
	for v := range acked {
		got = append(got, v)
	}
	tc.leader()
	eventually(t, 20*time.Second, "every node holding every acknowledged record once", func() bool {
		var ref []string
		for i, id := range tc.ids() {
			recs := tc.records(id, "orders")
			if i == 0 {
				ref = recs
			} else if !slices.Equal(recs, ref) {
				return false
			}
		}
		return len(ref) == len(got)
	})
	recs := tc.records(old, "orders")
	sorted := slices.Clone(recs)
	slices.Sort(sorted)
	slices.Sort(got)
	if !slices.Equal(sorted, got) {
		t.Fatalf("records %d, acknowledged %d: not the same set (duplicates or losses)", len(recs), len(got))
	}
}

// TestClusterMembership: a follower restarts and catches up; a fourth
// node joins as a non-voter; a node leaves gracefully; all nodes restart
// with nothing lost or duplicated.
func TestClusterMembership(t *testing.T) {
	tc := newThreeNodes(t)
	leader := tc.leader()
	nc := tc.client()
	want := appendN(t, nc, "orders", "a", 20)
	tc.converged("orders", want)

	follower := notNode(leader)
	tc.stop(follower)
	want = append(want, appendN(t, nc, "orders", "b", 20)...)
	tc.start(follower, 3)
	tc.converged("orders", want)

	// A fourth node beyond --voters 3 joins as a non-voter, and catches up.
	tc.start("n4", 3)
	eventually(t, 20*time.Second, "n4 a non-voter", func() bool {
		for _, p := range tc.node(tc.leader()).status().Peers {
			if p.ID == "n4" {
				return !p.Voter && p.Role == "nonvoter"
			}
		}
		return false
	})
	tc.converged("orders", want)

	// Graceful leave of the leader: leadership moves, and it is removed.
	leader = tc.leader()
	if err := tc.node(leader).Leave(t.Context()); err != nil {
		t.Fatalf("leave: %v", err)
	}
	tc.stop(leader)
	eventually(t, 20*time.Second, "the leaver removed", func() bool {
		for _, p := range tc.node(tc.leader()).status().Peers {
			if p.ID == leader {
				return false
			}
		}
		return true
	})
	// The non-voter is promoted to keep three voters.
	eventually(t, 20*time.Second, "three voters again", func() bool {
		voters := 0
		for _, p := range tc.node(tc.leader()).status().Peers {
			if p.Voter {
				voters++
			}
		}
		return voters == 3
	})
	want = append(want, appendN(t, nc, "orders", "c", 10)...)
	tc.converged("orders", want)

	// Restart every node: nothing lost, nothing duplicated.
	ids := tc.ids()
	for _, id := range ids {
		tc.stop(id)
	}
	for _, id := range ids {
		tc.start(id, 3)
	}
	tc.leader()
	tc.converged("orders", want)
	want = append(want, appendN(t, nc, "orders", "d", 10)...)
	tc.converged("orders", want)
}

func TestClusterReadsHideRaftIndex(t *testing.T) {
	tc := newTestCluster(t)
	tc.start("n1", 1)
	tc.leader()
	nc := tc.client()
	appendN(t, nc, "orders", "v", 2)
	m := request(t, nc, "natlog.read.orders", []byte("1"), nil)
	wantOK(t, m)
	if m.Header.Get("Natlog-Raft-Index") != "" || m.Header.Get(protocol.HeaderMsgID) != "v-1" {
		t.Fatalf("read headers: %v", m.Header)
	}
}

// TestClusterCatchUpBySnapshot: a follower that was away while the leader
// compacted its Raft log catches up through a snapshot.
func TestClusterCatchUpBySnapshot(t *testing.T) {
	tc := newTestCluster(t)
	tc.tweak = func(c *Config) {
		c.Cluster.TrailingLogs = 5
		c.Cluster.SnapshotThreshold = 20
		c.Cluster.RaftSegmentBytes = 2048
	}
	for _, id := range []string{"n1", "n2", "n3"} {
		tc.start(id, 3)
	}
	leader := tc.leader()
	nc := tc.client()
	want := appendN(t, nc, "orders", "a", 10)
	tc.converged("orders", want)
	follower := notNode(leader)
	tc.stop(follower)
	// More entries than raft.LogCache keeps (512), so that the leader
	// cannot serve the follower from its cache either.
	want = append(want, appendN(t, nc, "orders", "b", 600)...)
	if err := tc.node(leader).cluster.raft.Snapshot().Error(); err != nil {
		t.Fatalf("snapshot: %v", err)
	}
	first, err := tc.node(leader).cluster.logs.FirstIndex()
	if err != nil || first <= 12 {
		t.Fatalf("the leader's raft log was not compacted: first index %d, %v", first, err)
	}
	// The leader's snapshot links the logs' files: its state file is a
	// small manifest.
	raftDir := filepath.Join(tc.node(leader).cfg.DataDir, "raft")
	metas, err := tc.node(leader).cluster.snaps.List()
	if err != nil || len(metas) == 0 {
		t.Fatalf("leader's snapshots: %v, %v", metas, err)
	}
	newest := metas[0].ID
	st, err := os.Stat(filepath.Join(raftDir, "snapshots", newest, "state.bin"))
	if err != nil {
		t.Fatal(err)
	}
	if st.Size() > 4096 {
		t.Fatalf("leader's snapshot %s state file has %d bytes, want a small manifest", newest, st.Size())
	}
	if links, err := os.ReadDir(filepath.Join(raftDir, "snapshot-links", newest)); err != nil || len(links) == 0 {
		t.Fatalf("leader's snapshot %s links: %v, %v", newest, links, err)
	}
	tc.start(follower, 3)
	tc.converged("orders", want)
	// hashicorp/raft restores the snapshot into the FSM before it notes
	// the snapshot's index: the records may be there a moment before.
	// Caught up from the log instead, the index would stay 0.
	eventually(t, 10*time.Second, "the follower to have installed a snapshot", func() bool {
		return tc.node(follower).cluster.raft.Stats()["last_snapshot_index"] != "0"
	})
	want = append(want, appendN(t, nc, "orders", "c", 5)...)
	tc.converged("orders", want)

	// A brand-new node (a read replica beyond the 3 voters) joins after the
	// compaction: it too gets the linked snapshot, streamed.
	tc.start("n4", 3)
	tc.converged("orders", want)
	if st := tc.node("n4").cluster.raft.Stats(); st["last_snapshot_index"] == "0" {
		t.Fatalf("the new node caught up without a snapshot: %v", st)
	}
}

// TestClusterConcurrentPlainAppends: concurrent plain appends share Raft
// entries (and ops); each reply names exactly its own records.
func TestClusterConcurrentPlainAppends(t *testing.T) {
	tc := newThreeNodes(t)
	tc.leader()
	nc := tc.client()
	const clients = 64
	type ack struct {
		first uint64
		vals  []string
	}
	acks := make(chan ack, clients*10)
	var wg sync.WaitGroup
	for c := range clients {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 10 {
				v := "c" + strconv.Itoa(c) + "-" + strconv.Itoa(i)
				if i%2 == 0 {
					m, err := nc.Request("natlog.append.orders", []byte(v), 10*time.Second)
					if err != nil {
						t.Error(err)
						return
					}
					var r protocol.AppendReply
					if e := protocol.ReplyError(m.Header, m.Data); e != nil || json.Unmarshal(m.Data, &r) != nil {
						t.Errorf("append: %v %s", e, m.Data)
						return
					}
					acks <- ack{r.Offset, []string{v}}
					continue
				}
				batch := protocol.AppendBatchRequest{Records: []protocol.AppendRecord{{Value: []byte(v + "a")}, {Value: []byte(v + "b")}, {Value: []byte(v + "c")}}}
				m, err := nc.RequestMsg(&nats.Msg{Subject: "natlog.append.orders", Data: batch.AppendMsgpack(nil),
					Header: nats.Header{protocol.HeaderContentType: {protocol.ContentTypeMsgpack}}}, 10*time.Second)
				if err != nil {
					t.Error(err)
					return
				}
				var r protocol.AppendBatchReply
				if e := protocol.ReplyError(m.Header, m.Data); e != nil || json.Unmarshal(m.Data, &r) != nil || r.Count != 3 || r.Last != r.First+2 {
					t.Errorf("batch append: %v %s", e, m.Data)
					return
				}
				acks <- ack{r.First, []string{v + "a", v + "b", v + "c"}}
			}
		}()
	}
	wg.Wait()
	close(acks)
	n := 0
	var all []ack
	for a := range acks {
		all = append(all, a)
		n += len(a.vals)
	}
	eventually(t, 20*time.Second, "all records on every node", func() bool {
		for _, id := range tc.ids() {
			if len(tc.records(id, "orders")) != n {
				return false
			}
		}
		return true
	})
	for _, id := range tc.ids() {
		recs := tc.records(id, "orders")
		for _, a := range all {
			for k, v := range a.vals {
				if recs[a.first+uint64(k)] != v {
					t.Fatalf("%s: offset %d holds %q, the reply said %q", id, a.first+uint64(k), recs[a.first+uint64(k)], v)
				}
			}
		}
	}
}

// TestClusterDeadNodeTimeout: a member that crashed is removed after the
// dead node timeout, and a non-voter is promoted in its place.
func TestClusterDeadNodeTimeout(t *testing.T) {
	tc := newTestCluster(t)
	tc.tweak = func(c *Config) { c.Cluster.DeadNodeTimeout = time.Second }
	for _, id := range []string{"n1", "n2", "n3", "n4"} {
		tc.start(id, 3)
	}
	leader := tc.leader()
	eventually(t, 20*time.Second, "four members", func() bool { return len(tc.node(leader).status().Peers) == 4 })
	victim := notNode(leader)
	tc.stop(victim)
	eventually(t, 20*time.Second, "the dead member removed and three voters", func() bool {
		st := tc.node(tc.leader()).status()
		voters := 0
		for _, p := range st.Peers {
			if p.ID == victim {
				return false
			}
			if p.Voter {
				voters++
			}
		}
		return voters == 3
	})
	nc := tc.client()
	tc.converged("orders", appendN(t, nc, "orders", "v", 5))
}

// Linearizable reads on every node after all nodes restart from their
// snapshots (which Raft does not restore: the FSM's state on disk covers
// them), with non-command entries (barriers of earlier linearizable reads)
// after the last append: a follower must not wait for a command it will
// never apply, nor read without the last acknowledged record.
func TestClusterLinearizableReadsAfterRestart(t *testing.T) {
	tc := newTestCluster(t)
	ids := []string{"n1", "n2", "n3"}
	for _, id := range ids {
		tc.start(id, 3)
	}
	tc.leader()
	nc := tc.client()
	want := appendN(t, nc, "lin", "v", 30)
	tc.converged("lin", want)
	lin := func(id string) *nats.Msg {
		body, _ := json.Marshal(map[string]any{"offset": len(want) - 1, "max": 1, "linearizable": true})
		// After the restart the leadership may still move (elections
		// on a loaded machine): a read fails meanwhile, unavailable.
		for deadline := time.Now().Add(20 * time.Second); ; {
			m, err := nc.RequestMsg(&nats.Msg{Subject: "natlog.node." + id + ".read.lin", Data: body,
				Header: nats.Header{protocol.HeaderAccept: {protocol.ContentTypeJSON}}}, 10*time.Second)
			if err != nil {
				t.Fatalf("linearizable read on %s: %v", id, err)
			}
			e := protocol.ReplyError(m.Header, m.Data)
			if e == nil || e.ErrCode != protocol.CodeUnavailable || time.Now().After(deadline) {
				return m
			}
		}
	}
	check := func(id string) {
		t.Helper()
		m := lin(id)
		wantOK(t, m)
		var rep protocol.ReadReply
		if err := json.Unmarshal(m.Data, &rep); err != nil || len(rep.Records) != 1 || string(rep.Records[0].Value) != want[len(want)-1] {
			t.Fatalf("%s: linearizable read of the last record: %+v, %v", id, rep, err)
		}
	}
	// Barriers after the last command, then a snapshot on every node.
	for _, id := range ids {
		check(id)
	}
	for _, id := range ids {
		if err := tc.node(id).cluster.raft.Snapshot().Error(); err != nil {
			t.Fatalf("snapshot on %s: %v", id, err)
		}
	}
	for _, id := range ids {
		check(id)
	}
	for _, id := range ids {
		tc.stop(id)
	}
	for _, id := range ids {
		tc.start(id, 3)
	}
	tc.leader()
	for _, id := range ids {
		check(id)
	}
}

// Sidecar mode: a node whose embedded nats-server is a leaf node of the
// cluster's NATS system, started as a read replica. An application
// connected to that embedded server appends (through the leaf connection
// to the leader) and reads (from the sidecar itself: NATS prefers the
// local member of the read queue group); the sidecar joins as a non-voter
// and is not promoted when a voter goes, a new node is.
func TestClusterSidecarLeafNode(t *testing.T) {
	tc := newThreeNodes(t)
	leader := tc.leader()

	cfg := testConfig(t)
	cfg.NodeID = "s1"
	cfg.HTTPListen = ""
	cfg.NATSLeafRemotes = []string{tc.leafURL}
	cfg.Cluster = FastClusterConfig()
	cfg.Cluster.Name = "test"
	cfg.Cluster.ReadReplica = true
	cfg.Cluster.RaftLogLevel = "off"
	side, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	tc.mu.Lock()
	tc.nodes["s1"], tc.cfgs["s1"] = side, cfg
	tc.mu.Unlock()
	if side.NATSURL() == tc.url {
		t.Fatal("the sidecar does not run its own nats-server")
	}
	peer := tc.peer
	eventually(t, 20*time.Second, "the sidecar to join as a non-voter", func() bool {
		p, ok := peer("s1")
		return ok && !p.Voter
	})

	// The application talks to its sidecar's embedded server only.
	app, err := nats.Connect(side.NATSURL(), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer app.Close()
	var r protocol.AppendReply
	eventually(t, 20*time.Second, "an append through the sidecar", func() bool {
		m, err := app.Request("natlog.append.orders", []byte("from the app"), 2*time.Second)
		return err == nil && json.Unmarshal(m.Data, &r) == nil && m.Header.Get("Status") == ""
	})
	before := side.reads.Load()
	eventually(t, 20*time.Second, "the sidecar to hold the record", func() bool {
		m, err := app.Request("natlog.read.orders", []byte(strconv.FormatUint(r.Offset, 10)), 2*time.Second)
		return err == nil && m.Header.Get("Status") == "" && string(m.Data) == "from the app"
	})
	for range 10 {
		m := request(t, app, "natlog.read.orders", []byte(strconv.FormatUint(r.Offset, 10)), nil)
		wantOK(t, m)
	}
	if got := side.reads.Load() - before; got < 10 {
		t.Errorf("the sidecar answered %d of its application's reads, want them all (10 or more)", got)
	}

	// A voter goes: a new node becomes a voter, the sidecar stays a
	// read replica.
	gone := "n3"
	if gone == leader {
		gone = "n2"
	}
	tc.stop(gone)
	if err := tc.node(leader).cluster.removeMember(gone, 20*time.Second); err != nil {
		t.Fatal(err)
	}
	// Two membership passes with a voter missing and the sidecar there.
	l := tc.node(tc.leader()).cluster
	passes := l.reconciles.Load()
	eventually(t, 20*time.Second, "two membership passes", func() bool { return l.reconciles.Load() >= passes+2 })
	if p, _ := peer("s1"); p.Voter {
		t.Fatalf("the read replica was promoted: %+v", p)
	}
	tc.start("n4", 0)
	eventually(t, 20*time.Second, "n4 to become a voter", func() bool {
		p, ok := peer("n4")
		return ok && p.Voter
	})
	if p, _ := peer("s1"); p.Voter {
		t.Fatalf("the read replica was promoted: %+v", p)
	}
}

// gatherMetrics flattens a node's metrics: name{labels} -> value, and
// name_count for histograms.
func gatherMetrics(t *testing.T, s *Server) map[string]float64 {
	t.Helper()
	mfs, err := s.metrics.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			key := mf.GetName()
			if len(m.GetLabel()) > 0 {
				var ls []string
				for _, l := range m.GetLabel() {
					ls = append(ls, l.GetName()+"=\""+l.GetValue()+"\"")
				}
				key += "{" + strings.Join(ls, ",") + "}"
			}
			switch {
			case m.GetGauge() != nil:
				out[key] = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				out[key] = m.GetCounter().GetValue()
			case m.GetHistogram() != nil:
				out[key+"_count"] = float64(m.GetHistogram().GetSampleCount())
			}
		}
	}
	return out
}

// Quorum loss: two of three voters are gone for good. RecoverCluster on
// the third (stopped) makes it a cluster of its own, with every record it
// had; started again it leads and takes appends. It refuses a running
// node's data dir.
func TestClusterRecoverAfterQuorumLoss(t *testing.T) {
	tc := newThreeNodes(t)
	tc.leader()
	nc := tc.client()
	want := appendN(t, nc, "orders", "v", 20)
	tc.converged("orders", want)

	if _, err := RecoverCluster(tc.cfgs["n1"], nil); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Fatalf("recover of a running node: %v", err)
	}
	for _, id := range []string{"n1", "n2", "n3"} {
		tc.stop(id)
	}
	if _, err := RecoverCluster(tc.cfgs["n1"], []string{"n2"}); err == nil {
		t.Fatal("recovered with voters that leave the node out")
	}
	res, err := RecoverCluster(tc.cfgs["n1"], nil)
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(res.Voters) != "[n1]" || res.LastIndex == 0 || fmt.Sprint(res.Logs) != "[orders]" {
		t.Fatalf("recover: %+v", res)
	}

	tc.start("n1", 3)
	if l := tc.leader(); l != "n1" {
		t.Fatalf("leader %s after recovery, want n1", l)
	}
	r, err := appendRetry(t, nc, "orders", "after", "after-recovery")
	if err != nil || r.Offset != uint64(len(want)) {
		t.Fatalf("append after recovery: %+v, %v", r, err)
	}
	want = append(want, "after")
	if got := tc.records("n1", "orders"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("records after recovery: %v, want %v", got, want)
	}
	if st := tc.node("n1").cluster.status(); len(st.Peers) != 1 || !st.Peers[0].Voter {
		t.Fatalf("status after recovery: %+v", st)
	}
}

// A node whose logs do not hold its newest Raft snapshot (a snapshot
// install from the leader that a crash interrupted: Raft had stored the
// snapshot, the FSM had not restored it) restores it before Raft starts:
// Raft replays only what follows the snapshot, so the records would be
// missing for good. Simulated by removing the FSM's files after a snapshot.
func TestClusterRestoresSnapshotTheLogsLack(t *testing.T) {
	tc, nc, want := snapshotStopped(t, "n2", 30)
	if err := os.RemoveAll(filepath.Join(tc.cfgs["n2"].DataDir, "fsm")); err != nil {
		t.Fatal(err)
	}
	tc.start("n2", 3)
	want = append(want, appendN(t, nc, "orders", "w", 5)...)
	tc.converged("orders", want)
}

// A voter restarted as a read replica is demoted once a non-voter can take
// its place, which is then promoted: the voters stay three.
func TestClusterVoterRestartedAsReadReplica(t *testing.T) {
	tc := newThreeNodes(t)
	leader := tc.leader()
	tc.start("n4", 0)
	peer := tc.peer
	eventually(t, 20*time.Second, "n4 to join as a non-voter", func() bool {
		p, ok := peer("n4")
		return ok && !p.Voter
	})
	gone := "n3"
	if gone == leader {
		gone = "n2"
	}
	tc.stop(gone)
	cfg := tc.cfgs[gone]
	cfg.Cluster.ReadReplica = true
	cfg.Cluster.BootstrapExpect = 0
	tc.cfgs[gone] = cfg
	tc.start(gone, 0)
	eventually(t, 20*time.Second, gone+" demoted and n4 promoted", func() bool {
		g, ok1 := peer(gone)
		p4, ok2 := peer("n4")
		return ok1 && ok2 && !g.Voter && p4.Voter
	})
	voters := 0
	for _, p := range tc.node(tc.leader()).cluster.status().Peers {
		if p.Voter {
			voters++
		}
	}
	if voters != 3 {
		t.Fatalf("%d voters, want 3", voters)
	}
}

// A node whose newest Raft snapshot file is damaged still starts (Raft
// does not read it at start; the logs hold its state) and says so.
func TestClusterStartsWithDamagedSnapshot(t *testing.T) {
	tc, nc, want := snapshotStopped(t, "n2", 10)
	states, err := filepath.Glob(filepath.Join(tc.cfgs["n2"].DataDir, "raft", "snapshots", "*", "state.bin"))
	if err != nil || len(states) == 0 {
		t.Fatalf("no snapshot state file: %v", err)
	}
	for _, p := range states {
		if err := os.Truncate(p, 2); err != nil {
			t.Fatal(err)
		}
	}
	tc.start("n2", 3)
	want = append(want, appendN(t, nc, "orders", "w", 3)...)
	tc.converged("orders", want)
}

// snapshotStopped starts three nodes, appends n records to "orders", has
// node id take a Raft snapshot and stops it.
func snapshotStopped(t *testing.T, id string, n int) (*testCluster, *nats.Conn, []string) {
	t.Helper()
	tc := newThreeNodes(t)
	tc.leader()
	nc := tc.client()
	want := appendN(t, nc, "orders", "v", n)
	tc.converged("orders", want)
	if err := tc.node(id).cluster.raft.Snapshot().Error(); err != nil {
		t.Fatal(err)
	}
	tc.stop(id)
	return tc, nc, want
}

// TestClusterStepDown: the leader hands leadership to the voter named, or
// to any other voter; appends follow the new leader; a target that cannot
// lead is refused and the leader stays.
func TestClusterStepDown(t *testing.T) {
	tc := newThreeNodes(t)
	old := tc.leader()
	nc := tc.client()
	want := appendN(t, nc, "orders", "a", 3)
	to := notNode(old)
	stepDown := func(target string) *nats.Msg {
		t.Helper()
		m, err := nc.Request("natlog.cluster.stepdown", []byte(target), 15*time.Second)
		if err != nil {
			t.Fatalf("step down to %q: %v", target, err)
		}
		return m
	}
	m := stepDown(to)
	wantOK(t, m)
	var r struct {
		Leader string `json:"leader"`
	}
	if err := json.Unmarshal(m.Data, &r); err != nil || r.Leader != to {
		t.Fatalf("step down to %s: reply %s (%v)", to, m.Data, err)
	}
	if got := tc.leader(); got != to {
		t.Fatalf("leader after step-down to %s is %s", to, got)
	}
	want = append(want, appendN(t, nc, "orders", "b", 3)...)

	// Untargeted: some other voter takes over.
	m = stepDown("")
	wantOK(t, m)
	if err := json.Unmarshal(m.Data, &r); err != nil || r.Leader == "" || r.Leader == to {
		t.Fatalf("untargeted step down from %s: reply %s (%v)", to, m.Data, err)
	}
	want = append(want, appendN(t, nc, "orders", "c", 3)...)
	tc.converged("orders", want)

	// Targets that cannot lead; the leader stays.
	leader := tc.leader()
	wantError(t, stepDown("nobody"), protocol.ErrBadRequest)
	wantError(t, stepDown("bad id!"), protocol.ErrBadRequest)
	if got := tc.leader(); got != leader {
		t.Fatalf("a refused step-down moved the leadership from %s to %s", leader, got)
	}
	// Asking for the current leader is a no-op.
	m = stepDown(leader)
	wantOK(t, m)
	if err := json.Unmarshal(m.Data, &r); err != nil || r.Leader != leader {
		t.Fatalf("step down to the leader %s: reply %s (%v)", leader, m.Data, err)
	}
	// A voter that is down is refused at once (a transfer to it would
	// hold appends back until it timed out).
	down := notNode(leader)
	tc.stop(down)
	eventually(t, 10*time.Second, down+" unreachable", func() bool {
		p, ok := tc.peer(down)
		return ok && p.State == "unreachable"
	})
	wantError(t, stepDown(down), protocol.ErrBadRequest)
	if got := tc.leader(); got != leader {
		t.Fatalf("a step-down to a node that is down moved the leadership from %s to %s", leader, got)
	}
}

// TestClusterFiveVotersSurviveTwoLosses: five voters (--voters 5,
// --bootstrap-expect 5) keep serving after losing two of them, the leader
// among them; the two come back and catch up.
func TestClusterFiveVotersSurviveTwoLosses(t *testing.T) {
	tc := newTestCluster(t)
	tc.tweak = func(c *Config) { c.Cluster.Voters = 5 }
	ids := []string{"n1", "n2", "n3", "n4", "n5"}
	for _, id := range ids {
		tc.start(id, 5)
	}
	leader := tc.leader()
	eventually(t, 20*time.Second, "five voters", func() bool {
		voters := 0
		for _, id := range ids {
			if p, ok := tc.peer(id); ok && p.Role == "voter" {
				voters++
			}
		}
		return voters == 5
	})
	nc := tc.client()
	want := appendN(t, nc, "orders", "a", 5)
	tc.converged("orders", want)

	// Lose the leader and one follower: three of five remain, a majority.
	other := notNode(leader)
	tc.stop(leader)
	tc.stop(other)
	if next := tc.leader(); next == leader || next == other {
		t.Fatalf("leader %s after stopping %s and %s", next, leader, other)
	}
	for i := range 5 {
		v := "b-" + strconv.Itoa(i)
		if _, err := appendRetry(t, nc, "orders", v, v); err != nil {
			t.Fatalf("append with 3 of 5 voters: %v", err)
		}
		want = append(want, v)
	}
	tc.converged("orders", want)

	tc.start(leader, 5)
	tc.start(other, 5)
	want = append(want, appendN(t, nc, "orders", "c", 5)...)
	tc.converged("orders", want)
}

// newFaultyThreeNodes starts n1, n2 and n3, each on a FaultFS of its own
// (its logs, Raft log and stable store), returned by node id.
func newFaultyThreeNodes(t *testing.T) (*testCluster, map[string]*logcore.FaultFS) {
	tc := newTestCluster(t)
	faults := map[string]*logcore.FaultFS{}
	tc.tweak = func(c *Config) {
		ffs := logcore.NewFaultFS(logcore.OSFS{})
		faults[c.NodeID] = ffs
		c.Log.FS = ffs
	}
	for _, id := range []string{"n1", "n2", "n3"} {
		tc.start(id, 3)
	}
	return tc, faults
}

// batchOf is batch i of n records of about 110 bytes, and their values.
func batchOf(i, n int) (protocol.AppendBatchRequest, []string) {
	var req protocol.AppendBatchRequest
	var vals []string
	for j := range n {
		v := fmt.Sprintf("b-%d-%d-%s", i, j, strings.Repeat("x", 100))
		vals = append(vals, v)
		req.Records = append(req.Records, protocol.AppendRecord{Value: []byte(v)})
	}
	return req, vals
}

// diskFull is a FaultFS hook for a full disk: the writes that need new
// space fail with ENOSPC (logcore writes ahead the space of its logs, and
// the stable store its next temp file); those into space written ahead,
// such as the data of a log, do not.
func diskFull(op logcore.Op, name string) logcore.Fault {
	if op == logcore.OpWriteAt && (strings.HasSuffix(name, ".store") || strings.HasSuffix(name, ".index") || strings.HasSuffix(name, ".timeindex")) {
		return logcore.Fault{Err: syscall.ENOSPC}
	}
	return logcore.Fault{}
}

// TestClusterFollowerDiskFull: a follower's disk fills up. The cluster
// goes on with the other two. The follower either refuses the entries
// (its Raft log has no room) or stops applying to the log (its FSM's copy
// failed: it says so in its status and takes no snapshot); with room
// again it catches up, after a restart if its copy of the log failed.
func TestClusterFollowerDiskFull(t *testing.T) {
	tc, faults := newFaultyThreeNodes(t)
	leader := tc.leader()
	full := notNode(leader)
	nc := tc.client()
	want := appendN(t, nc, "orders", "a", 20)
	tc.converged("orders", want)

	faults[full].SetHook(diskFull)
	// More than the space written ahead in the follower's files.
	for i := range 12 {
		req, vals := batchOf(i, 1000)
		// With an id, so that a retry across a leadership change
		// (under load a slow node may call an election) writes once.
		hdr := nats.Header{protocol.HeaderContentType: {protocol.ContentTypeMsgpack}, protocol.HeaderMsgID: {fmt.Sprintf("batch-%d", i)}}
		wantOK(t, requestRetry(t, nc, "natlog.append.orders", req.AppendMsgpack(nil), hdr))
		want = append(want, vals...)
	}
	for _, id := range tc.ids() {
		if id != full {
			eventually(t, 20*time.Second, id+" holding every record", func() bool { return slices.Equal(tc.records(id, "orders"), want) })
		}
	}
	if slices.Equal(tc.records(full, "orders"), want) {
		t.Fatalf("%s took every record with a full disk", full)
	}
	failed := false
	for _, li := range tc.node(full).cluster.listLogs().Logs {
		if li.Log == "orders" && strings.Contains(li.Error, "no space left on device") {
			failed = true
		}
	}
	if failed {
		if err := tc.node(full).cluster.raft.Snapshot().Error(); err == nil {
			t.Fatalf("%s took a snapshot with a failed log", full)
		}
		// Its copy stopped at the failure: it sends readers elsewhere.
		wantError(t, request(t, nc, "natlog.node."+full+".read.orders", []byte("0"), nil), protocol.ErrUnavailable)
	}
	faults[full].SetHook(nil) // room again
	if failed {
		tc.shutdown(full) // says the log failed
		tc.start(full, 3)
	}
	t.Logf("%s: its copy of the log failed: %v", full, failed)
	tc.converged("orders", want)
}

// TestClusterLeaderDiskFull: the leader's disk fills up (diskFull: its Raft
// log, its FSM's logs). A node with room takes over and clients, retrying
// with msg ids, go on; the old leader, restarted with room, catches up.
func TestClusterLeaderDiskFull(t *testing.T) {
	tc, faults := newFaultyThreeNodes(t)
	full := tc.leader()
	nc := tc.client()
	want := appendN(t, nc, "orders", "a", 20)
	tc.converged("orders", want)

	faults[full].SetHook(diskFull)
	// Batches of 1,000 records with msg ids, retried through the change
	// of leader: more than the space the leader's Raft log had written
	// ahead (1 MiB).
	for i := range 12 {
		req, vals := batchOf(i, 1000)
		id := fmt.Sprintf("batch-%d", i)
		hdr := nats.Header{protocol.HeaderContentType: {protocol.ContentTypeMsgpack}, protocol.HeaderMsgID: {id}}
		wantOK(t, requestRetry(t, nc, "natlog.append.orders", req.AppendMsgpack(nil), hdr))
		want = append(want, vals...)
	}
	for _, id := range tc.ids() {
		if id != full && !slices.Equal(tc.records(id, "orders"), want) {
			eventually(t, 20*time.Second, id+" holding every record", func() bool { return slices.Equal(tc.records(id, "orders"), want) })
		}
	}
	if st := tc.node(notNode(full)).status(); st.Leader == full {
		t.Fatalf("%s still leads with a full disk", full)
	}
	faults[full].SetHook(nil) // room again
	tc.shutdown(full)         // its error, if any, is the full disk's
	tc.start(full, 3)
	tc.converged("orders", want)
}

// A record larger than its log's segments is refused with 413 in cluster
// mode too, and the log goes on on every replica (the FSM used to mark it
// failed everywhere).
func TestClusterRecordTooLargeForTheLog(t *testing.T) {
	tc := newThreeNodes(t)
	tc.leader()
	nc := tc.client()
	wantOK(t, request(t, nc, "natlog.create.small", []byte(`{"max_segment_bytes":1024}`), nil))
	wantError(t, request(t, nc, "natlog.append.small", bytes.Repeat([]byte("x"), 2000), nil), protocol.ErrPayloadTooLarge)
	want := appendN(t, nc, "small", "fits", 3)
	tc.converged("small", want)
	for _, id := range tc.ids() {
		if failed := tc.node(id).cluster.fsm.Failed(); len(failed) != 0 {
			t.Fatalf("%s: failed logs %v", id, failed)
		}
	}
}

// A node restarted while its old process still leaves the cluster: the old
// process's leave must not remove the id, which is the new process's now
// (seen by hand: a cluster restarted with the same node ids lost its n2,
// which then shut itself down as removed).
func TestClusterStaleLeaveIsRefused(t *testing.T) {
	tc := newThreeNodes(t)
	tc.leader()
	nc := tc.client()
	started := tc.node("n2").started.UnixNano()
	eventually(t, 10*time.Second, "the leader to hear n2's announcement", func() bool {
		l := tc.node(tc.leader()).cluster
		l.mu.Lock()
		defer l.mu.Unlock()
		return l.newest["n2"] == started
	})
	m, err := nc.Request("natlog._cluster.test.leave", []byte(fmt.Sprintf("n2 %d", started-1)), 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(string(m.Data), "error: stale:") {
		t.Fatalf("leave of an older process of n2: %q, want refused as stale", m.Data)
	}
	if p, ok := tc.peer("n2"); !ok || p.Role != "voter" {
		t.Fatalf("n2 after a stale leave: %+v, %v", p, ok)
	}
	want := appendN(t, nc, "orders", "a", 3)
	tc.converged("orders", want)
}
