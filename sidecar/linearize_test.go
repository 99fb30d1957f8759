package sidecar

import (
	"encoding/json"
	"strconv"
	"testing"
	"time"

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
		body, _ := json.Marshal(map[string]any{"offset": off, "max": 1, "linearizable": true})
		m, err := nc.RequestMsg(&nats.Msg{Subject: "natlog.node." + id + ".read.lin", Data: body,
			Header: nats.Header{protocol.HeaderAccept: {protocol.ContentTypeJSON}}}, 10*time.Second)
		if err != nil {
			t.Fatalf("linearizable read on %s: %v", id, err)
		}
		if e := protocol.ReplyError(m.Header, m.Data); e != nil {
			return protocol.ReadReply{}, e
		}
		var rep protocol.ReadReply
		if err := json.Unmarshal(m.Data, &rep); err != nil {
			t.Fatalf("read reply from %s: %v", id, err)
		}
		return rep, nil
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
			rep, e := read(id, off)
			if e != nil {
				t.Fatalf("read of offset %d on %s right after its append: %v", off, id, e)
			}
			if len(rep.Records) != 1 || string(rep.Records[0].Value) != v {
				t.Fatalf("read of offset %d on %s right after its append: %+v, want %q", off, id, rep.Records, v)
			}
		}
	}
	if got := tc.node(leader).cluster.raft.LastIndex() - before; got != n {
		t.Fatalf("%d appends and %d linearizable reads added %d Raft entries, want %d (reads write none)", n, 3*n, got, n)
	}
}
