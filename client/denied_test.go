package client

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/sidecar/protocol"
)

// natsWithUsers starts an embedded nats-server with user "app", who may
// publish only to allow; it returns the URL with app's credentials.
func natsWithUsers(t *testing.T, allow ...string) string {
	t.Helper()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true,
		Users: []*server.User{{Username: "app", Password: "p", Permissions: &server.Permissions{
			Publish:   &server.SubjectPermission{Allow: allow},
			Subscribe: &server.SubjectPermission{Allow: []string{"_INBOX.>"}},
		}}}})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(ns.Shutdown)
	return "nats://app:p@" + ns.Addr().String()
}

// Clients that come and go on one connection share one error handler in
// front of the application's: it is installed once, and a closed client
// leaves it.
func TestDeniedHookInstalledOnce(t *testing.T) {
	sentinel := errors.New("some error")
	var calls atomic.Int32
	nc, err := nats.Connect(natsWithUsers(t, "natlog.append.>"), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if err == sentinel {
			calls.Add(1)
		}
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	var first *connHook
	for i := range 200 {
		// The status is denied: Connect goes on without it, at once.
		c, err := Connect(nc, WithRequestTimeout(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		connHooks.mu.Lock()
		h := connHooks.m[nc]
		connHooks.mu.Unlock()
		if i == 0 {
			first = h
		} else if h != first {
			t.Fatalf("client %d installed a second hook", i)
		}
		if !c.statusDenied.Load() {
			t.Fatal("the status was not denied")
		}
		c.Close()
	}
	first.mu.Lock()
	n := len(first.clients)
	first.mu.Unlock()
	if n != 0 {
		t.Fatalf("%d closed clients still on the hook", n)
	}
	nc.ErrorHandler()(nc, nil, sentinel)
	if n := calls.Load(); n != 1 {
		t.Fatalf("the application's handler was called %d times, want once", n)
	}

	// A request the server refuses fails on the violation, not at its
	// timeout (which would be a timeout error, after a minute).
	c, err := Connect(nc, WithRequestTimeout(time.Minute))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Fetch(context.Background(), "orders", 0, FetchOptions{})
	if !errors.Is(err, nats.ErrPermissionViolation) {
		t.Fatalf("Fetch without permission: %v", err)
	}
	if retry, indefinite := outcome(err); retry || indefinite {
		t.Fatalf("outcome of a refusal: retry %v, indefinite %v", retry, indefinite)
	}
}

func TestIsNodeRead(t *testing.T) {
	c := &Client{}
	var err error
	if c.subjects, err = protocol.NewSubjects("acme.log"); err != nil {
		t.Fatal(err)
	}
	for subj, want := range map[string]bool{
		"acme.log.node.n1.read.orders":      true,
		"acme.log.node.n1.cluster.status":   false,
		"acme.log.node.n1.status":           false,
		"acme.log.read.orders":              false,
		"natlog.node.n1.read.orders":        false,
		"acme.log.node.n1.readx.orders":     false,
		"acme.log.node.read.orders.read.x":  false,
		"acme.log.node.n2.read.read.orders": true,
	} {
		if got := c.isNodeRead(subj); got != want {
			t.Errorf("isNodeRead(%q) = %v, want %v", subj, got, want)
		}
	}
}
