// The raft.StreamLayer over NATS: accept, dial, dispatch and keepalive.

package raftfsm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"
)

// NATSStreamLayer is a raft.StreamLayer whose connections are pairs of NATS
// subjects (see the file comment of transport.go for the subjects and
// stream_frame.go for the frames). It is also a net.Listener: Accept returns
// the connections peers dial to this node.
//
// Goroutines: NATS runs two subscription callbacks for the layer (connect
// requests; frames of all its connections, in arrival order), and the layer
// runs one keepalive goroutine. Close stops all three. Every method may be
// called concurrently.
type NATSStreamLayer struct {
	nc     *nats.Conn
	cfg    TransportConfig
	addr   nodeAddr
	logger hclog.Logger

	rootPrefix    string // "<prefix>._raft.<cluster>."
	acceptSubject string // rootPrefix + "<node>.accept"
	connPrefix    string // rootPrefix + "<node>.conn."

	acceptSub *nats.Subscription
	streamSub *nats.Subscription

	backlog chan *streamConn // accepted, waiting for Accept
	closing chan struct{}    // closed by Close
	wg      sync.WaitGroup   // the keepalive goroutine

	mu     sync.RWMutex // guards conns and closed
	conns  map[string]*streamConn
	closed bool
}

var _ raft.StreamLayer = (*NATSStreamLayer)(nil)

// NewNATSStreamLayer starts listening for Raft connections to cfg.NodeID on
// nc. It fails with ErrNodeIDInUse if another process already listens under
// that id. When it returns, the layer's subscriptions are known to the NATS
// server, so peers may dial at once. nc stays the caller's (see
// NewNATSTransport).
func NewNATSStreamLayer(nc *nats.Conn, cfg TransportConfig) (*NATSStreamLayer, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if nc == nil || nc.IsClosed() {
		return nil, ErrNATSClosed
	}
	root := cfg.Prefix + "._raft." + cfg.Cluster + "."
	l := &NATSStreamLayer{
		nc:            nc,
		cfg:           cfg,
		addr:          nodeAddr(cfg.NodeID),
		logger:        cfg.Logger,
		rootPrefix:    root,
		acceptSubject: root + cfg.NodeID + ".accept",
		connPrefix:    root + cfg.NodeID + ".conn.",
		backlog:       make(chan *streamConn, cfg.AcceptBacklog),
		closing:       make(chan struct{}),
		conns:         make(map[string]*streamConn),
	}
	if l.logger == nil {
		l.logger = discardLogger()
	}
	if err := l.checkNodeIDFree(); err != nil {
		return nil, err
	}
	var err error
	if l.streamSub, err = nc.Subscribe(l.connPrefix+"*", l.dispatch); err != nil {
		return nil, fmt.Errorf("raftfsm: subscribe %s: %w", l.connPrefix+"*", err)
	}
	if l.acceptSub, err = nc.Subscribe(l.acceptSubject, l.handleConnect); err != nil {
		_ = l.streamSub.Unsubscribe()
		return nil, fmt.Errorf("raftfsm: subscribe %s: %w", l.acceptSubject, err)
	}
	for _, sub := range []*nats.Subscription{l.streamSub, l.acceptSub} {
		// Raft traffic must never be dropped as a slow consumer; the credit
		// window bounds what each connection may queue.
		if err = sub.SetPendingLimits(-1, -1); err != nil {
			break
		}
	}
	if err == nil {
		err = nc.FlushTimeout(cfg.DialTimeout)
	}
	if err != nil {
		_ = l.streamSub.Unsubscribe()
		_ = l.acceptSub.Unsubscribe()
		return nil, fmt.Errorf("raftfsm: start raft stream layer: %w", err)
	}
	l.wg.Add(1)
	go l.keepalive()
	return l, nil
}

// checkNodeIDFree asks the accept subject whether anyone listens there.
// Without NATS headers (no "no responders") the check cannot be made fast
// and is skipped.
func (l *NATSStreamLayer) checkNodeIDFree() error {
	if !l.nc.HeadersSupported() {
		l.logger.Warn("NATS server without headers: cannot check that the raft node id is unique", "node", l.addr)
		return nil
	}
	probe, err := json.Marshal(connectRequest{Protocol: 0, Cluster: l.cfg.Cluster, From: l.cfg.NodeID})
	if err != nil {
		return err
	}
	_, err = l.nc.Request(l.acceptSubject, probe, l.cfg.DialTimeout)
	switch {
	case err == nil:
		return fmt.Errorf("%w: %s answers on %s", ErrNodeIDInUse, l.addr, l.acceptSubject)
	case errors.Is(err, nats.ErrNoResponders):
		return nil
	case errors.Is(err, nats.ErrTimeout):
		l.logger.Warn("a subscriber on the raft accept subject does not answer", "subject", l.acceptSubject)
		return nil
	default:
		return fmt.Errorf("raftfsm: check raft node id %s: %w", l.addr, err)
	}
}

// Accept waits for the next connection a peer dialed to this node. After
// Close it returns net.ErrClosed. If the NATS connection closes, Accept
// keeps waiting (Dial reports that condition) until the layer is closed.
func (l *NATSStreamLayer) Accept() (net.Conn, error) {
	select {
	case <-l.closing:
		return nil, net.ErrClosed
	default:
	}
	select {
	case c := <-l.backlog:
		return c, nil
	case <-l.closing:
		return nil, net.ErrClosed
	}
}

// Addr returns this node's Raft address: its node id.
func (l *NATSStreamLayer) Addr() net.Addr { return l.addr }

// Dial opens a connection to the node whose Raft address (node id) is
// address. It waits for the peer's answer at most the smaller of timeout and
// TransportConfig.DialTimeout; a node that does not listen at all fails at
// once (ErrNodeUnreachable). The errors: ErrNodeUnreachable, ErrDialTimeout,
// ErrDialRefused, net.ErrClosed after Close.
func (l *NATSStreamLayer) Dial(address raft.ServerAddress, timeout time.Duration) (net.Conn, error) {
	target := string(address)
	if err := checkToken("raft address", target); err != nil {
		return nil, err
	}
	if !l.nc.IsConnected() {
		return nil, fmt.Errorf("%w: %s: NATS connection %s", ErrNodeUnreachable, target, strings.ToLower(l.nc.Status().String()))
	}
	if timeout <= 0 || timeout > l.cfg.DialTimeout {
		timeout = l.cfg.DialTimeout
	}
	c := newStreamConn(l, nuid.Next(), nodeAddr(target))
	// Registered before the request, so that the peer's first frames find it.
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil, net.ErrClosed
	}
	l.conns[c.id] = c
	l.mu.Unlock()

	req, err := json.Marshal(connectRequest{
		Protocol: streamProtocol,
		Cluster:  l.cfg.Cluster,
		From:     l.cfg.NodeID,
		Inbox:    c.inbox,
		Window:   l.cfg.Window,
	})
	if err != nil {
		c.fail(err, false)
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	subject := l.rootPrefix + target + ".accept"
	msg, err := l.nc.RequestWithContext(ctx, subject, req)
	if err != nil {
		switch {
		case errors.Is(err, nats.ErrNoResponders):
			err = fmt.Errorf("%w: no node %s listens on %s", ErrNodeUnreachable, target, subject)
		case errors.Is(err, context.DeadlineExceeded), errors.Is(err, nats.ErrTimeout):
			err = fmt.Errorf("%w: %s did not answer within %s", ErrDialTimeout, target, timeout)
		default:
			err = fmt.Errorf("%w: %s: %w", ErrNodeUnreachable, target, err)
		}
		c.fail(err, false)
		return nil, err
	}
	var rep connectReply
	if err := json.Unmarshal(msg.Data, &rep); err != nil {
		err = fmt.Errorf("%w: %s answered %q: %w", ErrDialRefused, target, msg.Data, err)
		c.fail(err, false)
		return nil, err
	}
	if rep.Error == "" && !l.isConnSubject(rep.Inbox, target) {
		rep.Error = fmt.Sprintf("bad inbox %q", rep.Inbox)
	}
	if rep.Error == "" && rep.Window < minWindow {
		rep.Error = fmt.Sprintf("window %d below %d", rep.Window, minWindow)
	}
	if rep.Error != "" {
		err := fmt.Errorf("%w: %s: %s", ErrDialRefused, target, rep.Error)
		c.fail(err, false)
		return nil, err
	}
	c.setPeer(rep.Inbox, rep.Window)
	c.ready.Store(true)
	return c, nil
}

// isConnSubject reports whether subject is a connection subject of node.
func (l *NATSStreamLayer) isConnSubject(subject, node string) bool {
	id, ok := strings.CutPrefix(subject, l.rootPrefix+node+".conn.")
	return ok && checkToken("connection id", id) == nil
}

// handleConnect answers a connect request (NATS callback of acceptSub).
func (l *NATSStreamLayer) handleConnect(msg *nats.Msg) {
	if msg.Reply == "" {
		return
	}
	reply := func(r connectReply) {
		b, err := json.Marshal(r)
		if err == nil {
			err = msg.Respond(b)
		}
		if err != nil {
			l.logger.Warn("cannot answer raft connect request", "error", err)
		}
	}
	var req connectRequest
	if err := json.Unmarshal(msg.Data, &req); err != nil {
		reply(connectReply{Error: "malformed connect request: " + err.Error()})
		return
	}
	switch {
	case req.Protocol != streamProtocol:
		reply(connectReply{Error: fmt.Sprintf("protocol %d not supported (want %d)", req.Protocol, streamProtocol)})
		return
	case req.Cluster != l.cfg.Cluster:
		reply(connectReply{Error: fmt.Sprintf("cluster %q, not %q", req.Cluster, l.cfg.Cluster)})
		return
	case checkToken("node id", req.From) != nil || !l.isConnSubject(req.Inbox, req.From):
		reply(connectReply{Error: fmt.Sprintf("bad origin %q / inbox %q", req.From, req.Inbox)})
		return
	case req.Window < minWindow:
		reply(connectReply{Error: fmt.Sprintf("window %d below %d", req.Window, minWindow)})
		return
	}
	c := newStreamConn(l, nuid.Next(), nodeAddr(req.From))
	c.setPeer(req.Inbox, req.Window)
	c.ready.Store(true)
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		reply(connectReply{Error: "node " + l.cfg.NodeID + " is closing"})
		return
	}
	select {
	case l.backlog <- c:
		l.conns[c.id] = c
	default:
		l.mu.Unlock()
		reply(connectReply{Error: fmt.Sprintf("accept backlog of %d full", cap(l.backlog))})
		return
	}
	l.mu.Unlock()
	reply(connectReply{Inbox: c.inbox, Window: l.cfg.Window})
}

// dispatch hands a frame to its connection (NATS callback of streamSub).
// A frame for a connection this layer does not know is answered with a
// reset to its reply subject, so the sender fails fast instead of waiting
// for a deadline (e.g. after this node restarted).
func (l *NATSStreamLayer) dispatch(msg *nats.Msg) {
	id, _ := strings.CutPrefix(msg.Subject, l.connPrefix)
	if len(msg.Data) == 0 && msg.Header.Get("Status") == "503" {
		// NATS "no responders" to a frame this side sent (frames carry
		// the connection's subject as their reply): nobody listens on
		// the peer's side any more. Fail now rather than at the idle
		// timeout.
		l.mu.RLock()
		c := l.conns[id]
		l.mu.RUnlock()
		if c != nil {
			c.fail(fmt.Errorf("%w: no responders on its side (the peer is gone)", ErrConnReset), false)
		}
		return
	}
	kind, seq, payload, ok := parseFrame(msg.Data)
	if !ok {
		l.logger.Warn("dropped a malformed raft stream frame", "subject", msg.Subject, "bytes", len(msg.Data))
		return
	}
	l.mu.RLock()
	c := l.conns[id]
	l.mu.RUnlock()
	if c != nil {
		c.deliver(kind, seq, payload)
		return
	}
	if kind == frameRst || kind == frameFin || !strings.HasPrefix(msg.Reply, l.rootPrefix) {
		return
	}
	rst := appendFrame(nil, frameRst, 0, []byte("unknown connection "+id+" at "+l.cfg.NodeID))
	_ = l.nc.Publish(msg.Reply, rst)
}

// forget drops c from the connections the layer dispatches to.
func (l *NATSStreamLayer) forget(c *streamConn) {
	l.mu.Lock()
	if l.conns[c.id] == c {
		delete(l.conns, c.id)
	}
	l.mu.Unlock()
}

// keepalive pings connections that have sent nothing for half the keepalive
// interval and fails those that have received nothing for the idle timeout.
// It exits when the layer closes.
func (l *NATSStreamLayer) keepalive() {
	defer l.wg.Done()
	half := l.cfg.KeepaliveInterval / 2
	// Silence is counted in ticks, not read off the clock: a process that
	// was not scheduled for a while (a loaded host, a long GC) has frames
	// waiting in its socket, and one tick is not enough for them to be read.
	// A ticker never fires early, so the ticks span at least IdleTimeout.
	quietTicks := int((l.cfg.IdleTimeout + half - 1) / half)
	tick := time.NewTicker(half)
	defer tick.Stop()
	var conns []*streamConn
	for {
		select {
		case <-l.closing:
			return
		case <-tick.C:
		}
		natsClosed := l.nc.IsClosed()
		conns = conns[:0]
		l.mu.RLock()
		for _, c := range l.conns {
			conns = append(conns, c)
		}
		l.mu.RUnlock()
		now := time.Now()
		for _, c := range conns {
			if !c.ready.Load() {
				continue // Dial is still waiting for the handshake
			}
			if natsClosed {
				c.fail(ErrNATSClosed, false)
				continue
			}
			c.mu.Lock()
			seq := c.recvSeq
			c.mu.Unlock()
			if seq != c.kaSeenSeq {
				c.kaSeenSeq, c.kaLastRecv, c.kaQuietTicks = seq, now, 0
			} else if c.kaQuietTicks++; c.kaQuietTicks >= quietTicks {
				silent := now.Sub(c.kaLastRecv).Round(time.Millisecond)
				c.fail(fmt.Errorf("%w: nothing from %s for %s", ErrPeerSilent, c.remote, silent), true)
				continue
			}
			if now.Sub(time.Unix(0, c.lastSend.Load())) >= half {
				if err := c.send(framePing, nil); err != nil {
					c.fail(fmt.Errorf("send ping: %w", err), false)
				}
			}
		}
		clear(conns)
	}
}

// Close stops listening: Accept returns net.ErrClosed, Dial fails, and every
// connection of the layer is closed (its peer reads io.EOF). It waits for the
// keepalive goroutine, not for NATS to flush, and leaves the NATS
// connection open. Idempotent; it returns nil.
func (l *NATSStreamLayer) Close() error {
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return nil
	}
	l.closed = true
	close(l.closing)
	conns := make([]*streamConn, 0, len(l.conns))
	for _, c := range l.conns {
		conns = append(conns, c)
	}
	l.mu.Unlock()
	_ = l.acceptSub.Unsubscribe()
	_ = l.streamSub.Unsubscribe()
	l.wg.Wait()
	for _, c := range conns {
		_ = c.Close()
	}
	for {
		select {
		case c := <-l.backlog:
			_ = c.Close()
		default:
			return nil
		}
	}
}
