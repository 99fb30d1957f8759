package client

import (
	"context"
	"errors"
	"strings"
	"sync"

	"github.com/nats-io/nats.go"
)

// A NATS server that refuses a publish (the user's permissions) says so
// only to the connection's asynchronous error handler: a request to a
// subject the user may not publish to would wait for its timeout and be
// retried. The clients of a connection therefore share one error handler,
// installed in front of the one the connection had (which it still
// calls), that fails their waiting requests on that subject at once.

// connHook is the handler installed on one connection, and the clients
// that use it.
type connHook struct {
	mu      sync.Mutex
	clients map[*Client]struct{}
}

// connHooks holds the hook of every connection with a client; a closed
// connection's is dropped when the next client connects.
var connHooks struct {
	mu sync.Mutex
	m  map[*nats.Conn]*connHook
}

// addClient registers c on its connection's hook, installing the hook on
// the connection's first client.
func addClient(c *Client) {
	connHooks.mu.Lock()
	defer connHooks.mu.Unlock()
	if connHooks.m == nil {
		connHooks.m = map[*nats.Conn]*connHook{}
	}
	for nc := range connHooks.m {
		if nc.IsClosed() {
			delete(connHooks.m, nc)
		}
	}
	h := connHooks.m[c.nc]
	if h == nil {
		h = &connHook{clients: map[*Client]struct{}{}}
		prev := c.nc.ErrorHandler()
		c.nc.SetErrorHandler(func(conn *nats.Conn, sub *nats.Subscription, err error) {
			h.dispatch(err)
			if prev != nil {
				prev(conn, sub, err)
			}
		})
		connHooks.m[c.nc] = h
	}
	h.mu.Lock()
	h.clients[c] = struct{}{}
	h.mu.Unlock()
}

// removeClient deregisters c (Close, or a Connect that failed). The hook
// stays on the connection, for its next client.
func removeClient(c *Client) {
	connHooks.mu.Lock()
	h := connHooks.m[c.nc]
	connHooks.mu.Unlock()
	if h != nil {
		h.mu.Lock()
		delete(h.clients, c)
		h.mu.Unlock()
	}
}

func (h *connHook) dispatch(err error) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return
	}
	subj, ok := deniedSubject(err)
	if !ok {
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	for c := range h.clients {
		c.denied(subj, err)
	}
}

// deniedSubject returns the subject of a permissions violation of a
// publish: `nats: permissions violation: Permissions Violation for Publish
// to "natlog.append.payments"`.
func deniedSubject(err error) (string, bool) {
	_, subj, ok := strings.Cut(err.Error(), "for Publish to ")
	if !ok {
		return "", false
	}
	subj = strings.Trim(strings.TrimSpace(subj), `"'`)
	return subj, subj != ""
}

// waitingRequest is a request in flight: its subject, and how to fail it.
type waitingRequest struct {
	subject string
	fail    context.CancelCauseFunc
}

// request sends one request and waits for its reply, or fails at once
// with the NATS server's permissions violation if the server refuses to let
// this connection publish to the subject.
func (c *Client) request(ctx context.Context, m *nats.Msg) (*nats.Msg, error) {
	ctx, fail := context.WithCancelCause(ctx)
	defer fail(nil)
	w := &waitingRequest{subject: m.Subject, fail: fail}
	c.reqMu.Lock()
	c.waiting[w] = struct{}{}
	c.reqMu.Unlock()
	reply, err := c.nc.RequestMsgWithContext(ctx, m)
	c.reqMu.Lock()
	delete(c.waiting, w)
	c.reqMu.Unlock()
	if err != nil {
		if cause := context.Cause(ctx); errors.Is(cause, nats.ErrPermissionViolation) {
			return nil, cause
		}
	}
	return reply, err
}

// denied fails c's requests waiting on subj with err.
func (c *Client) denied(subj string, err error) {
	c.reqMu.Lock()
	defer c.reqMu.Unlock()
	for w := range c.waiting {
		if w.subject == subj {
			w.fail(err)
		}
	}
}

// isNodeRead reports whether subj is a node's own read subject
// (<prefix>.node.<id>.read.<log>).
func (c *Client) isNodeRead(subj string) bool {
	rest, ok := strings.CutPrefix(subj, c.subjects.Prefix()+".node.")
	if !ok {
		return false
	}
	_, tail, ok := strings.Cut(rest, ".")
	return ok && strings.HasPrefix(tail, "read.")
}

// nodeReadSubject is the subject of a read of log from node, or the shared
// read subject if node is "" or this connection may not publish to nodes'
// own read subjects.
func (c *Client) nodeReadSubject(node, log string) string {
	if node == "" || c.nodeReadsDenied.Load() {
		return c.subjects.Read(log)
	}
	return c.subjects.Node(node).Read(log)
}
