// One connection of the NATS stream layer: a net.Conn made of two NATS
// subjects.

package raftfsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// nodeAddr is a node's Raft address on the NATS transport: its node id.
type nodeAddr string

// Network returns "nats".
func (a nodeAddr) Network() string { return "nats" }

// String returns the node id.
func (a nodeAddr) String() string { return string(a) }

// maxReusedSendBuf bounds the frame buffer a connection keeps between sends,
// so that idle connections do not each hold a max-payload-sized buffer.
const maxReusedSendBuf = 64 << 10

// errNotReady: a frame for a connection whose handshake has not finished.
var errNotReady = errors.New("raftfsm: raft connection handshake not finished")

// streamConn is a net.Conn over NATS: frames from the peer arrive on inbox
// (the layer's dispatch goroutine hands them to deliver), frames to the peer
// go to outbox.
//
// Concurrency: like net.Conn, every method may be called from any goroutine
// at any time. Concurrent Writes are serialised whole (the bytes of one Write
// stay contiguous); concurrent Reads each get some of the bytes, in order.
// Close wakes every blocked Read and Write.
//
// Locks: wmu (serialises Writes) is taken before mu or smu, never after;
// mu and smu are never held together.
type streamConn struct {
	layer  *NATSStreamLayer
	id     string // the last token of inbox; the layer's key for this conn
	inbox  string // frames from the peer
	outbox string // frames to the peer; set before the conn is shared, then fixed
	local  nodeAddr
	remote nodeAddr

	window     int // our receive window; we ack every window/4 bytes read
	peerWindow int // the peer's receive window: our credit limit
	chunk      int // data bytes per frame

	rd, wd *deadline

	wmu sync.Mutex // serialises Write calls

	smu     sync.Mutex // guards sendSeq and sendBuf; held across a publish so frames leave in seq order
	sendSeq uint64
	sendBuf []byte

	lastSend atomic.Int64 // unix nanoseconds of the last frame sent
	ready    atomic.Bool  // set once outbox, peerWindow and chunk are: frames may be sent

	mu       sync.Mutex    // guards the fields below
	queue    [][]byte      // received data not yet read, oldest first
	queued   int           // bytes in queue
	consumed uint64        // stream bytes the reader has consumed
	ackSent  uint64        // the consumed count last acked to the peer
	recvSeq  uint64        // seq of the last frame received
	sent     uint64        // stream bytes sent
	acked    uint64        // stream bytes the peer has acked
	closed   bool          // Close was called
	finRecv  bool          // the peer closed: Read returns io.EOF once queue is empty
	err      error         // the failure that broke the connection
	dead     chan struct{} // closed when the conn ends: Close, the peer's fin, or a failure
	readable chan struct{} // signalled (cap 1) when data arrives
	credit   chan struct{} // signalled (cap 1) when an ack arrives

	// Owned by the layer's keepalive goroutine.
	kaSeenSeq    uint64    // recvSeq at the last tick
	kaLastRecv   time.Time // when a tick last saw recvSeq move
	kaQuietTicks int       // ticks since then
}

var _ net.Conn = (*streamConn)(nil)

// newStreamConn returns a connection of layer l receiving on subject inbox
// (whose last token is id), to node remote. outbox and peerWindow are set by
// the handshake before the conn is shared.
func newStreamConn(l *NATSStreamLayer, id string, remote nodeAddr) *streamConn {
	return &streamConn{
		layer:      l,
		id:         id,
		inbox:      l.connPrefix + id,
		local:      l.addr,
		remote:     remote,
		window:     l.cfg.Window,
		rd:         newDeadline(),
		wd:         newDeadline(),
		dead:       make(chan struct{}),
		readable:   make(chan struct{}, 1),
		credit:     make(chan struct{}, 1),
		kaLastRecv: time.Now(),
	}
}

// setPeer records the handshake's outcome: the peer's subject and window,
// and the chunk size they allow.
func (c *streamConn) setPeer(outbox string, peerWindow int) {
	c.outbox = outbox
	c.peerWindow = peerWindow
	chunk := int(c.layer.nc.MaxPayload()) - frameHeader
	if m := c.layer.cfg.MaxChunk; m > 0 && m < chunk {
		chunk = m
	}
	if chunk > peerWindow/2 {
		chunk = peerWindow / 2
	}
	if chunk < 1 {
		chunk = 1
	}
	c.chunk = chunk
}

// Read reads stream bytes. It blocks until data arrives, the peer closes
// (io.EOF, after all data before the close was read), the read deadline
// passes (os.ErrDeadlineExceeded, a net.Error whose Timeout() is true; the
// connection stays usable), Close is called (net.ErrClosed) or the
// connection fails (one of the package's errors).
func (c *streamConn) Read(p []byte) (int, error) {
	for {
		if isClosed(c.rd.done()) {
			return 0, os.ErrDeadlineExceeded
		}
		c.mu.Lock()
		switch {
		case c.closed:
			c.mu.Unlock()
			return 0, net.ErrClosed
		case c.err != nil:
			err := c.err
			c.mu.Unlock()
			return 0, err
		case len(p) == 0:
			c.mu.Unlock()
			return 0, nil
		case c.queued > 0:
			n := c.take(p)
			var ack uint64
			if c.consumed-c.ackSent >= uint64(c.window/4) && !c.finRecv {
				c.ackSent = c.consumed
				ack = c.consumed
			}
			c.mu.Unlock()
			if ack > 0 {
				c.sendAck(ack)
			}
			return n, nil
		case c.finRecv:
			c.mu.Unlock()
			return 0, io.EOF
		}
		c.mu.Unlock()
		select {
		case <-c.readable:
		case <-c.dead:
		case <-c.rd.done():
		}
	}
}

// take copies queued data into p; c.mu is held and c.queued > 0.
func (c *streamConn) take(p []byte) int {
	n := 0
	for n < len(p) && len(c.queue) > 0 {
		m := copy(p[n:], c.queue[0])
		n += m
		if m == len(c.queue[0]) {
			c.queue[0] = nil
			c.queue = c.queue[1:]
		} else {
			c.queue[0] = c.queue[0][m:]
		}
	}
	if len(c.queue) == 0 {
		c.queue = nil // let the backing array go
	}
	c.queued -= n
	c.consumed += uint64(n)
	return n
}

// sendAck tells the peer how many bytes were consumed, returning it credit.
func (c *streamConn) sendAck(consumed uint64) {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], consumed)
	if err := c.send(frameAck, b[:]); err != nil {
		c.fail(fmt.Errorf("send ack: %w", err), false)
	}
}

// Write sends b as one contiguous run of the stream, in frames of at most
// the chunk size. It blocks while the peer's credit window is full, until
// the write deadline (os.ErrDeadlineExceeded, with the count of bytes
// already sent), Close (net.ErrClosed), the peer's close (ErrPeerClosed) or
// a failure. Bytes are handed to the NATS connection, not confirmed
// delivered: as with TCP, only the peer's reply says they arrived.
func (c *streamConn) Write(b []byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	done := 0
	for done < len(b) {
		n := min(c.chunk, len(b)-done)
		if err := c.waitCredit(n); err != nil {
			return done, err
		}
		if err := c.send(frameData, b[done:done+n]); err != nil {
			err = fmt.Errorf("send data: %w", err)
			c.fail(err, false)
			return done, err
		}
		done += n
	}
	return done, nil
}

// waitCredit blocks until n more bytes fit into the peer's window, then
// counts them as sent.
func (c *streamConn) waitCredit(n int) error {
	for {
		if isClosed(c.wd.done()) {
			return os.ErrDeadlineExceeded
		}
		c.mu.Lock()
		switch {
		case c.closed:
			c.mu.Unlock()
			return net.ErrClosed
		case c.err != nil:
			err := c.err
			c.mu.Unlock()
			return err
		case c.finRecv:
			c.mu.Unlock()
			return ErrPeerClosed
		case c.sent-c.acked+uint64(n) <= uint64(c.peerWindow):
			c.sent += uint64(n)
			c.mu.Unlock()
			return nil
		}
		c.mu.Unlock()
		select {
		case <-c.credit:
		case <-c.dead:
		case <-c.wd.done():
		}
	}
}

// send publishes one frame to the peer. Callers must not hold c.mu.
func (c *streamConn) send(kind frameKind, payload []byte) error {
	if !c.ready.Load() {
		return errNotReady
	}
	c.smu.Lock()
	defer c.smu.Unlock()
	c.sendSeq++
	buf := appendFrame(c.sendBuf[:0], kind, c.sendSeq, payload)
	if cap(buf) <= maxReusedSendBuf {
		c.sendBuf = buf
	}
	c.lastSend.Store(time.Now().UnixNano())
	return c.layer.nc.PublishRequest(c.outbox, c.inbox, buf)
}

// deliver takes one frame from the peer. Only the layer's dispatch goroutine
// calls it, so frames arrive here in the order NATS delivered them.
func (c *streamConn) deliver(kind frameKind, seq uint64, payload []byte) {
	c.mu.Lock()
	if c.terminal() {
		c.mu.Unlock()
		return
	}
	if kind == frameRst && seq == 0 {
		c.mu.Unlock()
		c.fail(fmt.Errorf("%w: %s", ErrConnReset, payload), false)
		return
	}
	if seq != c.recvSeq+1 {
		want := c.recvSeq + 1
		c.mu.Unlock()
		c.fail(fmt.Errorf("%w: %s frame %d arrived where %d was due, from %s", ErrStreamGap, kind, seq, want, c.remote), true)
		return
	}
	c.recvSeq = seq
	switch kind {
	case frameData:
		if len(payload) == 0 || c.queued+len(payload) > c.window {
			c.mu.Unlock()
			c.fail(fmt.Errorf("%w: data frame of %d bytes with %d of window %d queued", ErrBadFrame, len(payload), c.queued, c.window), true)
			return
		}
		c.queue = append(c.queue, payload)
		c.queued += len(payload)
		c.mu.Unlock()
		signal(c.readable)
	case frameAck:
		if len(payload) != 8 {
			c.mu.Unlock()
			c.fail(fmt.Errorf("%w: ack of %d bytes", ErrBadFrame, len(payload)), true)
			return
		}
		if v := binary.BigEndian.Uint64(payload); v > c.acked {
			if v > c.sent {
				c.mu.Unlock()
				c.fail(fmt.Errorf("%w: ack of %d bytes with %d sent", ErrBadFrame, v, c.sent), true)
				return
			}
			c.acked = v
		}
		c.mu.Unlock()
		signal(c.credit)
	case framePing:
		c.mu.Unlock()
	case frameFin:
		c.finRecv = true
		close(c.dead)
		c.mu.Unlock()
		c.layer.forget(c)
	case frameRst:
		c.mu.Unlock()
		c.fail(fmt.Errorf("%w: %s", ErrConnReset, payload), false)
	default:
		c.mu.Unlock()
		c.fail(fmt.Errorf("%w: kind %d", ErrBadFrame, kind), true)
	}
}

// terminal reports whether the connection has ended one way or another;
// c.mu is held.
func (c *streamConn) terminal() bool {
	return c.closed || c.finRecv || c.err != nil
}

// fail breaks the connection with err: Read and Write return it from now on
// (queued data is dropped) and the layer forgets the connection. With
// notifyPeer it sends the peer a reset so its side fails too. Only the first
// ending counts.
func (c *streamConn) fail(err error, notifyPeer bool) {
	c.mu.Lock()
	if c.terminal() {
		c.mu.Unlock()
		return
	}
	c.err = err
	c.queue, c.queued = nil, 0
	close(c.dead)
	c.mu.Unlock()
	c.layer.logger.Debug("raft stream connection failed", "remote", c.remote, "conn", c.id, "error", err)
	if notifyPeer {
		_ = c.send(frameRst, []byte(err.Error()))
	}
	c.layer.forget(c)
}

// Close ends the connection: blocked and later Reads and Writes return
// net.ErrClosed, and the peer is sent a fin so that its Read returns io.EOF
// once it has read what was sent before (unless the connection had already
// ended). Close does not wait for the NATS connection to flush. It is
// idempotent and always returns nil.
func (c *streamConn) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	wasTerminal := c.terminal()
	c.closed = true
	c.queue, c.queued = nil, 0
	if !wasTerminal {
		close(c.dead)
	}
	c.mu.Unlock()
	c.rd.stop()
	c.wd.stop()
	if !wasTerminal {
		// The fin leaves before the layer forgets the conn: a stray frame
		// answered with a reset from then on reaches the peer after the fin,
		// and the peer ignores it.
		_ = c.send(frameFin, nil)
		c.layer.forget(c)
	}
	return nil
}

// LocalAddr returns this node's Raft address.
func (c *streamConn) LocalAddr() net.Addr { return c.local }

// RemoteAddr returns the peer's Raft address.
func (c *streamConn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets both the read and the write deadline.
func (c *streamConn) SetDeadline(t time.Time) error {
	c.rd.set(t)
	c.wd.set(t)
	return nil
}

// SetReadDeadline sets the read deadline; it applies to Reads already
// blocked. The zero time means none.
func (c *streamConn) SetReadDeadline(t time.Time) error {
	c.rd.set(t)
	return nil
}

// SetWriteDeadline sets the write deadline; it applies to Writes already
// blocked on credit. The zero time means none.
func (c *streamConn) SetWriteDeadline(t time.Time) error {
	c.wd.set(t)
	return nil
}

// signal wakes one waiter on ch without blocking.
func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}
