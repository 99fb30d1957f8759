package client_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/client"
)

// Close while an AppendAsync batch is in flight: the node received it and
// may write it, so its futures fail with ErrClosed, indefinite.
func TestCloseFailsInFlightBatchIndefinite(t *testing.T) {
	url := newNATS(t)
	node := fakeNode(t, url, "single")
	recv := make(chan struct{}, 1)
	handle(t, node, "natlog.append.x", func(m *nats.Msg) {
		select {
		case recv <- struct{}{}:
		default:
		}
	})
	_, cl := connect(t, url, nil)
	f, err := cl.AppendAsync(context.Background(), "x", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	<-recv
	cl.Close()
	err = f.Err()
	if !errors.Is(err, client.ErrClosed) || !client.IsIndefinite(err) {
		t.Fatalf("future of a batch in flight at Close: %v; want ErrClosed, indefinite", err)
	}
}

// Flush may be called concurrently: each returns once what was queued
// before it is done.
func TestConcurrentFlush(t *testing.T) {
	url := newNATS(t)
	node := fakeNode(t, url, "single")
	release := make(chan struct{})
	handle(t, node, "natlog.append.x", func(m *nats.Msg) {
		<-release
		m.Respond([]byte(`{"log":"x","offset":0}`))
	})
	_, cl := connect(t, url, nil, client.WithMaxPending(8), client.WithMaxBatch(1))
	var fs []*client.AppendFuture
	for range 8 {
		f, err := cl.AppendAsync(context.Background(), "x", []byte("v"))
		if err != nil {
			t.Fatal(err)
		}
		fs = append(fs, f)
	}
	ctx := ctxT(t, 10*time.Second)
	var wg sync.WaitGroup
	errs := make([]error, 4)
	for i := range errs {
		wg.Go(func() { errs[i] = cl.Flush(ctx) })
	}
	close(release)
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Errorf("Flush %d: %v", i, err)
		}
	}
	for i, f := range fs {
		select {
		case <-f.Done():
		default:
			t.Errorf("future %d not done after Flush returned", i)
		}
	}
}

// Flush gives up when its context ends.
func TestFlushHonorsContext(t *testing.T) {
	url := newNATS(t)
	node := fakeNode(t, url, "single")
	handle(t, node, "natlog.append.x", func(m *nats.Msg) {})
	_, cl := connect(t, url, nil)
	f, err := cl.AppendAsync(context.Background(), "x", []byte("v"))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if err := cl.Flush(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Flush with a record never answered: %v; want context.DeadlineExceeded", err)
	}
	select {
	case <-f.Done():
		t.Fatalf("the future is done (%v); the node never answered", f.Err())
	default:
	}
}

// A process restarted with the same producer id within the dedup window:
// its appends are written, not taken for the previous run's.
func TestProducerIDReusedAfterRestart(t *testing.T) {
	c := newCluster(t, 0)
	ctx := ctxT(t, 30*time.Second)
	first := c.client(client.WithProducerID("billing"))
	off1, err := first.Append(ctx, "x", []byte("first run"))
	if err != nil {
		t.Fatal(err)
	}
	first.Close()
	second := c.client(client.WithProducerID("billing")) // the process restarted
	off2, err := second.Append(ctx, "x", []byte("second run"))
	if err != nil {
		t.Fatal(err)
	}
	f, err := second.AppendAsync(ctx, "x", []byte("second run, async"))
	if err != nil {
		t.Fatal(err)
	}
	off3, err := f.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if off2 == off1 || off3 == off1 || off3 == off2 {
		t.Fatalf("offsets %d, %d, %d: the restarted producer's appends were taken for duplicates", off1, off2, off3)
	}
	for off, want := range map[uint64]string{off1: "first run", off2: "second run", off3: "second run, async"} {
		r, err := second.Read(ctx, "x", off)
		if err != nil || string(r.Value) != want {
			t.Errorf("Read %d = %q, %v; want %q", off, r.Value, err, want)
			continue
		}
		if id := r.Headers.Get("Natlog-Msg-Id"); !strings.HasPrefix(id, "billing-") {
			t.Errorf("record %d has msg id %q; want the producer id as its prefix", off, id)
		}
	}
}

// A batch acknowledged with another count than its length (a duplicate of
// another batch, say) fails its futures instead of giving them offsets of
// other records.
func TestAppendAsyncRejectsMismatchedCount(t *testing.T) {
	url := newNATS(t)
	node := fakeNode(t, url, "single")
	var got arrivals
	recv := make(chan struct{}, 1)
	release := make(chan struct{})
	handle(t, node, "natlog.append.x", func(m *nats.Msg) {
		if got.add() == 1 {
			recv <- struct{}{}
			<-release
			m.Respond([]byte(`{"log":"x","offset":0}`))
			return
		}
		m.Respond([]byte(`{"log":"x","first":7,"last":7,"count":1,"duplicate":true}`))
	})
	_, cl := connect(t, url, nil)
	ctx := ctxT(t, 10*time.Second)
	f0, err := cl.AppendAsync(ctx, "x", []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	<-recv // the next two gather into one batch meanwhile
	var fs []*client.AppendFuture
	for _, v := range []string{"b", "c"} {
		f, err := cl.AppendAsync(ctx, "x", []byte(v))
		if err != nil {
			t.Fatal(err)
		}
		fs = append(fs, f)
	}
	close(release)
	if off, err := f0.Wait(ctx); err != nil || off != 0 {
		t.Fatalf("first append: %d, %v", off, err)
	}
	for i, f := range fs {
		off, err := f.Wait(ctx)
		if err == nil || !client.IsIndefinite(err) || !strings.Contains(err.Error(), "acknowledged 1 records") {
			t.Errorf("future %d of a batch of 2 acknowledged as 1: offset %d, %v; want an indefinite count error", i, off, err)
		}
	}
}

// AppendAsync copies the value and headers: the caller may reuse them as
// soon as it returns, though the records are sent later.
func TestAppendAsyncCopiesValueAndHeaders(t *testing.T) {
	c := newCluster(t, 0)
	cl := c.client(client.WithMaxBatch(1))
	ctx := ctxT(t, 30*time.Second)
	buf := []byte("aaaa")
	hdr := nats.Header{"K": {"a"}}
	want := []string{"aaaa", "bbbb", "cccc", "dddd"}
	var fs []*client.AppendFuture
	for _, s := range want {
		copy(buf, s)
		hdr["K"][0] = s
		f, err := cl.AppendAsync(ctx, "x", buf, client.WithHeaders(hdr))
		if err != nil {
			t.Fatal(err)
		}
		fs = append(fs, f)
	}
	copy(buf, "zzzz")
	hdr["K"][0] = "zzzz"
	for i, f := range fs {
		off, err := f.Wait(ctx)
		if err != nil {
			t.Fatal(err)
		}
		r, err := cl.Read(ctx, "x", off)
		if err != nil || string(r.Value) != want[i] || r.Headers.Get("K") != want[i] {
			t.Errorf("record %d at %d: value %q, header K %q, %v; want %q", i, off, r.Value, r.Headers.Get("K"), err, want[i])
		}
	}
}
