// Frames and the handshake of the NATS stream layer.
//
// Every message on a connection subject is one frame:
//
//	[kind uint8][seq uint64 big-endian][payload]
//
// seq counts the frames one side sends on one connection, from 1, with no
// gaps; the receiver requires exactly the next one. The kinds:
//
//	data  payload = stream bytes (never empty)
//	ack   payload = uint64: total stream bytes the receiver's reader consumed
//	ping  payload empty: keepalive
//	fin   payload empty: the sender closed; no frame follows
//	rst   payload = reason (text): the sender broke the connection. seq 0
//	      marks a reset for a connection the sender does not know (it is
//	      sent to the reply subject of the stray frame), accepted at any seq.
//
// Every frame carries the sender's own connection subject as its NATS reply
// subject, so a receiver that does not know the connection (e.g. restarted)
// can reset it at once instead of leaving the sender to time out.
//
// The handshake is a NATS request to the accept subject with a JSON
// connectRequest; the reply is a JSON connectReply.

package raftfsm

import (
	"encoding/binary"
	"sync"
	"time"
)

// frameKind is the first byte of a frame.
type frameKind byte

const (
	frameData frameKind = 1
	frameAck  frameKind = 2
	framePing frameKind = 3
	frameFin  frameKind = 4
	frameRst  frameKind = 5
)

// frameHeader is the size of a frame's kind and sequence number.
const frameHeader = 9

// streamProtocol is the version a connect request states; a listener refuses
// others.
const streamProtocol = 1

func (k frameKind) String() string {
	switch k {
	case frameData:
		return "data"
	case frameAck:
		return "ack"
	case framePing:
		return "ping"
	case frameFin:
		return "fin"
	case frameRst:
		return "rst"
	}
	return "unknown"
}

// appendFrame appends a frame to buf and returns it.
func appendFrame(buf []byte, kind frameKind, seq uint64, payload []byte) []byte {
	buf = append(buf, byte(kind))
	buf = binary.BigEndian.AppendUint64(buf, seq)
	return append(buf, payload...)
}

// parseFrame splits a frame; ok is false if it is too short to be one.
func parseFrame(b []byte) (kind frameKind, seq uint64, payload []byte, ok bool) {
	if len(b) < frameHeader {
		return 0, 0, nil, false
	}
	return frameKind(b[0]), binary.BigEndian.Uint64(b[1:frameHeader]), b[frameHeader:], true
}

// connectRequest is the JSON body a dialer sends to the accept subject.
type connectRequest struct {
	Protocol int    `json:"protocol"`
	Cluster  string `json:"cluster"`
	From     string `json:"from"`   // the dialer's node id
	Inbox    string `json:"inbox"`  // where the listener sends its frames
	Window   int    `json:"window"` // the dialer's receive window
}

// connectReply is the listener's JSON answer: Inbox and Window, or Error.
type connectReply struct {
	Inbox  string `json:"inbox,omitempty"`
	Window int    `json:"window,omitempty"`
	Error  string `json:"error,omitempty"`
}

// deadline is one I/O deadline of a connection, in the form a blocked call
// can select on: done() is closed while the deadline is in the past. set may
// be called at any time from any goroutine, also after stop, and moves the
// deadline for calls already blocked as well as later ones.
type deadline struct {
	mu      sync.Mutex // guards the fields below
	timer   *time.Timer
	gen     uint64        // counts set and stop calls; a timer acts only for its own
	expired chan struct{} // closed once the current deadline has passed
}

func newDeadline() *deadline {
	return &deadline{expired: make(chan struct{})}
}

// set moves the deadline to t; the zero time means none.
func (d *deadline) set(t time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopLocked()
	passed := isClosed(d.expired)
	if !t.IsZero() && !t.After(time.Now()) {
		if !passed {
			close(d.expired)
		}
		return
	}
	if passed {
		d.expired = make(chan struct{})
	}
	if t.IsZero() {
		return
	}
	gen, ch := d.gen, d.expired
	d.timer = time.AfterFunc(time.Until(t), func() {
		d.mu.Lock()
		defer d.mu.Unlock()
		if d.gen == gen { // no set or stop since: ch is still current and open
			close(ch)
		}
	})
}

// done returns a channel closed once the current deadline passes.
func (d *deadline) done() <-chan struct{} {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.expired
}

// stop releases the timer; a later set starts a new one.
func (d *deadline) stop() {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.stopLocked()
}

func (d *deadline) stopLocked() {
	d.gen++
	if d.timer != nil {
		d.timer.Stop()
		d.timer = nil
	}
}

func isClosed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
