package sidecar

import (
	"encoding/json"
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/internal/testnats"
	"github.com/natlog/natlog/sidecar/protocol"
)

// readJSON sends a JSON batch read of one record at off to node id of a
// cluster through nc, with the given extra fields, and returns the reply
// message (the caller checks it).
func readJSON(t *testing.T, nc *nats.Conn, id, name string, off uint64, extra map[string]any, timeout time.Duration) (*nats.Msg, error) {
	t.Helper()
	req := map[string]any{"offset": off, "max": 1}
	for k, v := range extra {
		req[k] = v
	}
	body, _ := json.Marshal(req)
	return nc.RequestMsg(&nats.Msg{Subject: "natlog.node." + id + ".read." + name, Data: body,
		Header: nats.Header{protocol.HeaderAccept: {protocol.ContentTypeJSON}}}, timeout)
}

// oneValue decodes a JSON read reply of one record and returns its value.
func oneValue(t *testing.T, m *nats.Msg) string {
	t.Helper()
	wantOK(t, m)
	var rep protocol.ReadReply
	if err := json.Unmarshal(m.Data, &rep); err != nil || len(rep.Records) != 1 {
		t.Fatalf("read reply %s: %v", m.Data, err)
	}
	return string(rep.Records[0].Value)
}

// TestClusterMinIndexAfterRecreate: a log is deleted and created again
// while one replica is cut off (its nats-server partitioned from the
// others'; it keeps serving the clients on its server). The replica still
// holds the old log, whose offsets cover the new append's: a min_offset
// read there answers at once with the old log's record, which no longer
// exists (the defect min_index fixes). A read with the append's Raft index
// as min_index waits until the replica has caught up and answers the new
// record. Then the same with the replica cut off after the delete and
// before the create: a plain read there says "unknown log", a min_index
// read waits and finds the record.
func TestClusterMinIndexAfterRecreate(t *testing.T) {
	rn := testnats.NewRouted(t, 3)
	srv := map[string]int{"n1": 0, "n2": 1, "n3": 2}
	tc := newTestCluster(t)
	tc.tweak = func(c *Config) {
		c.NATSURL = rn.URL(srv[c.NodeID])
		// Long enough for the cut-off replica to catch up after the heal
		// (Raft's replication to it backs off while it is away).
		c.MaxReadWait = 30 * time.Second
	}
	for _, id := range []string{"n1", "n2", "n3"} {
		tc.start(id, 3)
	}
	leader := tc.leader()
	lag := notNode(leader)
	majority := natsConn(t, rn.URL(srv[leader]))
	behind := natsConn(t, rn.URL(srv[lag])) // a client on the cut-off replica's server

	old := appendN(t, majority, "orders", "old", 10)
	tc.converged("orders", old)

	// The replica is cut off, then the log is deleted and created
	// again with fewer records.
	rn.Isolate(srv[lag])
	wantOK(t, requestRetry(t, majority, "natlog.delete.orders", nil, nil))
	var fresh []string
	var r3 protocol.AppendReply
	for i := range 5 {
		v := "new-" + strconv.Itoa(i)
		r, err := appendRetry(t, majority, "orders", v, v)
		if err != nil {
			t.Fatal(err)
		}
		if r.Index == 0 {
			t.Fatalf("append reply %+v: no Raft index", r)
		}
		if r.Offset != uint64(i) {
			t.Fatalf("append %s at offset %d, want %d (a new log)", v, r.Offset, i)
		}
		fresh = append(fresh, v)
		if i == 3 {
			r3 = r
		}
	}
	if got := tc.records(lag, "orders"); !slices.Equal(got, old) {
		t.Fatalf("%s while cut off holds %v, want the old log", lag, got)
	}

	// The defect: min_offset 3 is satisfied by the old log's offset 3.
	m, err := readJSON(t, behind, lag, "orders", 3, map[string]any{"min_offset": 3}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if got := oneValue(t, m); got != "old-3" {
		t.Fatalf("min_offset read on the cut-off %s: %q; this test expects the old log's record old-3 (the defect)", lag, got)
	}

	// The fix: min_index waits for the append's entry.
	got := make(chan *nats.Msg, 1)
	go func() {
		m, err := readJSON(t, behind, lag, "orders", 3, map[string]any{"min_offset": 3, "min_index": r3.Index}, 40*time.Second)
		if err != nil {
			t.Errorf("min_index read: %v", err)
		}
		got <- m
	}()
	// A plain read after it on the same connection and subject: once it
	// is answered the node has taken the min_index read, and holds it.
	if v := oneValue(t, readJSONOK(t, behind, lag, "orders", 3, nil)); v != "old-3" {
		t.Fatalf("plain read on the cut-off %s: %q", lag, v)
	}
	select {
	case m := <-got:
		t.Fatalf("min_index read answered while the replica is cut off: %v %s", m.Header, m.Data)
	default:
	}
	rn.Heal()
	m = <-got
	if m == nil {
		t.FailNow()
	}
	if v := oneValue(t, m); v != "new-3" {
		t.Fatalf("min_index read on %s after the heal: %q, want new-3", lag, v)
	}
	tc.converged("orders", fresh)

	// Cut off after the delete, before the create: "unknown log" there,
	// until min_index makes the read wait.
	d := requestRetry(t, majority, "natlog.delete.orders", nil, nil)
	wantOK(t, d)
	var del protocol.DeleteReply
	if err := json.Unmarshal(d.Data, &del); err != nil || !del.Deleted || del.Index <= r3.Index {
		t.Fatalf("delete reply %s: want an index after %d (%v)", d.Data, r3.Index, err)
	}
	eventually(t, 20*time.Second, "the delete on every node", func() bool {
		for _, id := range tc.ids() {
			if tc.node(id).cluster.fsm.AppliedIndex() < del.Index {
				return false
			}
		}
		return true
	})
	rn.Isolate(srv[lag])
	again, err := appendRetry(t, majority, "orders", "again-0", "again-0")
	if err != nil {
		t.Fatal(err)
	}
	m, err = readJSON(t, behind, lag, "orders", 0, nil, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	wantError(t, m, protocol.ErrUnknownLog)
	// The single-record read: the index in a header.
	go func() {
		m, err := behind.RequestMsg(&nats.Msg{Subject: "natlog.node." + lag + ".read.orders", Data: []byte("0"),
			Header: nats.Header{protocol.HeaderMinIndex: {strconv.FormatUint(again.Index, 10)}}}, 40*time.Second)
		if err != nil {
			t.Errorf("single min_index read: %v", err)
		}
		got <- m
	}()
	wantError(t, readJSONOK(t, behind, lag, "orders", 0, nil), protocol.ErrUnknownLog)
	rn.Heal()
	m = <-got
	if m == nil {
		t.FailNow()
	}
	wantOK(t, m)
	if string(m.Data) != "again-0" || m.Header.Get(protocol.HeaderOffset) != "0" {
		t.Fatalf("single min_index read on %s after the heal: %q %v, want again-0 at 0", lag, m.Data, m.Header)
	}
	// The log's incarnation: created by that append, the same on
	// every replica.
	tc.converged("orders", []string{"again-0"})
	for _, id := range tc.ids() {
		li, perr := tc.node(id).cluster.info("orders")
		if perr != nil || li.CreatedIndex != again.Index {
			t.Fatalf("%s: info %+v, %v: want created_index %d", id, li, perr, again.Index)
		}
	}
}

// readJSONOK is readJSON that fails the test on a transport error.
func readJSONOK(t *testing.T, nc *nats.Conn, id, name string, off uint64, extra map[string]any) *nats.Msg {
	t.Helper()
	m, err := readJSON(t, nc, id, name, off, extra, 10*time.Second)
	if err != nil {
		t.Fatalf("read %s on %s: %v", name, id, err)
	}
	return m
}

// Append replies carry the entry's Raft index in cluster mode, over NATS
// (single and batch) and HTTP; a min_index read is answered at once where
// it is applied, waits for a future index until an append reaches it, and
// answers "unavailable" when it is not reached within the node's max read
// wait. A bad Natlog-Min-Index header is a bad request.
func TestClusterAppendIndexAndMinIndexReads(t *testing.T) {
	tc := newTestCluster(t)
	tc.tweak = func(c *Config) {
		c.HTTPListen = "127.0.0.1:0"
		c.MaxReadWait = 20 * time.Second
		if c.NodeID == "n3" {
			c.MaxReadWait = 300 * time.Millisecond
		}
	}
	for _, id := range []string{"n1", "n2", "n3"} {
		tc.start(id, 3)
	}
	leader := tc.leader()
	nc := tc.client()
	r, err := appendRetry(t, nc, "orders", "a", "a")
	if err != nil || r.Index == 0 {
		t.Fatalf("append: %+v, %v: want an index", r, err)
	}
	batch := protocol.AppendBatchRequest{Records: []protocol.AppendRecord{{Value: []byte("b0")}, {Value: []byte("b1")}}}
	m := requestRetry(t, nc, "natlog.append.orders", batch.AppendMsgpack(nil), nats.Header{protocol.HeaderContentType: {protocol.ContentTypeMsgpack}})
	wantOK(t, m)
	var br protocol.AppendBatchReply
	if err := json.Unmarshal(m.Data, &br); err != nil || br.Index <= r.Index || br.First != 1 {
		t.Fatalf("batch reply %s: want an index after %d (%v)", m.Data, r.Index, err)
	}
	// Every replica answers a read at that index, and says how far it
	// had applied (n3, with its short wait, may first say it is not
	// there yet).
	for _, id := range tc.ids() {
		var m *nats.Msg
		eventually(t, 20*time.Second, id+" answering at index "+strconv.FormatUint(br.Index, 10), func() bool {
			m = readJSONOK(t, nc, id, "orders", 2, map[string]any{"min_index": br.Index})
			e := protocol.ReplyError(m.Header, m.Data)
			return e == nil || e.ErrCode != protocol.CodeUnavailable
		})
		if v := oneValue(t, m); v != "b1" {
			t.Fatalf("%s: %q", id, v)
		}
		var rep protocol.ReadReply
		json.Unmarshal(m.Data, &rep)
		if rep.Index < br.Index {
			t.Fatalf("%s: read reply index %d, below the index %d it waited for", id, rep.Index, br.Index)
		}
	}

	// An index no entry has yet: the read waits for it (n1, a long max
	// read wait) until appends get there.
	future := br.Index + 3
	got := make(chan *nats.Msg, 1)
	go func() {
		m, err := readJSON(t, nc, "n1", "orders", 0, map[string]any{"min_index": future, "max": 100}, 30*time.Second)
		if err != nil {
			t.Errorf("read at a future index: %v", err)
		}
		got <- m
	}()
	// n3 gives up after its max read wait.
	m, err = readJSON(t, nc, "n3", "orders", 0, map[string]any{"min_index": future + 1000}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	wantError(t, m, protocol.ErrUnavailable)
	// The header works on a batch read too (the larger of it and the
	// body's field counts).
	body, _ := json.Marshal(map[string]any{"offset": 0, "min_index": 1})
	m = request(t, nc, "natlog.node.n3.read.orders", body, nats.Header{protocol.HeaderMinIndex: {strconv.FormatUint(future+1000, 10)}})
	wantError(t, m, protocol.ErrUnavailable)
	// covered: the records of entries at or below the index.
	var last protocol.AppendReply
	covered := br.Last + 1
	for i := 0; last.Index < future; i++ {
		v := "c" + strconv.Itoa(i)
		if last, err = appendRetry(t, nc, "orders", v, v); err != nil {
			t.Fatal(err)
		}
		if last.Index <= future {
			covered = last.Offset + 1
		}
	}
	m = <-got
	if m == nil {
		t.FailNow()
	}
	wantOK(t, m)
	var rep protocol.ReadReply
	if err := json.Unmarshal(m.Data, &rep); err != nil || uint64(len(rep.Records)) < covered {
		t.Fatalf("read at index %d: %d records (%v); want the %d of the entries up to it", future, len(rep.Records), err, covered)
	}

	wantError(t, request(t, nc, "natlog.node.n1.read.orders", []byte("0"), nats.Header{protocol.HeaderMinIndex: {"x"}}), protocol.ErrBadRequest)

	// HTTP: the leader's append reply has the index; a read on another
	// node waits for it. (Retried on 409: the leadership may move.)
	var hr protocol.AppendReply
	eventually(t, 20*time.Second, "an HTTP append through the leader", func() bool {
		leader = tc.leader()
		req, _ := http.NewRequest("POST", tc.node(leader).HTTPURL()+"/v1/logs/orders/records", nil)
		req.Header.Set(protocol.HeaderMsgID, "http-append")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode == http.StatusConflict {
			return false
		}
		if err := json.NewDecoder(resp.Body).Decode(&hr); err != nil || resp.StatusCode != http.StatusOK || hr.Index <= last.Index {
			t.Fatalf("HTTP append: %s, %+v, %v: want an index after %d", resp.Status, hr, err, last.Index)
		}
		return true
	})
	req, _ := http.NewRequest("GET", fmt.Sprintf("%s/v1/logs/orders/records/%d", tc.node(notNode(leader)).HTTPURL(), hr.Offset), nil)
	req.Header.Set(protocol.HeaderMinIndex, strconv.FormatUint(hr.Index, 10))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("HTTP read with a min index: %s", resp.Status)
	}
}

// A standalone node gives no index and takes min_index as satisfied, as
// it does min_offset: it has applied everything it acknowledged.
func TestStandaloneMinIndex(t *testing.T) {
	s := startNode(t, testConfig(t))
	nc := connectTo(t, s)
	m := request(t, nc, "natlog.append.orders", []byte("a"), nil)
	wantOK(t, m)
	var r protocol.AppendReply
	if err := json.Unmarshal(m.Data, &r); err != nil || r.Index != 0 || string(m.Data) != `{"log":"orders","offset":0}` {
		t.Fatalf("standalone append reply %s (%v): want no index", m.Data, err)
	}
	body, _ := json.Marshal(map[string]any{"offset": 0, "min_index": 12345})
	m = request(t, nc, "natlog.read.orders", body, nats.Header{protocol.HeaderAccept: {protocol.ContentTypeJSON}})
	var rep protocol.ReadReply
	if err := json.Unmarshal(m.Data, &rep); err != nil || len(rep.Records) != 1 || rep.Index != 0 {
		t.Fatalf("standalone min_index read: %s (%v)", m.Data, err)
	}
	m = request(t, nc, "natlog.read.orders", []byte("0"), nats.Header{protocol.HeaderMinIndex: {"12345"}})
	wantOK(t, m)
	if string(m.Data) != "a" {
		t.Fatalf("standalone single read with a min index: %q", m.Data)
	}
}
