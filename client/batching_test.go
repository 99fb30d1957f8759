package client_test

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/client"
)

// A producer that keeps AppendAsync's window full gets batches of about
// the window, not alternately a full one and one of the few records the
// application queued while the last was in flight (the producer lingers
// for the window to refill after a batch that filled it).
func TestAppendAsyncBatchesFillTheWindow(t *testing.T) {
	c := newCluster(t, 0)
	const window, total = 200, 20000
	cl := c.client(client.WithMaxPending(window))
	ctx := ctxT(t, time.Minute)
	// A plain subscriber on the append subjects sees a copy of every
	// append request (the node's is a queue subscription).
	var requests atomic.Int64
	spy := c.conn()
	if _, err := spy.Subscribe("natlog.append.>", func(*nats.Msg) { requests.Add(1) }); err != nil {
		t.Fatal(err)
	}
	if err := spy.Flush(); err != nil {
		t.Fatal(err)
	}
	var last *client.AppendFuture
	for i := range total {
		f, err := cl.AppendAsync(ctx, "fill", []byte{byte(i)})
		if err != nil {
			t.Fatal(err)
		}
		last = f
	}
	if err := cl.Flush(ctx); err != nil {
		t.Fatal(err)
	}
	if off, err := last.Wait(ctx); err != nil || off != total-1 {
		t.Fatalf("last record at %d, %v", off, err)
	}
	eventually(t, 10*time.Second, "the spy to see the requests", func() bool { return requests.Load() >= total/window })
	per := float64(total) / float64(requests.Load())
	t.Logf("%d records in %d requests: %.0f per request (window %d)", total, requests.Load(), per, window)
	if per < 0.6*window {
		t.Errorf("%.0f records per request with a window of %d: batches do not fill the window", per, window)
	}
}
