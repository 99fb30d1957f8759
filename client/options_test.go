package client_test

import (
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/client"
)

// Options that would break the client later (a ticker of zero panics in
// a background goroutine, a zero backoff spins) are refused up front.
func TestInvalidOptions(t *testing.T) {
	url := newNATS(t)
	fakeNode(t, url, "single")
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	for _, tc := range []struct {
		name string
		opt  client.Option
	}{
		{"refresh interval 0", client.WithRefreshInterval(0)},
		{"negative refresh interval", client.WithRefreshInterval(-time.Second)},
		{"backoff 0, 0", client.WithBackoff(0, 0)},
		{"backoff max below min", client.WithBackoff(time.Second, time.Millisecond)},
		{"request timeout 0", client.WithRequestTimeout(0)},
		{"async timeout 0", client.WithAsyncTimeout(0)},
		{"retry window 0", client.WithRetryWindow(0)},
		{"max pending 0", client.WithMaxPending(0)},
		{"max batch 0", client.WithMaxBatch(0)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cl, err := client.Connect(nc, tc.opt)
			if err == nil {
				cl.Close()
				t.Fatal("Connect accepted it")
			}
			if !strings.Contains(err.Error(), "natlog client") {
				t.Errorf("Connect: %v; want the option named", err)
			}
			// Dial refuses it before connecting (the URL has no
			// server: a connection error would mean it tried).
			cl, err = client.Dial("nats://127.0.0.1:1", tc.opt)
			if err == nil {
				cl.Close()
				t.Fatal("Dial accepted it")
			}
			if !strings.Contains(err.Error(), "natlog client") {
				t.Errorf("Dial: %v; want the option refused before connecting", err)
			}
		})
	}
}
