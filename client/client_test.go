package client_test

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/client"
	"github.com/natlog/natlog/sidecar"
	"github.com/natlog/natlog/sidecar/protocol"
)

func TestSingleNode(t *testing.T) {
	c := newCluster(t, 0)
	cl := c.client()
	ctx := ctxT(t, 30*time.Second)

	off, err := cl.Append(ctx, "orders", []byte("hello"), client.WithHeaders(nats.Header{"Trace-Id": {"abc"}}))
	if err != nil || off != 0 {
		t.Fatalf("Append = %d, %v", off, err)
	}
	mid := time.Now()
	res, err := cl.AppendBatch(ctx, "orders", []client.Record{
		{Value: []byte("a"), Headers: nats.Header{"K": {"1", "2"}}}, {Value: []byte("b")}, {Value: nil},
	})
	if err != nil || res.First != 1 || res.Last != 3 || res.Count != 3 {
		t.Fatalf("AppendBatch = %+v, %v", res, err)
	}
	r, err := cl.Read(ctx, "orders", 0)
	if err != nil || r.Offset != 0 || string(r.Value) != "hello" || r.Headers.Get("Trace-Id") != "abc" || r.Time == 0 {
		t.Fatalf("Read 0 = %+v, %v", r, err)
	}
	if r.Headers.Get(protocol.HeaderMsgID) == "" {
		t.Errorf("append stored no Natlog-Msg-Id: %v", r.Headers)
	}
	b, err := cl.Fetch(ctx, "orders", 1, client.FetchOptions{Max: 2})
	if err != nil || len(b.Records) != 2 || b.Next != 3 || b.End != 4 || string(b.Records[1].Value) != "b" ||
		len(b.Records[0].Headers["K"]) != 2 {
		t.Fatalf("Fetch = %+v, %v", b, err)
	}
	b, err = cl.Fetch(ctx, "orders", 0, client.FetchOptions{StartTime: mid})
	if err != nil || len(b.Records) != 3 || b.Records[0].Offset != 1 {
		t.Fatalf("Fetch from time = %+v, %v", b, err)
	}

	// A definite error, typed.
	_, err = cl.Read(ctx, "orders", 99)
	if !errors.Is(err, client.ErrOffsetOutOfRange) || client.IsIndefinite(err) {
		t.Fatalf("Read 99: %v", err)
	}
	_, err = cl.Read(ctx, "nope", 0)
	if !errors.Is(err, client.ErrUnknownLog) {
		t.Fatalf("Read of a missing log: %v", err)
	}
	_, err = cl.Append(ctx, "bad.name", []byte("x"))
	if !errors.Is(err, client.ErrBadLogName) {
		t.Fatalf("Append to a bad name: %v", err)
	}
	// A retry with the same msg id writes nothing.
	o1, err1 := cl.Append(ctx, "orders", []byte("once"), client.WithMsgID("m-1"))
	o2, err2 := cl.Append(ctx, "orders", []byte("once"), client.WithMsgID("m-1"))
	if err1 != nil || err2 != nil || o1 != o2 {
		t.Fatalf("dedup: %d %v, %d %v", o1, err1, o2, err2)
	}
	// Conditional appends.
	if _, err := cl.Append(ctx, "orders", []byte("x"), client.WithExpectedOffset(3)); !errors.Is(err, client.ErrExpectedOffset) {
		t.Fatalf("expected offset 3: %v", err)
	}
	if o, err := cl.Append(ctx, "orders", []byte("x"), client.WithExpectedOffset(5)); err != nil || o != 5 {
		t.Fatalf("expected offset 5: %d, %v", o, err)
	}

	// AppendAsync keeps the order of the calls, and Consume sees it all.
	var futs []*client.AppendFuture
	for i := range 500 {
		f, err := cl.AppendAsync(ctx, "async", []byte(strconv.Itoa(i)))
		if err != nil {
			t.Fatal(err)
		}
		futs = append(futs, f)
	}
	if err := cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	for i, f := range futs {
		if off, err := f.Wait(ctx); err != nil || off != uint64(i) {
			t.Fatalf("future %d: %d, %v", i, off, err)
		}
	}
	n := 0
	for r, err := range cl.Records(ctx, "async") {
		if err != nil {
			t.Fatal(err)
		}
		if r.Offset != uint64(n) || string(r.Value) != strconv.Itoa(n) {
			t.Fatalf("record %d: %d %q", n, r.Offset, r.Value)
		}
		if n++; n == 500 {
			break
		}
	}

	// Info, Logs, Create, Delete.
	info, err := cl.Info(ctx, "async")
	if err != nil || info.NextOffset != 500 {
		t.Fatalf("Info = %+v, %v", info, err)
	}
	seg := int64(1 << 20)
	if _, err := cl.Create(ctx, "made", protocol.LogSettings{MaxSegmentBytes: &seg}); err != nil {
		t.Fatal(err)
	}
	logs, err := cl.Logs(ctx)
	if err != nil || len(logs) != 3 {
		t.Fatalf("Logs = %v, %v", logs, err)
	}
	if err := cl.Delete(ctx, "made"); err != nil {
		t.Fatal(err)
	}
}

// A consumer started from the end waits for new records; one started at a
// time starts there.
func TestConsumeFromEndAndTime(t *testing.T) {
	c := newCluster(t, 0)
	cl := c.client()
	ctx := ctxT(t, 30*time.Second)
	for i := range 3 {
		if _, err := cl.Append(ctx, "l", []byte{byte('a' + i)}); err != nil {
			t.Fatal(err)
		}
	}
	got := make(chan client.Record, 10)
	cctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- cl.Consume(cctx, "l", func(r client.Record) error { got <- r; return nil },
			client.FromEnd(), client.WithPollWait(200*time.Millisecond))
	}()
	// FromEnd resolves the end while the test goes on, at some offset
	// from 3 on: nothing is observable of it, so the test appends until
	// a record comes. It must be one appended after a, b and c, and the
	// consumer then delivers every later record, in order.
	values := map[uint64]string{}
	appendOne := func(v string) {
		t.Helper()
		off, err := cl.Append(ctx, "l", []byte(v))
		if err != nil {
			t.Fatal(err)
		}
		values[off] = v
	}
	var first client.Record
	for k := 0; first.Value == nil; k++ {
		appendOne("v" + itoa(k))
		select {
		case first = <-got:
		case err := <-done:
			t.Fatalf("Consume returned %v before delivering a record", err)
		case <-time.After(100 * time.Millisecond): // poll: append another
		}
	}
	if first.Offset < 3 || values[first.Offset] != string(first.Value) {
		t.Fatalf("from the end: first record %d %q; want one appended after the start", first.Offset, first.Value)
	}
	appendOne("last")
	for off := first.Offset + 1; off < uint64(len(values))+3; off++ {
		select {
		case r := <-got:
			if r.Offset != off || string(r.Value) != values[off] {
				t.Fatalf("after %d: got %d %q, want %d %q", first.Offset, r.Offset, r.Value, off, values[off])
			}
		case err := <-done:
			t.Fatalf("Consume returned %v", err)
		}
	}
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Consume returned %v", err)
	}
}

// The test: a producer with AppendAsync and a consumer with
// Consume run while the leader is stopped and replaced; the consumer sees
// every acknowledged record exactly once, in order, and nothing is
// appended twice.
func TestFailoverProducerConsumer(t *testing.T) {
	c := newCluster(t, 3)
	cl := c.client(client.WithAsyncTimeout(time.Minute), client.WithMaxPending(64))
	first := c.leader(cl)
	ctx := ctxT(t, 3*time.Minute)
	const total = 1500

	var mu sync.Mutex
	var seen []string
	consumed := make(chan struct{})
	cctx, cancel := context.WithCancel(ctx)
	defer cancel()
	consumeErr := make(chan error, 1)
	go func() {
		consumeErr <- cl.Consume(cctx, "events", func(r client.Record) error {
			mu.Lock()
			seen = append(seen, string(r.Value))
			n := len(seen)
			mu.Unlock()
			if n == total {
				close(consumed)
			}
			return nil
		}, client.WithPollWait(time.Second))
	}()

	futs := make([]*client.AppendFuture, 0, total)
	for i := range total {
		if i == total/3 {
			// Stop the leader with appends in flight; bring it back
			// once another leads.
			c.stop(first)
			eventually(t, 30*time.Second, "a new leader", func() bool {
				l := c.leader(cl)
				return l != "" && l != first
			})
			c.start(first, 3)
		}
		f, err := cl.AppendAsync(ctx, "events", []byte(fmt.Sprintf("v%04d", i)))
		if err != nil {
			t.Fatal(err)
		}
		futs = append(futs, f)
	}
	if err := cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	offsets := map[uint64]int{}
	for i, f := range futs {
		off, err := f.Wait(ctx)
		if err != nil {
			t.Fatalf("append %d: %v", i, err)
		}
		if j, dup := offsets[off]; dup {
			t.Fatalf("appends %d and %d both at offset %d", j, i, off)
		}
		offsets[off] = i
		if i > 0 && off <= futs[i-1].Offset() {
			t.Fatalf("append %d at %d, not after append %d at %d", i, off, i-1, futs[i-1].Offset())
		}
	}
	select {
	case <-consumed:
	case err := <-consumeErr:
		t.Fatalf("consumer stopped: %v", err)
	case <-ctx.Done():
		mu.Lock()
		t.Fatalf("consumer saw %d of %d records", len(seen), total)
	}
	cancel()
	<-consumeErr
	mu.Lock()
	defer mu.Unlock()
	for i, v := range seen[:total] {
		if want := fmt.Sprintf("v%04d", i); v != want {
			t.Fatalf("consumer record %d is %q, want %q", i, v, want)
		}
	}
	// Info is answered by any replica, from what it has applied: one
	// that is behind has fewer records for a while, never more.
	eventually(t, 30*time.Second, fmt.Sprintf("exactly %d records in the log (none twice)", total), func() bool {
		info, err := cl.Info(ctx, "events")
		if err == nil && (info.Records > total || info.NextOffset > total) {
			t.Fatalf("log has %+v: want exactly %d records (none twice)", info, total)
		}
		return err == nil && info.Records == total && info.NextOffset == total
	})
	if len(seen) != total {
		t.Fatalf("consumer saw %d records, want %d", len(seen), total)
	}
}

// Reads are routed round-robin over the followers: each one serves some,
// as its read counter in the status shows.
func TestReadsSpreadOverReplicas(t *testing.T) {
	c := newCluster(t, 3)
	cl := c.client()
	leader := c.leader(cl)
	ctx := ctxT(t, time.Minute)
	if _, err := cl.AppendBatch(ctx, "spread", []client.Record{{Value: []byte("a")}, {Value: []byte("b")}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, "the client to see two followers", func() bool { return len(cl.Nodes()) == 2 })
	// Let the followers apply the appends: a follower without them would
	// defer to the leader, which would then count a read. (Raft's applied
	// index runs ahead of the FSM, so ask each follower for the record.)
	nc := c.conn()
	for _, id := range cl.Nodes() {
		eventually(t, 10*time.Second, id+" to hold offset 1", func() bool {
			m, err := nc.Request("natlog.node."+id+".read.spread", []byte("1"), time.Second)
			return err == nil && m.Header.Get("Status") == ""
		})
	}
	reads := func() (map[string]uint64, uint64) {
		st, err := cl.StatusOf(ctx, leader)
		if err != nil {
			return nil, 0
		}
		m, sum := map[string]uint64{}, uint64(0)
		for _, p := range st.Peers {
			m[p.ID] = p.Reads
			sum += p.Reads
		}
		return m, sum
	}
	// Counters of followers come with their announcements: wait until
	// the warm-up reads above show.
	var before map[string]uint64
	eventually(t, 10*time.Second, "the warm-up reads to be announced", func() bool {
		var sum uint64
		before, sum = reads()
		return sum >= uint64(len(cl.Nodes()))
	})
	_, base := reads()
	for i := range 40 {
		if _, err := cl.Read(ctx, "spread", uint64(i%2)); err != nil {
			t.Fatal(err)
		}
	}
	var after map[string]uint64
	eventually(t, 10*time.Second, "the 40 reads to be announced", func() bool {
		var sum uint64
		after, sum = reads()
		return sum >= base+40
	})
	for id, n := range after {
		d := n - before[id]
		if id == leader && d != 0 {
			t.Errorf("leader %s served %d reads, want 0 (followers serve them)", id, d)
		}
		if id != leader && d < 10 {
			t.Errorf("follower %s served %d of 40 reads: not spread (before %v, after %v)", id, d, before, after)
		}
	}

	// A preferred node takes all reads, also when it is the leader: it
	// is the node next to the application.
	for _, pref := range []string{cl.Nodes()[0], leader} {
		cp := c.client(client.WithPreferredNode(pref))
		before := readsOf(t, cp, pref)
		for range 10 {
			if _, err := cp.Read(ctx, "spread", 0); err != nil {
				t.Fatal(err)
			}
		}
		if got := readsOf(t, cp, pref) - before; got != 10 {
			t.Errorf("preferred node %s (leader %s) served %d of 10 reads", pref, leader, got)
		}
	}
}

func readsOf(t *testing.T, cl *client.Client, id string) uint64 {
	st, err := cl.StatusOf(ctxT(t, 5*time.Second), id)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range st.Peers {
		if p.ID == id {
			return p.Reads
		}
	}
	t.Fatalf("%s not in its own status", id)
	return 0
}

// With no node up, a request fails definitely once the context ends; a
// client cannot connect to nothing.
func TestNoNodes(t *testing.T) {
	url := newNATS(t)
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if _, err := client.Connect(nc, client.WithRequestTimeout(200*time.Millisecond)); !errors.Is(err, nats.ErrNoResponders) {
		t.Fatalf("Connect with no nodes: %v", err)
	}
}

// Connect waits (within its timeout) for a node that is still starting.
func TestConnectWaitsForANode(t *testing.T) {
	c := &cluster{t: t, url: newNATS(t), base: t.TempDir(), nodes: map[string]*sidecar.Server{}, cfgs: map[string]sidecar.Config{}}
	t.Cleanup(func() { c.stop("n1") })
	nc := c.conn()
	done := make(chan error, 1)
	go func() {
		cl, err := client.Connect(nc, client.WithRequestTimeout(20*time.Second))
		if err == nil {
			cl.Close()
		}
		done <- err
	}()
	// Start the node once Connect has been refused at least once: its
	// status requests are then going unanswered.
	eventually(t, 10*time.Second, "Connect to ask", func() bool {
		return nc.Stats().OutMsgs > 0
	})
	c.start("n1", -1)
	if err := <-done; err != nil {
		t.Fatalf("Connect: %v", err)
	}
}

// Close while AppendAsync is being called from other goroutines: every
// future ends (acknowledged, or failed with ErrClosed), no call hangs.
func TestCloseDuringAppendAsync(t *testing.T) {
	c := newCluster(t, 0)
	cl := c.client()
	ctx := ctxT(t, 30*time.Second)
	if _, err := cl.Append(ctx, "closing", []byte("first")); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	futs := make(chan *client.AppendFuture, 1<<20)
	for range 8 {
		wg.Go(func() {
			for {
				f, err := cl.AppendAsync(ctx, "closing", []byte("x"))
				if err != nil {
					if !errors.Is(err, client.ErrClosed) {
						t.Errorf("AppendAsync: %v", err)
					}
					return
				}
				futs <- f
			}
		})
	}
	eventually(t, 10*time.Second, "some appends", func() bool { return len(futs) > 100 })
	if err := cl.Close(); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	close(futs)
	seen := map[uint64]bool{}
	for f := range futs {
		off, err := f.Wait(ctx)
		switch {
		case err == nil:
			if off == 0 || seen[off] {
				t.Errorf("an async append got offset %d, already taken", off)
			}
			seen[off] = true
		case !errors.Is(err, client.ErrClosed):
			t.Errorf("future: %v", err)
		}
	}
	// Every acknowledged record is in the log (those that failed with
	// ErrClosed may or may not be).
	info, err := c.client().Info(ctx, "closing")
	if err != nil || info.NextOffset < 1+uint64(len(seen)) {
		t.Fatalf("log holds %+v, %v; want at least %d records", info, err, 1+len(seen))
	}
}

// A user who may read only on the shared read subject, not on the nodes'
// own: the client's routed reads are refused by the NATS server, and every
// read, however many are in flight when the first refusal comes back, goes
// on through the shared subject.
func TestReadsFallBackWhenNodeSubjectsAreDenied(t *testing.T) {
	ns := startNATS(t, &server.Options{
		Users: []*server.User{
			{Username: "node", Password: "p"},
			{Username: "app", Password: "p", Permissions: &server.Permissions{
				Publish:   &server.SubjectPermission{Allow: []string{"natlog.append.>", "natlog.read.>", "natlog.cluster.status"}},
				Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
			}},
		}})
	url := ns.ClientURL()
	c := newCluster(t, 3, func(cfg *sidecar.Config) {
		cfg.NATSURL, cfg.NATSUser, cfg.NATSPassword = url, "node", "p"
	})
	c.leader(c.clientAt("nats://node:p@" + ns.Addr().String()))
	app := c.clientAt("nats://app:p@"+ns.Addr().String(), client.WithRequestTimeout(5*time.Second))
	ctx := ctxT(t, time.Minute)
	off, err := app.Append(ctx, "orders", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	// The client must know nodes to route reads to, or the test would
	// not test the fallback (it learns them from the status).
	eventually(t, 10*time.Second, "the client to know the nodes", func() bool { return len(app.Nodes()) > 0 })
	var wg sync.WaitGroup
	errs := make(chan error, 20)
	for range 20 {
		wg.Go(func() {
			b, err := app.Fetch(ctx, "orders", off, client.FetchOptions{Max: 1, MinOffset: &off})
			if err == nil && (len(b.Records) != 1 || string(b.Records[0].Value) != "v") {
				err = fmt.Errorf("fetched %+v", b)
			}
			errs <- err
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
}
