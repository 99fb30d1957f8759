package client_test

import (
	"errors"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/client"
	"github.com/natlog/natlog/sidecar/protocol"
)

// With reads on the shared subject, the replica NATS picks may be behind:
// Read then asks again linearizably, which any replica answers only once it
// has applied every acknowledged append, so an acknowledged record is
// found, and one that does not exist is still "out of range".
func TestReadWithoutRoutingFindsAcknowledgedRecords(t *testing.T) {
	url := newNATS(t)
	node := fakeNode(t, url, "cluster")
	// A replica that is behind: it holds nothing, until a linearizable
	// read makes it catch up to the leader's commit (one record at 0).
	handle(t, node, "natlog.read.x", func(m *nats.Msg) {
		if m.Header.Get(protocol.HeaderContentType) != protocol.ContentTypeMsgpack {
			respondError(m, protocol.Errorf(protocol.ErrOffsetOutOfRange, "offset %s out of range [0, 0)", m.Data))
			return
		}
		req, err := protocol.DecodeReadRequest(m.Data)
		if err != nil || !req.Linearizable {
			respondError(m, protocol.Errorf(protocol.ErrOffsetOutOfRange, "offset %d out of range [0, 0)", req.Offset))
			return
		}
		rep := protocol.ReadReply{Log: "x", Next: req.Offset, End: 1}
		switch {
		case req.Offset == 0:
			rep.Records = []protocol.Record{{Offset: 0, Time: 1, Value: []byte("acknowledged")}}
			rep.Next = 1
		case req.Offset > 1:
			respondError(m, protocol.Errorf(protocol.ErrOffsetOutOfRange, "offset %d out of range [0, 1)", req.Offset))
			return
		}
		m.Respond(rep.AppendMsgpack(nil))
	})
	_, cl := connect(t, url, nil, client.WithoutReadRouting())
	ctx := ctxT(t, 10*time.Second)
	r, err := cl.Read(ctx, "x", 0)
	if err != nil || r.Offset != 0 || string(r.Value) != "acknowledged" {
		t.Fatalf("Read 0 = %+v, %v; want the acknowledged record", r, err)
	}
	for _, off := range []uint64{1, 2} {
		_, err := cl.Read(ctx, "x", off)
		if !errors.Is(err, client.ErrOffsetOutOfRange) || client.IsIndefinite(err) {
			t.Errorf("Read %s: %v; want a definite ErrOffsetOutOfRange", strconv.FormatUint(off, 10), err)
		}
	}
}

// Consume FromEnd starts at the log's end as of the call, though the
// replica that answers Info is behind: records appended before the call
// are not delivered.
func TestConsumeFromEndPastALaggingReplica(t *testing.T) {
	url := newNATS(t)
	node := fakeNode(t, url, "cluster")
	// Info from a replica that has applied one record; the log holds five.
	handle(t, node, "natlog.info.x", func(m *nats.Msg) {
		m.Respond([]byte(`{"log":"x","first_offset":0,"next_offset":1,"records":1}`))
	})
	handle(t, node, "natlog.read.x", func(m *nats.Msg) {
		req, err := protocol.DecodeReadRequest(m.Data)
		if err != nil {
			respondError(m, protocol.Errorf(protocol.ErrMalformedBody, "%v", err))
			return
		}
		rep := protocol.ReadReply{Log: "x", Next: req.Offset, End: 5}
		if req.Offset < 6 {
			v := "old"
			if req.Offset == 5 {
				v, rep.End = "new", 6 // appended after Consume was called
			}
			rep.Records = []protocol.Record{{Offset: req.Offset, Time: 1, Value: []byte(v)}}
			rep.Next = req.Offset + 1
			if req.Linearizable {
				rep.Records, rep.Next = rep.Records[:0], req.Offset
			}
		}
		m.Respond(rep.AppendMsgpack(nil))
	})
	_, cl := connect(t, url, nil, client.WithoutReadRouting())
	ctx := ctxT(t, 10*time.Second)
	got := make(chan client.Record, 1)
	errStop := errors.New("stop")
	err := cl.Consume(ctx, "x", func(r client.Record) error { got <- r; return errStop }, client.FromEnd())
	if !errors.Is(err, errStop) {
		t.Fatalf("Consume: %v", err)
	}
	if r := <-got; r.Offset != 5 || string(r.Value) != "new" {
		t.Fatalf("first record from the end: %d %q, want 5 \"new\"", r.Offset, r.Value)
	}
}
