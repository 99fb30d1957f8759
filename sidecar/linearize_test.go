package sidecar

import (
	"encoding/json"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/sidecar/protocol"
)

// Linearizable reads use the leader's read index, which writes nothing:
// once the leader has committed an entry of its term, reads on every node
// add no Raft entries, and each still sees the append acknowledged just
// before it (a follower waits until it has applied that far).
func TestClusterLinearizableReadsWriteNothing(t *testing.T) {
	tc := newThreeNodes(t)
	leader := tc.leader()
	nc := tc.client()
	read := func(id string, off uint64) (protocol.ReadReply, *protocol.Error) {
		t.Helper()
		rep, e, err := linRead(t, nc, id, "lin", off)
		if err != nil {
			t.Fatalf("linearizable read on %s: %v", id, err)
		}
		return rep, e
	}
	appendOne := func(v string) uint64 {
		t.Helper()
		rep, err := appendRetry(t, nc, "lin", v, v)
		if err != nil {
			t.Fatal(err)
		}
		return rep.Offset
	}
	appendOne("first")
	for _, id := range tc.ids() {
		if _, e := read(id, 0); e != nil {
			t.Fatalf("read on %s: %v", id, e)
		}
	}
	before := tc.node(leader).cluster.raft.LastIndex()
	const n = 20
	for i := range n {
		v := "v-" + strconv.Itoa(i)
		off := appendOne(v)
		for _, id := range tc.ids() {
			// An election (a loaded machine) fails reads meanwhile.
			rep, e := read(id, off)
			for deadline := time.Now().Add(20 * time.Second); e != nil && e.ErrCode == protocol.CodeUnavailable && time.Now().Before(deadline); {
				rep, e = read(id, off)
			}
			if e != nil {
				t.Fatalf("read of offset %d on %s right after its append: %v", off, id, e)
			}
			if len(rep.Records) != 1 || string(rep.Records[0].Value) != v {
				t.Fatalf("read of offset %d on %s right after its append: %+v, want %q", off, id, rep.Records, v)
			}
		}
	}
	// Reads write no entries: at most one barrier per term (the first
	// read of a leader's term commits one), whatever leader changes a
	// loaded machine makes meanwhile.
	leader = tc.leader()
	rn := tc.node(leader).cluster
	barriers, terms := 0, map[uint64]bool{}
	for i := before + 1; i <= rn.raft.LastIndex(); i++ {
		var l raft.Log
		if err := rn.raftLogs.GetLog(i, &l); err != nil {
			t.Fatalf("raft log entry %d: %v", i, err)
		}
		terms[l.Term] = true
		if l.Type == raft.LogBarrier {
			barriers++
		}
	}
	if barriers > len(terms) {
		t.Fatalf("%d appends and %d linearizable reads wrote %d barriers in %d terms, want at most one per term", n, 3*n, barriers, len(terms))
	}
}

// Voters that do not answer the term question (a release before it,
// during a rolling upgrade; emulated by dropping that one subscription)
// leave linearizable reads to a barrier each: they still succeed.
func TestClusterLinearizableReadsWithoutTermAnswers(t *testing.T) {
	tc := newThreeNodes(t)
	leader := tc.leader()
	nc := tc.client()
	for _, id := range tc.ids() {
		if id != leader {
			if err := tc.node(id).cluster.termSub.Unsubscribe(); err != nil {
				t.Fatal(err)
			}
		}
	}
	rep, err := appendRetry(t, nc, "up", "a", "a")
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range tc.ids() {
		body, _ := json.Marshal(map[string]any{"offset": rep.Offset, "max": 1, "linearizable": true})
		var m *nats.Msg
		var e *protocol.Error
		for deadline := time.Now().Add(20 * time.Second); ; {
			if m, err = nc.RequestMsg(&nats.Msg{Subject: "natlog.node." + id + ".read.up", Data: body,
				Header: nats.Header{protocol.HeaderAccept: {protocol.ContentTypeJSON}}}, 10*time.Second); err != nil {
				t.Fatalf("read on %s: %v", id, err)
			}
			if e = protocol.ReplyError(m.Header, m.Data); e == nil || e.ErrCode != protocol.CodeUnavailable || time.Now().After(deadline) {
				break
			}
		}
		if e != nil {
			t.Fatalf("linearizable read on %s with voters that do not answer their term: %v", id, e)
		}
		var rr protocol.ReadReply
		if err := json.Unmarshal(m.Data, &rr); err != nil || len(rr.Records) != 1 || string(rr.Records[0].Value) != "a" {
			t.Fatalf("read on %s: %+v, %v", id, rr, err)
		}
	}
}

// A follower's question for the read index that the leader never answers
// (it died with the question delivered) holds back the reads on that
// follower only until the question is stale (a quarter of the heartbeat
// timeout): then the next question starts beside it and reaches the new
// leader. The follower is a read replica, r1; the leader dies as its
// Raft NATS connection closes while it serves r1's question.
func TestClusterFollowerReadsAfterLostQuestion(t *testing.T) {
	lostReadIndexQuestion(t, func(tc *testCluster, id string) { tc.node(id).cluster.rnc.Close() })
}

// The same with a graceful shutdown of the leader: the draining leader
// still answers.
func TestClusterFollowerReadsAfterLeaderShutdown(t *testing.T) {
	lostReadIndexQuestion(t, func(tc *testCluster, id string) { go tc.stop(id) })
}

func lostReadIndexQuestion(t *testing.T, kill func(tc *testCluster, id string)) {
	tc := newTestCluster(t)
	tc.tweak = func(c *Config) {
		if c.NodeID == "r1" {
			c.Cluster.ReadReplica = true
			c.Cluster.BootstrapExpect = 0
		}
	}
	for _, id := range []string{"n1", "n2", "n3"} {
		tc.start(id, 3)
	}
	tc.start("r1", 0)
	eventually(t, 20*time.Second, "r1 to join as a non-voter", func() bool {
		p, ok := tc.peer("r1")
		return ok && !p.Voter
	})
	leader := tc.leader()
	nc := tc.client()
	rep, err := appendRetry(t, nc, "hol", "a", "a")
	if err != nil {
		t.Fatal(err)
	}
	var lastOK atomic.Int64 // unix nanos of the newest successful read on r1
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range 8 {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				body, _ := json.Marshal(map[string]any{"offset": rep.Offset, "max": 1, "linearizable": true})
				m, err := nc.RequestMsg(&nats.Msg{Subject: "natlog.node.r1.read.hol", Data: body,
					Header: nats.Header{protocol.HeaderAccept: {protocol.ContentTypeJSON}}}, 2*time.Second)
				if err == nil && protocol.ReplyError(m.Header, m.Data) == nil {
					lastOK.Store(time.Now().UnixNano())
				}
			}
		})
	}
	defer func() { close(stop); wg.Wait() }()
	eventually(t, 10*time.Second, "linearizable reads succeeding on r1", func() bool {
		return time.Since(time.Unix(0, lastOK.Load())) < 50*time.Millisecond
	})
	// Kill the leader while r1's question is being served there: r1 is the
	// only node that asks, and nothing reads on the leader itself, so a
	// read index run in flight on the leader (onCommitIndex ->
	// leaderReads) is for r1's question; it needs the connection to ask
	// the voters and to answer.
	lr := &tc.node(leader).cluster.leaderReads
	var killed time.Time
	for spin := time.Now(); killed.IsZero(); {
		if time.Since(spin) > 20*time.Second {
			t.Fatal("never saw r1's question waiting on the leader")
		}
		lr.mu.Lock()
		if lr.running > 0 {
			killed = time.Now()
			kill(tc, leader)
		}
		lr.mu.Unlock()
		runtime.Gosched()
	}
	r1 := tc.node("r1").cluster
	t.Logf("%s killed with a read index run in flight", leader)
	var newLeader string
	eventually(t, 20*time.Second, "a new leader", func() bool {
		_, id := r1.raft.LeaderWithID()
		newLeader = string(id)
		return newLeader != "" && newLeader != leader
	})
	elected := time.Now()
	t.Logf("%s elected %v after %s died", newLeader, elected.Sub(killed).Round(time.Millisecond), leader)
	eventually(t, 15*time.Second, "a linearizable read on r1 after the new leader's election", func() bool {
		return lastOK.Load() >= elected.UnixNano()
	})
	gap := time.Unix(0, lastOK.Load()).Sub(elected)
	t.Logf("first linearizable read on r1 succeeded %v after the new leader was elected (%v after the old one died)",
		gap.Round(time.Millisecond), time.Unix(0, lastOK.Load()).Sub(killed).Round(time.Millisecond))
	if gap > 3*time.Second {
		t.Errorf("linearizable reads on r1 failed for %v after %s was elected (ApplyTimeout %v): one unanswered question to the dead leader held them back",
			gap.Round(time.Millisecond), newLeader, r1.cfg.ApplyTimeout)
	}
}

// After many concurrent linearizable reads on every node stop, no read
// index goroutine is left behind (the coalescer's loop, confirmTerm's
// questions, await, onCommitIndex).
func TestClusterReadIndexLeavesNoGoroutines(t *testing.T) {
	tc := newThreeNodes(t)
	tc.leader()
	nc := tc.client()
	rep, err := appendRetry(t, nc, "gl", "a", "a")
	if err != nil {
		t.Fatal(err)
	}
	var ok atomic.Int64
	var wg sync.WaitGroup
	until := time.Now().Add(2 * time.Second)
	for _, id := range tc.ids() {
		for range 20 {
			wg.Go(func() {
				for time.Now().Before(until) {
					if _, e, err := linRead(t, nc, id, "gl", rep.Offset); err == nil && e == nil {
						ok.Add(1)
					}
				}
			})
		}
	}
	wg.Wait()
	names := []string{"(*coalescer).loop", "confirmTerm", "sidecar.await", "onCommitIndex", "readIndex", "askReadIndex"}
	var left map[string]int
	eventually(t, 5*time.Second, "no read index goroutines", func() bool {
		buf := make([]byte, 8<<20)
		buf = buf[:runtime.Stack(buf, true)]
		left = map[string]int{}
		for _, g := range strings.Split(string(buf), "\n\n") {
			for _, n := range names {
				if strings.Contains(g, n) {
					left[n]++
				}
			}
		}
		return len(left) == 0
	})
	t.Logf("%d linearizable reads confirmed; goroutines left: %v", ok.Load(), left)
}

// linRead sends one linearizable read of offset off (max 1) of log name
// to node id.
func linRead(t *testing.T, nc *nats.Conn, id, name string, off uint64) (protocol.ReadReply, *protocol.Error, error) {
	body, _ := json.Marshal(map[string]any{"offset": off, "max": 1, "linearizable": true})
	m, err := nc.RequestMsg(&nats.Msg{Subject: "natlog.node." + id + ".read." + name, Data: body,
		Header: nats.Header{protocol.HeaderAccept: {protocol.ContentTypeJSON}}}, 10*time.Second)
	if err != nil {
		return protocol.ReadReply{}, nil, err
	}
	if e := protocol.ReplyError(m.Header, m.Data); e != nil {
		return protocol.ReadReply{}, e, nil
	}
	var rep protocol.ReadReply
	if err := json.Unmarshal(m.Data, &rep); err != nil {
		t.Fatalf("read reply from %s: %v", id, err)
	}
	return rep, nil, nil
}
