package sidecar

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/sidecar/protocol"
)

// testConfig is a node on random loopback ports with its data in a
// temporary directory.
func testConfig(t testing.TB) Config {
	cfg := DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.NATSListen = "127.0.0.1:0"
	cfg.HTTPListen = "127.0.0.1:0"
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	cfg.Log.MaxIndexBytes = 12 * 4096
	cfg.Version = "0.0.1-test"
	return cfg
}

// startNode starts a node, shut down when the test ends.
func startNode(t testing.TB, cfg Config) *Server {
	t.Helper()
	s, err := Start(cfg)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s
}

// connectTo connects a client to the node's NATS.
func connectTo(t testing.TB, s *Server) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(s.NATSURL(), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	return nc
}

// request sends a request and fails the test on a transport error (not on
// an error reply).
func request(t testing.TB, nc *nats.Conn, subject string, data []byte, hdr nats.Header) *nats.Msg {
	t.Helper()
	m, err := nc.RequestMsg(&nats.Msg{Subject: subject, Data: data, Header: hdr}, 5*time.Second)
	if err != nil {
		t.Fatalf("request %s: %v", subject, err)
	}
	return m
}

// wantError checks that m is an error reply of the given kind, with the
// Status and Description headers set, and returns the error.
func wantError(t testing.TB, m *nats.Msg, kind *protocol.Error) *protocol.Error {
	t.Helper()
	e := protocol.ReplyError(m.Header, m.Data)
	if e == nil {
		t.Fatalf("want error %v, got success %q (headers %v)", kind, m.Data, m.Header)
	}
	if e.ErrCode != kind.ErrCode || e.Code != kind.Code {
		t.Fatalf("want error %d/%d, got %v", kind.Code, kind.ErrCode, e)
	}
	if m.Header.Get("Status") != itoa(kind.Code) || m.Header.Get("Description") == "" {
		t.Fatalf("error reply headers: %v", m.Header)
	}
	return e
}

func wantOK(t testing.TB, m *nats.Msg) {
	t.Helper()
	if e := protocol.ReplyError(m.Header, m.Data); e != nil {
		t.Fatalf("unexpected error reply: %v", e)
	}
}

func itoa(n int) string {
	return string(appendInt(nil, n))
}

func appendInt(b []byte, n int) []byte {
	if n >= 10 {
		b = appendInt(b, n/10)
	}
	return append(b, byte('0'+n%10))
}

// eventually polls cond until it holds or the deadline passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}
