package sidecar

import (
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/internal/testnats"
	"github.com/natlog/natlog/sidecar/protocol"
)

// appendHistory is what the writers of a partition test saw: the values
// they tried and the offsets of those that were acknowledged.
type appendHistory struct {
	mu    sync.Mutex
	tried map[string]bool
	acked map[string]uint64
	// ackedAt counts acknowledgements per writer prefix.
	ackedAt map[string]int
}

func newAppendHistory() *appendHistory {
	return &appendHistory{tried: map[string]bool{}, acked: map[string]uint64{}, ackedAt: map[string]int{}}
}

func (h *appendHistory) acks(prefix string) int {
	h.mu.Lock()
	defer h.mu.Unlock()
	return h.ackedAt[prefix]
}

// lastAck returns the highest acknowledged offset (ok false: none).
func (h *appendHistory) lastAck() (off uint64, ok bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for _, o := range h.acked {
		if !ok || o > off {
			off, ok = o, true
		}
	}
	return off, ok
}

// writer appends prefix-0, prefix-1, ... to log name through nc, one at a
// time, each with its value as Natlog-Msg-Id, retrying a value until it is
// acknowledged (elections, no responders, timeouts) or stop closes. Any
// other answer is reported on errs.
func (h *appendHistory) writer(nc *nats.Conn, name, prefix string, stop <-chan struct{}, errs chan<- error) {
	for i := 0; ; i++ {
		v := prefix + "-" + strconv.Itoa(i)
		h.mu.Lock()
		h.tried[v] = true
		h.mu.Unlock()
		for {
			select {
			case <-stop:
				return
			default:
			}
			m, err := nc.RequestMsg(&nats.Msg{Subject: "natlog.append." + name, Data: []byte(v),
				Header: nats.Header{protocol.HeaderMsgID: {v}}}, 500*time.Millisecond)
			if err != nil {
				if !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, nats.ErrTimeout) {
					errs <- fmt.Errorf("append %s: %w", v, err)
					return
				}
				time.Sleep(5 * time.Millisecond) // back off; the next attempt decides
				continue
			}
			if e := protocol.ReplyError(m.Header, m.Data); e != nil {
				if e.ErrCode != protocol.CodeNotLeader && e.ErrCode != protocol.CodeUnavailable {
					errs <- fmt.Errorf("append %s: %w", v, e)
					return
				}
				time.Sleep(5 * time.Millisecond)
				continue
			}
			var r protocol.AppendReply
			if err := json.Unmarshal(m.Data, &r); err != nil {
				errs <- fmt.Errorf("append %s: reply %q: %w", v, m.Data, err)
				return
			}
			h.mu.Lock()
			if prev, ok := h.acked[v]; ok && prev != r.Offset {
				h.mu.Unlock()
				errs <- fmt.Errorf("append %s: acknowledged at offset %d, then at %d", v, prev, r.Offset)
				return
			}
			h.acked[v] = r.Offset
			h.ackedAt[prefix]++
			h.mu.Unlock()
			break
		}
	}
}

// check verifies log on one node against the history: every acknowledged
// value at its offset, no value twice, nothing that was never tried.
func (h *appendHistory) check(t *testing.T, node string, log []string) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	seen := map[string]uint64{}
	for off, v := range log {
		if prev, dup := seen[v]; dup {
			t.Errorf("%s: %q at offsets %d and %d", node, v, prev, off)
		}
		seen[v] = uint64(off)
		if !h.tried[v] {
			t.Errorf("%s: offset %d holds %q, which no writer sent", node, off, v)
		}
	}
	for v, off := range h.acked {
		if got, ok := seen[v]; !ok || got != off {
			t.Errorf("%s: acknowledged %q at offset %d, the log has it at %d (present: %v)", node, v, off, got, ok)
		}
	}
}

// TestClusterPartitionedLeader is a network partition, not a crash: each
// node has its own nats-server, the servers form a NATS cluster through
// links, and the leader's server is cut off from the others while clients
// on both sides append. The majority elects a new leader and goes on
// taking appends; the old leader, still running and still serving the
// clients of its server, must not acknowledge anything it cannot commit,
// and a linearizable read through it must fail rather than answer from
// its stale log. After the partition heals, every node holds the same log,
// every acknowledged append exactly once at its offset.
func TestClusterPartitionedLeader(t *testing.T) {
	rn := testnats.NewRouted(t, 3)
	ids := []string{"n1", "n2", "n3"}
	srv := map[string]int{"n1": 0, "n2": 1, "n3": 2}
	tc := newTestCluster(t)
	tc.tweak = func(c *Config) { c.NATSURL = rn.URL(srv[c.NodeID]) }
	for _, id := range ids {
		tc.start(id, 3)
	}
	old := tc.leader()
	other := notNode(old)
	minority, majority := natsConn(t, rn.URL(srv[old])), natsConn(t, rn.URL(srv[other]))
	before := appendN(t, majority, "p", "before", 20)
	tc.converged("p", before)

	h := newAppendHistory()
	for i, v := range before {
		h.tried[v], h.acked[v] = true, uint64(i)
	}
	stop := make(chan struct{})
	errs := make(chan error, 2)
	var wg sync.WaitGroup
	for _, w := range []struct {
		nc     *nats.Conn
		prefix string
	}{{majority, "maj"}, {minority, "min"}} {
		wg.Go(func() { h.writer(w.nc, "p", w.prefix, stop, errs) })
	}
	stopWriters := func() {
		close(stop)
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Error(err)
		}
	}
	defer func() {
		if stop != nil {
			stopWriters()
		}
	}()
	waitAcks := func(prefix string, n int, what string) {
		t.Helper()
		from := h.acks(prefix)
		eventually(t, 30*time.Second, what, func() bool { return h.acks(prefix) >= from+n })
	}
	waitAcks("maj", 20, "appends on the majority's side before the cut")
	waitAcks("min", 20, "appends on the leader's side before the cut")

	rn.Isolate(srv[old])
	t.Logf("leader %s cut off with %d acknowledged appends", old, h.acks("maj")+h.acks("min")+len(before))
	var majorityIDs []string
	for _, id := range ids {
		if id != old {
			majorityIDs = append(majorityIDs, id)
		}
	}
	var leader string
	eventually(t, 20*time.Second, "a new leader on the majority's side", func() bool {
		a, b := tc.node(majorityIDs[0]).status().Leader, tc.node(majorityIDs[1]).status().Leader
		leader = a
		return a != "" && a != old && a == b
	})
	eventually(t, 20*time.Second, old+" stepping down", func() bool {
		return tc.node(old).status().State != "leader"
	})
	st := tc.node(old).status()
	t.Logf("%s stepped down: raft log to index %d, commit index %d, applied %d", old,
		tc.node(old).cluster.raft.LastIndex(), st.CommitIndex, st.AppliedIndex)
	waitAcks("maj", 20, "appends on the majority's side during the partition")

	// A linearizable read through the old leader of an offset the majority
	// acknowledged before the read began: it may fail, it must not say
	// the offset does not exist.
	last, _ := h.lastAck()
	body, _ := json.Marshal(map[string]any{"offset": last, "max": 1, "linearizable": true})
	m, err := minority.RequestMsg(&nats.Msg{Subject: "natlog.node." + old + ".read.p", Data: body,
		Header: nats.Header{protocol.HeaderAccept: {protocol.ContentTypeJSON}}}, 10*time.Second)
	switch {
	case err != nil:
		t.Logf("linearizable read on the cut-off %s: %v", old, err)
	case protocol.ReplyError(m.Header, m.Data) == nil:
		t.Errorf("linearizable read of offset %d on the cut-off %s answered %s", last, old, m.Data)
	default:
		e := protocol.ReplyError(m.Header, m.Data)
		t.Logf("linearizable read on the cut-off %s: %v", old, e)
		if e.ErrCode != protocol.CodeUnavailable && e.ErrCode != protocol.CodeNotLeader {
			t.Errorf("linearizable read of offset %d on the cut-off %s: %v (want unavailable)", last, old, e)
		}
	}

	minBefore := h.acks("min")
	rn.Heal()
	t.Logf("healed; %s leads", leader)
	waitAcks("min", 5, "appends on the old leader's side after the heal")
	waitAcks("maj", 5, "appends on the majority's side after the heal")
	stopWriters()
	stop = nil
	t.Logf("%d appends acknowledged on the old leader's side before the heal, %d in all",
		minBefore, len(h.acked))

	// Every node ends with the same log, every acknowledged record in it.
	var want []string
	eventually(t, 30*time.Second, "the same log on every node", func() bool {
		want = tc.records(ids[0], "p")
		for _, id := range ids[1:] {
			if !slices.Equal(tc.records(id, "p"), want) {
				return false
			}
		}
		last, _ := h.lastAck()
		return uint64(len(want)) > last
	})
	for _, id := range ids {
		h.check(t, id, tc.records(id, "p"))
	}
}

// natsConn connects to url, closed when the test ends.
func natsConn(t testing.TB, url string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url, nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return nc
}
