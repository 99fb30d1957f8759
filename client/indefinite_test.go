package client_test

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/client"
	"github.com/natlog/natlog/sidecar/protocol"
)

// Once an attempt may have been written, the call's error says so, whatever
// the later attempts ended with and whichever way the call ends.
func TestIndefiniteIsSticky(t *testing.T) {
	nothingWritten := "nothing was written"
	for _, tc := range []struct {
		name string
		// later answers every attempt after the first, which the node
		// takes and never answers.
		later func(m *nats.Msg)
		// stopAfterFirst makes the node unsubscribe after the first
		// attempt: the next ones get "no responders".
		stopAfterFirst bool
		want           error
	}{
		{"a timeout, then no responders until the deadline", nil, true, nats.ErrNoResponders},
		{"a timeout, then a final storage error that wrote nothing", func(m *nats.Msg) {
			respondError(m, protocol.Errorf(protocol.ErrStorage, "reserve space: no space left on device: %s", nothingWritten))
		}, false, client.ErrStorage},
		{"a timeout, then 'not leader, nothing written' until the deadline", func(m *nats.Msg) {
			respondError(m, protocol.Errorf(protocol.ErrNotLeader, "this node is not the leader; %s; retry", nothingWritten))
		}, false, protocol.ErrNotLeader},
	} {
		t.Run(tc.name, func(t *testing.T) {
			url := newNATS(t)
			node := fakeNode(t, url, "single")
			var got arrivals
			var sub *nats.Subscription
			sub, err := node.Subscribe("natlog.append.x", func(m *nats.Msg) {
				if got.add() == 1 {
					if tc.stopAfterFirst {
						sub.Unsubscribe()
					}
					return // taken, never answered: it may have been written
				}
				tc.later(m)
			})
			if err != nil {
				t.Fatal(err)
			}
			node.Flush()
			_, cl := connect(t, url, nil, client.WithRequestTimeout(200*time.Millisecond))
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			defer cancel()
			_, err = cl.Append(ctx, "x", []byte("v"))
			var e *client.Error
			if !errors.As(err, &e) || !errors.Is(err, tc.want) {
				t.Fatalf("Append: %v; want an *Error wrapping %v", err, tc.want)
			}
			if !e.Indefinite {
				t.Errorf("Append: %v: definite, but its first attempt reached the node and may have been written", err)
			}
			if e.Attempts < 2 {
				t.Errorf("Append: %d attempts, want a retry after the timeout", e.Attempts)
			}
		})
	}
}

// A request cancelled after it was sent may have been written; one whose
// context ended before it was sent was not.
func TestCancelledRequestOutcome(t *testing.T) {
	url := newNATS(t)
	node := fakeNode(t, url, "single")
	var got arrivals
	recv := make(chan struct{}, 1)
	handle(t, node, "natlog.append.x", func(m *nats.Msg) {
		got.add()
		recv <- struct{}{}
	})
	_, cl := connect(t, url, nil)

	t.Run("cancelled in flight", func(t *testing.T) {
		ctx, cancel := context.WithCancel(context.Background())
		go func() { <-recv; cancel() }()
		_, err := cl.Append(ctx, "x", []byte("v"))
		if !errors.Is(err, context.Canceled) || !client.IsIndefinite(err) {
			t.Fatalf("Append cancelled after the node received it: %v; want indefinite context.Canceled", err)
		}
	})
	t.Run("cancelled before sending", func(t *testing.T) {
		before := got.count()
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := cl.Append(ctx, "x", []byte("v"))
		var e *client.Error
		if !errors.As(err, &e) || !errors.Is(err, context.Canceled) || e.Indefinite || e.Attempts != 0 {
			t.Fatalf("Append with a done context: %v; want definite context.Canceled after 0 attempts", err)
		}
		// A request sent would have arrived before this one.
		if err := node.Flush(); err != nil {
			t.Fatal(err)
		}
		if _, err := cl.Status(context.Background()); err != nil {
			t.Fatal(err)
		}
		if n := got.count(); n != before {
			t.Errorf("the node received %d appends from a call whose context was done", n-before)
		}
	})
}

// The client's NATS connection drops while an append is in flight.
func TestConnectionLossOutcome(t *testing.T) {
	t.Run("a reconnect retries, and the outcome stays indefinite", func(t *testing.T) {
		url := newNATS(t)
		node := fakeNode(t, url, "single")
		var got arrivals
		var nc *nats.Conn
		ready := make(chan struct{})
		handle(t, node, "natlog.append.x", func(m *nats.Msg) {
			if got.add() == 1 {
				<-ready
				go nc.ForceReconnect() // moving to another server of the NATS cluster, say
				return
			}
			respondError(m, protocol.Errorf(protocol.ErrStorage, "reserve space: no space left on device: nothing was written"))
		})
		nc, cl := connect(t, url, []nats.Option{nats.MaxReconnects(-1), nats.ReconnectWait(20 * time.Millisecond)})
		close(ready)
		_, err := cl.Append(ctxT(t, 10*time.Second), "x", []byte("v"))
		if !errors.Is(err, client.ErrStorage) || !client.IsIndefinite(err) {
			t.Fatalf("Append: %v; want the retry's storage error, indefinite", err)
		}
		if n := got.count(); n != 2 {
			t.Errorf("the node received %d attempts; want 2 (the disconnect is retried)", n)
		}
	})
	t.Run("closed in flight: not retried, indefinite", func(t *testing.T) {
		url := newNATS(t)
		node := fakeNode(t, url, "single")
		var got arrivals
		var nc *nats.Conn
		ready := make(chan struct{})
		handle(t, node, "natlog.append.x", func(m *nats.Msg) {
			got.add()
			<-ready
			go nc.Close()
		})
		nc, cl := connect(t, url, nil)
		close(ready)
		_, err := cl.Append(ctxT(t, 10*time.Second), "x", []byte("v"))
		if !errors.Is(err, nats.ErrConnectionClosed) || !client.IsIndefinite(err) {
			t.Fatalf("Append: %v; want indefinite nats.ErrConnectionClosed", err)
		}
		if n := got.count(); n != 1 {
			t.Errorf("the node received %d attempts; want 1", n)
		}
	})
	t.Run("closed before: definite", func(t *testing.T) {
		url := newNATS(t)
		fakeNode(t, url, "single")
		nc, cl := connect(t, url, nil)
		nc.Close()
		_, err := cl.Append(ctxT(t, 10*time.Second), "x", []byte("v"))
		if !errors.Is(err, nats.ErrConnectionClosed) || client.IsIndefinite(err) {
			t.Fatalf("Append on a closed connection: %v; want definite nats.ErrConnectionClosed", err)
		}
	})
}

// Without a deadline, an append that may have been written is retried
// only within the retry window, so that no retry reaches a node after it
// forgot the msg id.
func TestRetryWindowBoundsRetries(t *testing.T) {
	url := newNATS(t)
	node := fakeNode(t, url, "single")
	var got arrivals
	handle(t, node, "natlog.append.x", func(m *nats.Msg) { got.add() })
	const window = 600 * time.Millisecond
	_, cl := connect(t, url, nil, client.WithRequestTimeout(100*time.Millisecond), client.WithRetryWindow(window))
	done := make(chan error, 1)
	go func() {
		_, err := cl.Append(context.Background(), "x", []byte("v"))
		done <- err
	}()
	var err error
	select {
	case err = <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Append without a deadline still retrying after 10 s; the retry window is 600 ms")
	}
	if !errors.Is(err, context.DeadlineExceeded) || !client.IsIndefinite(err) {
		t.Fatalf("Append: %v; want the last attempt's timeout, indefinite", err)
	}
	at := got.times()
	if len(at) < 2 {
		t.Fatalf("%d attempts; want retries within the window", len(at))
	}
	if last := at[len(at)-1].Sub(at[0]); last >= window {
		t.Errorf("an attempt was sent %v after the first; the window is %v", last, window)
	}
}
