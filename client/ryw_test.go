package client_test

import (
	"errors"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/client"
	"github.com/natlog/natlog/sidecar/protocol"
)

// In a cluster every append result carries the Raft index of its entry
// and the client keeps the highest (LastIndex); a fetch with it as
// MinIndex finds the client's records on every replica, also after the
// log was deleted and created again (the old log's record at the same
// offset is never the answer). A standalone node gives no index and takes
// MinIndex as satisfied.
func TestAppendIndexAndMinIndexFetch(t *testing.T) {
	c := newCluster(t, 3)
	cl := c.client()
	c.leader(cl)
	ctx := ctxT(t, time.Minute)
	for i := range 3 {
		if _, err := cl.Append(ctx, "orders", []byte("old")); err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
	}
	first := cl.LastIndex()
	if first == 0 {
		t.Fatal("LastIndex 0 after appends to a cluster")
	}
	if err := cl.Delete(ctx, "orders"); err != nil {
		t.Fatal(err)
	}
	r, err := cl.AppendBatch(ctx, "orders", []client.Record{{Value: []byte("new-0")}, {Value: []byte("new-1")}})
	if err != nil || r.Index <= first || r.First != 0 || cl.LastIndex() != r.Index {
		t.Fatalf("batch after re-create: %+v, %v; LastIndex %d (before: %d)", r, err, cl.LastIndex(), first)
	}
	f, err := cl.AppendAsync(ctx, "orders", []byte("new-2"))
	if err != nil {
		t.Fatal(err)
	}
	if off, err := f.Wait(ctx); err != nil || off != 2 || f.Index() <= r.Index || cl.LastIndex() != f.Index() {
		t.Fatalf("async append: offset %d, index %d, %v; LastIndex %d, want after %d", off, f.Index(), err, cl.LastIndex(), r.Index)
	}
	for _, id := range c.ids() {
		rd := c.client(client.WithPreferredNode(id))
		b, err := rd.Fetch(ctx, "orders", 1, client.FetchOptions{MinIndex: cl.LastIndex()})
		if err != nil {
			t.Fatalf("fetch on %s: %v", id, err)
		}
		if len(b.Records) != 2 || string(b.Records[0].Value) != "new-1" || string(b.Records[1].Value) != "new-2" || b.Index < cl.LastIndex() {
			t.Fatalf("fetch on %s at index %d: %+v", id, cl.LastIndex(), b)
		}
	}

	s := newCluster(t, 0)
	sl := s.client()
	off, err := sl.Append(ctx, "orders", []byte("v"))
	if err != nil || sl.LastIndex() != 0 {
		t.Fatalf("standalone append: %d, %v; LastIndex %d, want 0", off, err, sl.LastIndex())
	}
	b, err := sl.Fetch(ctx, "orders", off, client.FetchOptions{MinIndex: 1 << 40})
	if err != nil || len(b.Records) != 1 || b.Index != 0 {
		t.Fatalf("standalone fetch with a min index: %+v, %v", b, err)
	}
}

// Fetch sends MinIndex as min_index and returns the reply's index; a
// consumer carries the highest index its replies named into its next
// fetch, with min_offset, so that a replica it moves to reads from no
// older history.
func TestConsumeCarriesMinIndex(t *testing.T) {
	url := newNATS(t)
	node := fakeNode(t, url, "cluster")
	var mu sync.Mutex
	var seen []protocol.ReadRequest
	handle(t, node, "natlog.read.x", func(m *nats.Msg) {
		req, err := protocol.DecodeReadRequest(m.Data)
		if err != nil {
			respondError(m, protocol.Errorf(protocol.ErrMalformedBody, "%v", err))
			return
		}
		mu.Lock()
		seen = append(seen, req)
		mu.Unlock()
		// Two records per reply; the replica has applied up to 100
		// plus the offset.
		rep := protocol.ReadReply{Log: "x", Next: req.Offset + 2, End: 1000, Index: 100 + req.Offset}
		for off := req.Offset; off < req.Offset+2; off++ {
			rep.Records = append(rep.Records, protocol.Record{Offset: off, Time: 1, Value: []byte("v")})
		}
		m.Respond(rep.AppendMsgpack(nil))
	})
	_, cl := connect(t, url, nil, client.WithoutReadRouting())
	ctx := ctxT(t, 10*time.Second)

	b, err := cl.Fetch(ctx, "x", 7, client.FetchOptions{Max: 2, MinIndex: 55})
	if err != nil || b.Index != 107 {
		t.Fatalf("Fetch: %+v, %v; want index 107", b, err)
	}
	mu.Lock()
	if len(seen) != 1 || seen[0].MinIndex != 55 {
		t.Fatalf("requests %+v; want min_index 55", seen)
	}
	seen = nil
	mu.Unlock()

	errStop := errors.New("stop")
	n := 0
	err = cl.Consume(ctx, "x", func(r client.Record) error {
		if n++; n == 6 {
			return errStop
		}
		return nil
	}, client.FromOffset(10), client.WithBatchSize(2))
	if !errors.Is(err, errStop) {
		t.Fatalf("Consume: %v", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(seen) < 3 {
		t.Fatalf("%d fetches, want at least 3", len(seen))
	}
	if seen[0].Offset != 10 || seen[0].MinIndex != 0 {
		t.Fatalf("first fetch %+v: want offset 10 and no min_index yet", seen[0])
	}
	// Every later fetch: min_index from the reply before it, min_offset
	// the record before it.
	for _, req := range seen[1:] {
		if req.MinIndex < 100+10 || req.MinOffset == nil || *req.MinOffset != req.Offset-1 {
			t.Errorf("fetch at %d: min_index %d, min_offset %v; want at least 110 and %d", req.Offset, req.MinIndex, req.MinOffset, req.Offset-1)
		}
	}
}
