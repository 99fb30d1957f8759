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
	if _, err := node.Subscribe("natlog.read.x", func(m *nats.Msg) {
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
	}); err != nil {
		t.Fatal(err)
	}
	node.Flush()
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
