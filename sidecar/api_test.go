package sidecar

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/natlog/natlog/sidecar/protocol"
)

var msgpackHdr = nats.Header{protocol.HeaderContentType: {protocol.ContentTypeMsgpack}}

func TestAppendAndReadOneRecord(t *testing.T) {
	s := startNode(t, testConfig(t))
	nc := connectTo(t, s)

	m := request(t, nc, "natlog.append.orders", []byte("hello"), nil)
	wantOK(t, m)
	if string(m.Data) != `{"log":"orders","offset":0}` {
		t.Fatalf("append reply %s", m.Data)
	}
	before := time.Now().UnixNano()
	hdr := nats.Header{"X-Trace": {"a", "b"}, "Content-Type": {"text/plain"}, protocol.HeaderMsgID: {"m1"}}
	m = request(t, nc, "natlog.append.orders", []byte("world"), hdr)
	if string(m.Data) != `{"log":"orders","offset":1}` {
		t.Fatalf("append reply %s", m.Data)
	}

	m = request(t, nc, "natlog.read.orders", []byte("0"), nil)
	wantOK(t, m)
	if string(m.Data) != "hello" || m.Header.Get(protocol.HeaderOffset) != "0" {
		t.Fatalf("read 0: %q %v", m.Data, m.Header)
	}
	m = request(t, nc, "natlog.read.orders", []byte(" 1\n"), nil)
	wantOK(t, m)
	if string(m.Data) != "world" || m.Header.Get(protocol.HeaderOffset) != "1" {
		t.Fatalf("read 1: %q %v", m.Data, m.Header)
	}
	if got := m.Header.Values("X-Trace"); len(got) != 2 || got[0] != "a" || got[1] != "b" {
		t.Errorf("stored header X-Trace = %v", got)
	}
	if m.Header.Get("Content-Type") != "text/plain" || m.Header.Get(protocol.HeaderMsgID) != "m1" {
		t.Errorf("stored headers: %v", m.Header)
	}
	ts, err := strconv.ParseInt(m.Header.Get(protocol.HeaderTime), 10, 64)
	if err != nil || ts < before || ts > time.Now().UnixNano() {
		t.Errorf("Natlog-Time %q not the append time", m.Header.Get(protocol.HeaderTime))
	}
}

func TestAppendEmptyValue(t *testing.T) {
	s := startNode(t, testConfig(t))
	nc := connectTo(t, s)
	// An empty body is an empty record (as in Kafka and JetStream), not an error.
	wantOK(t, request(t, nc, "natlog.append.e", nil, nil))
	m := request(t, nc, "natlog.read.e", []byte("0"), nil)
	wantOK(t, m)
	if len(m.Data) != 0 || m.Header.Get(protocol.HeaderOffset) != "0" {
		t.Fatalf("read of empty record: %q %v", m.Data, m.Header)
	}
}

func TestBatchAppendAndRead(t *testing.T) {
	s := startNode(t, testConfig(t))
	nc := connectTo(t, s)
	wantOK(t, request(t, nc, "natlog.append.b", []byte("first"), nil))
	batch := protocol.AppendBatchRequest{Records: []protocol.AppendRecord{
		{Value: []byte("r1")},
		{Value: []byte("r2"), Headers: protocol.Headers{"k": {"v1", "v2"}}},
		{Value: bytes.Repeat([]byte{0, 1, 2}, 1000)},
	}}
	// Encoded by a general msgpack library, as a client in another language would.
	body, err := msgpack.Marshal(&batch)
	if err != nil {
		t.Fatal(err)
	}
	m := request(t, nc, "natlog.append.b", body, msgpackHdr)
	wantOK(t, m)
	var rep protocol.AppendBatchReply
	if err := json.Unmarshal(m.Data, &rep); err != nil || rep != (protocol.AppendBatchReply{Log: "b", First: 1, Last: 3, Count: 3}) {
		t.Fatalf("batch reply %s (%v)", m.Data, err)
	}

	for _, tc := range []struct {
		name string
		body []byte
		hdr  nats.Header
	}{
		{"json request", []byte(`{"offset":1,"max":10}`), nil},
		{"msgpack request", (&protocol.ReadRequest{Offset: 1, Max: 10}).AppendMsgpack(nil), msgpackHdr},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := request(t, nc, "natlog.read.b", tc.body, tc.hdr)
			wantOK(t, m)
			if m.Header.Get(protocol.HeaderContentType) != protocol.ContentTypeMsgpack {
				t.Fatalf("batch read reply content type %v", m.Header)
			}
			var got protocol.ReadReply
			if err := msgpack.Unmarshal(m.Data, &got); err != nil {
				t.Fatal(err)
			}
			if got.Log != "b" || len(got.Records) != 3 || got.Next != 4 || got.End != 4 || got.Lowest != 0 {
				t.Fatalf("batch read reply %+v", got)
			}
			for i, r := range got.Records {
				if r.Offset != uint64(i+1) || !bytes.Equal(r.Value, batch.Records[i].Value) || r.Time == 0 {
					t.Errorf("record %d = %+v", i, r)
				}
			}
			if h := got.Records[1].Headers; len(h["k"]) != 2 || h["k"][1] != "v2" {
				t.Errorf("record headers %v", h)
			}
		})
	}

	t.Run("max and max_bytes", func(t *testing.T) {
		m := request(t, nc, "natlog.read.b", []byte(`{"offset":0,"max":2}`), nil)
		rep, err := protocol.DecodeReadReply(m.Data)
		if err != nil || len(rep.Records) != 2 || rep.Next != 2 {
			t.Fatalf("max 2: %+v %v", rep, err)
		}
		// A byte limit smaller than one record still returns the first.
		m = request(t, nc, "natlog.read.b", []byte(`{"offset":3,"max_bytes":1}`), nil)
		rep, err = protocol.DecodeReadReply(m.Data)
		if err != nil || len(rep.Records) != 1 || rep.Next != 4 {
			t.Fatalf("max_bytes 1: %+v %v", rep, err)
		}
	})

	t.Run("accept json", func(t *testing.T) {
		m := request(t, nc, "natlog.read.b", []byte(`{"offset":0,"max":1}`), nats.Header{protocol.HeaderAccept: {protocol.ContentTypeJSON}})
		var rep protocol.ReadReply
		if err := json.Unmarshal(m.Data, &rep); err != nil || len(rep.Records) != 1 || string(rep.Records[0].Value) != "first" {
			t.Fatalf("JSON batch reply %s: %v", m.Data, err)
		}
	})

	t.Run("at the end without waiting", func(t *testing.T) {
		m := request(t, nc, "natlog.read.b", []byte(`{"offset":4}`), nil)
		rep, err := protocol.DecodeReadReply(m.Data)
		if err != nil || len(rep.Records) != 0 || rep.Next != 4 || rep.End != 4 {
			t.Fatalf("read at end: %+v %v", rep, err)
		}
	})
}

func TestLongPoll(t *testing.T) {
	s := startNode(t, testConfig(t))
	nc := connectTo(t, s)
	wantOK(t, request(t, nc, "natlog.append.lp", []byte("a"), nil))

	// A poll that times out answers with no records.
	start := time.Now()
	m := request(t, nc, "natlog.read.lp", []byte(`{"offset":1,"wait_ms":50}`), nil)
	rep, err := protocol.DecodeReadReply(m.Data)
	if err != nil || len(rep.Records) != 0 || rep.Next != 1 {
		t.Fatalf("expired poll: %+v %v", rep, err)
	}
	if el := time.Since(start); el < 50*time.Millisecond {
		t.Fatalf("poll answered after %v, before its wait", el)
	}

	// A poll answers as soon as a record arrives.
	type result struct {
		rep protocol.ReadReply
		err error
	}
	done := make(chan result, 1)
	go func() {
		m, err := nc.Request("natlog.read.lp", []byte(`{"offset":1,"wait_ms":20000}`), 30*time.Second)
		if err != nil {
			done <- result{err: err}
			return
		}
		rep, err := protocol.DecodeReadReply(m.Data)
		done <- result{rep, err}
	}()
	eventually(t, 5*time.Second, "the poll to wait", func() bool { return len(s.waiters) == 1 })
	wantOK(t, request(t, nc, "natlog.append.lp", []byte("b"), nil))
	select {
	case r := <-done:
		if r.err != nil || len(r.rep.Records) != 1 || string(r.rep.Records[0].Value) != "b" {
			t.Fatalf("poll: %+v %v", r.rep, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the poll did not answer after an append")
	}
}

func TestInfoLogsStatus(t *testing.T) {
	cfg := testConfig(t)
	cfg.NodeID = "node-a"
	s := startNode(t, cfg)
	nc := connectTo(t, s)
	m := request(t, nc, "natlog.logs", nil, nil)
	if string(m.Data) != `{"logs":[]}` {
		t.Fatalf("logs of an empty node: %s", m.Data)
	}
	for i := range 3 {
		wantOK(t, request(t, nc, "natlog.append.zeta", []byte(fmt.Sprint(i)), nil))
	}
	wantOK(t, request(t, nc, "natlog.append.alpha", []byte("x"), nil))

	var li protocol.LogInfo
	m = request(t, nc, "natlog.info.zeta", nil, nil)
	if err := json.Unmarshal(m.Data, &li); err != nil {
		t.Fatal(err)
	}
	if li.Log != "zeta" || li.FirstOffset != 0 || li.LastOffset == nil || *li.LastOffset != 2 || li.NextOffset != 3 ||
		li.Records != 3 || li.Segments != 1 || li.Bytes == 0 || li.Sync != "always" || li.MaxSegmentBytes != cfg.Log.MaxSegmentBytes || li.Created == 0 {
		t.Fatalf("info %s", m.Data)
	}

	var logs protocol.LogsReply
	m = request(t, nc, "natlog.logs", nil, nil)
	if err := json.Unmarshal(m.Data, &logs); err != nil || len(logs.Logs) != 2 || logs.Logs[0].Log != "alpha" || logs.Logs[1].Log != "zeta" {
		t.Fatalf("logs %s (%v)", m.Data, err)
	}

	var st protocol.ClusterStatus
	m = request(t, nc, "natlog.cluster.status", nil, nil)
	if err := json.Unmarshal(m.Data, &st); err != nil {
		t.Fatal(err)
	}
	if st.NodeID != "node-a" || st.Leader != "node-a" || st.State != "leader" || len(st.Peers) != 1 || st.Logs != 2 ||
		st.MaxRecordBytes != nc.MaxPayload()-ReplyHeadroom || st.Prefix != "natlog" {
		t.Fatalf("status %s", m.Data)
	}
}

func TestCreateAndDelete(t *testing.T) {
	s := startNode(t, testConfig(t))
	nc := connectTo(t, s)

	settings := []byte(`{"max_segment_bytes":4096,"sync":"never","retention_segments":3,"retention_age_ms":3600000}`)
	m := request(t, nc, "natlog.create.small", settings, nil)
	wantOK(t, m)
	var li protocol.LogInfo
	if err := json.Unmarshal(m.Data, &li); err != nil {
		t.Fatal(err)
	}
	if li.MaxSegmentBytes != 4096 || li.Sync != "never" || li.RetentionSegments != 3 || li.RetentionAgeMs != 3600000 || li.Records != 0 || li.LastOffset != nil {
		t.Fatalf("created log info %s", m.Data)
	}
	// The same again is fine; different settings are a conflict.
	wantOK(t, request(t, nc, "natlog.create.small", settings, nil))
	wantError(t, request(t, nc, "natlog.create.small", []byte(`{"sync":"always"}`), nil), protocol.ErrLogExists)
	wantError(t, request(t, nc, "natlog.create.bad", []byte(`{"sync":"sometimes"}`), nil), protocol.ErrBadSettings)
	wantError(t, request(t, nc, "natlog.create.bad", []byte(`{"max_segment_bytes":-1}`), nil), protocol.ErrBadSettings)
	wantError(t, request(t, nc, "natlog.info.bad", nil, nil), protocol.ErrUnknownLog)

	// Records roll over small segments.
	for i := range 100 {
		wantOK(t, request(t, nc, "natlog.append.small", bytes.Repeat([]byte{byte(i)}, 200), nil))
	}
	m = request(t, nc, "natlog.info.small", nil, nil)
	json.Unmarshal(m.Data, &li)
	if li.Segments < 2 {
		t.Fatalf("no roll with 4 KiB segments: %s", m.Data)
	}

	// Settings survive a restart.
	dir := s.cfg.DataDir
	if err := s.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.DataDir = dir
	s = startNode(t, cfg)
	nc = connectTo(t, s)
	m = request(t, nc, "natlog.info.small", nil, nil)
	json.Unmarshal(m.Data, &li)
	if li.MaxSegmentBytes != 4096 || li.Sync != "never" || li.NextOffset != 100 {
		t.Fatalf("after restart: %s", m.Data)
	}

	m = request(t, nc, "natlog.delete.small", nil, nil)
	if string(m.Data) != `{"log":"small","deleted":true}` {
		t.Fatalf("delete reply %s", m.Data)
	}
	wantError(t, request(t, nc, "natlog.info.small", nil, nil), protocol.ErrUnknownLog)
	wantError(t, request(t, nc, "natlog.read.small", []byte("0"), nil), protocol.ErrUnknownLog)
	wantError(t, request(t, nc, "natlog.delete.small", nil, nil), protocol.ErrUnknownLog)
	// An append creates it anew, with the node's defaults.
	m = request(t, nc, "natlog.append.small", []byte("again"), nil)
	if string(m.Data) != `{"log":"small","offset":0}` {
		t.Fatalf("append after delete: %s", m.Data)
	}
	m = request(t, nc, "natlog.info.small", nil, nil)
	json.Unmarshal(m.Data, &li)
	if li.MaxSegmentBytes != cfg.Log.MaxSegmentBytes {
		t.Fatalf("recreated log kept old settings: %s", m.Data)
	}
}

func TestConditionalAndDedupAppends(t *testing.T) {
	s := startNode(t, testConfig(t))
	nc := connectTo(t, s)
	exp := func(n int) nats.Header { return nats.Header{protocol.HeaderExpectedOffset: {strconv.Itoa(n)}} }

	wantOK(t, request(t, nc, "natlog.append.c", []byte("a"), exp(0)))
	e := wantError(t, request(t, nc, "natlog.append.c", []byte("b"), exp(0)), protocol.ErrExpectedOffset)
	if e.Description != `expected offset 0 but log "c"'s next offset is 1` {
		t.Errorf("description %q", e.Description)
	}
	wantOK(t, request(t, nc, "natlog.append.c", []byte("b"), exp(1)))

	id := nats.Header{protocol.HeaderMsgID: {"order-17"}}
	m := request(t, nc, "natlog.append.c", []byte("c"), id)
	if string(m.Data) != `{"log":"c","offset":2}` {
		t.Fatalf("first append with id: %s", m.Data)
	}
	m = request(t, nc, "natlog.append.c", []byte("c"), id)
	if string(m.Data) != `{"log":"c","offset":2,"duplicate":true}` {
		t.Fatalf("retry with the same id: %s", m.Data)
	}
	// A batch with an id: the retry answers with the first batch's range.
	body := (&protocol.AppendBatchRequest{Records: []protocol.AppendRecord{{Value: []byte("d")}, {Value: []byte("e")}}}).AppendMsgpack(nil)
	bid := nats.Header{protocol.HeaderMsgID: {"batch-1"}, protocol.HeaderContentType: {protocol.ContentTypeMsgpack}}
	m = request(t, nc, "natlog.append.c", body, bid)
	if string(m.Data) != `{"log":"c","first":3,"last":4,"count":2}` {
		t.Fatalf("batch with id: %s", m.Data)
	}

	// Concurrent retries of one id write it once.
	var wg sync.WaitGroup
	offsets := make(chan string, 16)
	for range 16 {
		wg.Go(func() {
			m, err := nc.RequestMsg(&nats.Msg{Subject: "natlog.append.c", Data: []byte("g"), Header: nats.Header{protocol.HeaderMsgID: {"conc"}}}, 5*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			var r protocol.AppendReply
			if err := json.Unmarshal(m.Data, &r); err != nil {
				t.Error(err)
			}
			offsets <- strconv.FormatUint(r.Offset, 10)
		})
	}
	wg.Wait()
	close(offsets)
	seen := map[string]bool{}
	for o := range offsets {
		seen[o] = true
	}
	if len(seen) != 1 {
		t.Fatalf("16 appends with one id got offsets %v", seen)
	}

	// The ids are remembered across a restart (rebuilt from the stored headers).
	dir := s.cfg.DataDir
	if err := s.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	cfg := testConfig(t)
	cfg.DataDir = dir
	s = startNode(t, cfg)
	nc = connectTo(t, s)
	m = request(t, nc, "natlog.append.c", []byte("c"), id)
	if string(m.Data) != `{"log":"c","offset":2,"duplicate":true}` {
		t.Fatalf("retry after restart: %s", m.Data)
	}
	m = request(t, nc, "natlog.append.c", body, bid)
	if string(m.Data) != `{"log":"c","first":3,"last":4,"count":2,"duplicate":true}` {
		t.Fatalf("batch retry after restart: %s", m.Data)
	}
	// Retention keeps what the rebuild needs: the records of the last
	// window (logcore's TestRetention checks the rule itself).
	e2, ok := s.logs.get("c")
	if !ok {
		t.Fatal("log c not open")
	}
	if got := e2.log.Config().Retention.KeepWithin; got != cfg.DedupWindow {
		t.Fatalf("log retention keeps %v, want the dedup window %v", got, cfg.DedupWindow)
	}
}

func TestConcurrentAppendsShareFsyncs(t *testing.T) {
	s := startNode(t, testConfig(t))
	const clients, each = 32, 40
	var wg sync.WaitGroup
	got := make(chan uint64, clients*each)
	for c := range clients {
		nc := connectTo(t, s)
		wg.Go(func() {
			for i := range each {
				m, err := nc.Request("natlog.append.conc", fmt.Appendf(nil, "%d-%d", c, i), 10*time.Second)
				if err != nil {
					t.Error(err)
					return
				}
				var r protocol.AppendReply
				if err := json.Unmarshal(m.Data, &r); err != nil {
					t.Error(err, string(m.Data))
					return
				}
				got <- r.Offset
			}
		})
	}
	wg.Wait()
	close(got)
	seen := map[uint64]bool{}
	for o := range got {
		if seen[o] || o >= clients*each {
			t.Fatalf("offset %d given twice or out of range", o)
		}
		seen[o] = true
	}
	e, _ := s.logs.get("conc")
	if syncs := e.log.Stats().Syncs; syncs >= clients*each {
		t.Errorf("%d fsyncs for %d concurrent appends: not shared", syncs, clients*each)
	}
}

// TestNodeSubjectsAndReadCounter checks the per-node subjects clients
// route reads with, the read counter in the status reply, and batch reads
// that start at a point in time.
func TestNodeSubjectsAndReadCounter(t *testing.T) {
	s := startNode(t, testConfig(t))
	nc := connectTo(t, s)
	node := s.Subjects().Node(s.NodeID())
	wantOK(t, request(t, nc, "natlog.append.orders", []byte("a"), nil))
	mid := time.Now().UnixNano()
	wantOK(t, request(t, nc, "natlog.append.orders", []byte("b"), nil))

	m := request(t, nc, node.Read("orders"), []byte("1"), nil)
	wantOK(t, m)
	if string(m.Data) != "b" {
		t.Fatalf("node read 1 = %q", m.Data)
	}
	req := protocol.ReadRequest{StartTime: &mid}
	m = request(t, nc, node.Read("orders"), req.AppendMsgpack(nil), msgpackHdr)
	wantOK(t, m)
	rep, err := protocol.DecodeReadReply(m.Data)
	if err != nil || len(rep.Records) != 1 || string(rep.Records[0].Value) != "b" || rep.Next != 2 {
		t.Fatalf("read from time: %+v, %v", rep, err)
	}
	wantError(t, request(t, nc, node.Read("a.b"), []byte("0"), nil), protocol.ErrBadLogName)

	m = request(t, nc, node.Status(), nil, nil)
	wantOK(t, m)
	var st protocol.ClusterStatus
	if err := json.Unmarshal(m.Data, &st); err != nil || len(st.Peers) != 1 {
		t.Fatalf("status %s: %v", m.Data, err)
	}
	if p := st.Peers[0]; p.ID != s.NodeID() || p.Reads != 2 || p.Host == "" {
		t.Errorf("peer %+v: want 2 reads (the failed one not counted) and a host", p)
	}
	// Another node's subject is not answered.
	if _, err := nc.Request(s.Subjects().Node("other").Read("orders"), []byte("0"), time.Second); err != nats.ErrNoResponders {
		t.Errorf("read on another node's subject: %v, want no responders", err)
	}
}
