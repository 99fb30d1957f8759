package raftfsm

import (
	"bytes"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

func TestStreamEchoAndAddresses(t *testing.T) {
	ns := startStreamNATS(t, 0)
	a, _ := startStreamLayer(t, ns, streamTestConfig("a"))
	b, _ := startStreamLayer(t, ns, streamTestConfig("b"))
	if got := a.Addr(); got.String() != "a" || got.Network() != "nats" {
		t.Fatalf("Addr = %s/%s, want nats/a", got.Network(), got)
	}
	dialed, accepted := dialStreamPair(t, a, b)
	if dialed.LocalAddr().String() != "a" || dialed.RemoteAddr().String() != "b" {
		t.Fatalf("dialed addrs %s -> %s, want a -> b", dialed.LocalAddr(), dialed.RemoteAddr())
	}
	if accepted.LocalAddr().String() != "b" || accepted.RemoteAddr().String() != "a" {
		t.Fatalf("accepted addrs %s -> %s, want b -> a", accepted.LocalAddr(), accepted.RemoteAddr())
	}
	if _, err := dialed.Write([]byte("hello")); err != nil {
		t.Fatalf("Write: %v", err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(accepted, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("ReadFull = %q, %v", buf, err)
	}
	if _, err := accepted.Write([]byte("world")); err != nil {
		t.Fatalf("Write back: %v", err)
	}
	if _, err := io.ReadFull(dialed, buf); err != nil || string(buf) != "world" {
		t.Fatalf("ReadFull back = %q, %v", buf, err)
	}
}

// A write far larger than the NATS max payload and the credit window
// arrives whole and in order, in frames that each fit the max payload.
func TestStreamLargeWritesAreChunked(t *testing.T) {
	const maxPayload = 4096
	ns := startStreamNATS(t, maxPayload)
	cfg := streamTestConfig("a")
	cfg.Window = minWindow // 64 KiB: the writer must wait for acks many times
	a, _ := startStreamLayer(t, ns, cfg)
	cfg.NodeID = "b"
	b, _ := startStreamLayer(t, ns, cfg)

	// A sniffer counts the frames towards b and their largest size.
	sniffer := connectStreamNATS(t, ns)
	var frames, largest atomic.Int64
	sub, err := sniffer.Subscribe("natlog._raft.test.b.conn.*", func(m *nats.Msg) {
		frames.Add(1)
		for {
			cur := largest.Load()
			if int64(len(m.Data)) <= cur || largest.CompareAndSwap(cur, int64(len(m.Data))) {
				break
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	_ = sub.SetPendingLimits(-1, -1)
	if err := sniffer.Flush(); err != nil {
		t.Fatal(err)
	}

	dialed, accepted := dialStreamPair(t, a, b)
	const size = 3 << 20
	up, down := make([]byte, size), make([]byte, size)
	_, _ = rand.Read(up)
	_, _ = rand.Read(down)

	// Both directions at once: each side writes 3 MiB while reading 3 MiB.
	var wg sync.WaitGroup
	errs := make(chan error, 4)
	got := make([][]byte, 2)
	for i, c := range []net.Conn{dialed, accepted} {
		data := up
		if i == 1 {
			data = down
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			n, err := c.Write(data)
			if err != nil || n != size {
				errs <- fmt.Errorf("Write = %d, %v", n, err)
			}
		}()
		go func() {
			defer wg.Done()
			buf := make([]byte, size)
			if _, err := io.ReadFull(c, buf); err != nil {
				errs <- fmt.Errorf("ReadFull: %w", err)
			}
			got[i] = buf
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if !bytes.Equal(got[1], up) {
		t.Fatal("the acceptor read different bytes than the dialer wrote")
	}
	if !bytes.Equal(got[0], down) {
		t.Fatal("the dialer read different bytes than the acceptor wrote")
	}
	// Sniffer delivery is asynchronous: wait until it has seen the frames.
	minFrames := int64(size / (maxPayload - frameHeader))
	pollUntil(t, 5*time.Second, "the sniffer to see the frames", func() bool { return frames.Load() >= minFrames })
	if l := largest.Load(); l > maxPayload {
		t.Fatalf("a frame of %d bytes exceeds max payload %d", l, maxPayload)
	}
	t.Logf("%d frames towards b, largest %d bytes", frames.Load(), largest.Load())
}

func TestStreamDeadlines(t *testing.T) {
	ns := startStreamNATS(t, 0)
	cfg := streamTestConfig("a")
	cfg.Window = minWindow
	a, _ := startStreamLayer(t, ns, cfg)
	cfg.NodeID = "b"
	b, _ := startStreamLayer(t, ns, cfg)

	t.Run("read deadline passes, then the conn still works", func(t *testing.T) {
		dialed, accepted := dialStreamPair(t, a, b)
		start := time.Now()
		_ = accepted.SetReadDeadline(start.Add(50 * time.Millisecond))
		_, err := accepted.Read(make([]byte, 1))
		if !isNetTimeout(err) || !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Read = %v, want a timeout", err)
		}
		if waited := time.Since(start); waited < 45*time.Millisecond {
			t.Fatalf("Read returned after %s, before its deadline", waited)
		}
		_ = accepted.SetReadDeadline(time.Time{})
		if _, err := dialed.Write([]byte("x")); err != nil {
			t.Fatal(err)
		}
		if n, err := accepted.Read(make([]byte, 1)); n != 1 || err != nil {
			t.Fatalf("Read after clearing the deadline = %d, %v", n, err)
		}
	})

	t.Run("deadline in the past fails at once", func(t *testing.T) {
		dialed, _ := dialStreamPair(t, a, b)
		_ = dialed.SetDeadline(time.Now().Add(-time.Second))
		if _, err := dialed.Read(make([]byte, 1)); !isNetTimeout(err) {
			t.Fatalf("Read = %v, want a timeout", err)
		}
		if _, err := dialed.Write([]byte("x")); !isNetTimeout(err) {
			t.Fatalf("Write = %v, want a timeout", err)
		}
	})

	t.Run("moving the deadline wakes a blocked Read", func(t *testing.T) {
		_, accepted := dialStreamPair(t, a, b)
		ch := readInBackground(accepted, 1)
		select {
		case r := <-ch:
			t.Fatalf("Read returned %d, %v with no data and no deadline", r.n, r.err)
		case <-time.After(20 * time.Millisecond):
		}
		_ = accepted.SetReadDeadline(time.Now())
		if r := awaitStreamRead(t, ch, 5*time.Second); !isNetTimeout(r.err) {
			t.Fatalf("Read = %v, want a timeout", r.err)
		}
	})

	t.Run("write deadline ends a write the reader does not drain", func(t *testing.T) {
		dialed, accepted := dialStreamPair(t, a, b)
		_ = dialed.SetWriteDeadline(time.Now().Add(100 * time.Millisecond))
		data := make([]byte, 1<<20)
		n, err := dialed.Write(data)
		if !isNetTimeout(err) {
			t.Fatalf("Write = %d, %v, want a timeout", n, err)
		}
		if n > minWindow {
			t.Fatalf("Write sent %d bytes past a window of %d", n, minWindow)
		}
		// What was sent is intact and the conn goes on once the reader reads.
		_ = dialed.SetWriteDeadline(time.Time{})
		go func() { _, _ = dialed.Write(data[n:]) }()
		if _, err := io.ReadFull(accepted, make([]byte, len(data))); err != nil {
			t.Fatalf("ReadFull after the timed-out write: %v", err)
		}
	})
}

func TestStreamCloseGivesPeerEOF(t *testing.T) {
	ns := startStreamNATS(t, 0)
	a, _ := startStreamLayer(t, ns, streamTestConfig("a"))
	b, _ := startStreamLayer(t, ns, streamTestConfig("b"))
	dialed, accepted := dialStreamPair(t, a, b)

	blocked := readInBackground(dialed, 16)
	if _, err := accepted.Write([]byte("bye")); err != nil {
		t.Fatal(err)
	}
	_ = accepted.SetDeadline(time.Now().Add(time.Hour)) // a timer Close must stop
	if err := accepted.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := accepted.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	if r := awaitStreamRead(t, blocked, 5*time.Second); r.n != 3 || r.err != nil {
		t.Fatalf("first Read = %d, %v, want the 3 bytes written before Close", r.n, r.err)
	}
	if r := awaitStreamRead(t, readInBackground(dialed, 16), 5*time.Second); r.err != io.EOF {
		t.Fatalf("Read after the peer closed = %d, %v, want io.EOF", r.n, r.err)
	}
	if _, err := dialed.Write([]byte("x")); !errors.Is(err, ErrPeerClosed) {
		t.Fatalf("Write to a closed peer = %v, want ErrPeerClosed", err)
	}
	if _, err := accepted.Read(make([]byte, 1)); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Read after Close = %v, want net.ErrClosed", err)
	}
	if _, err := accepted.Write([]byte("x")); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Write after Close = %v, want net.ErrClosed", err)
	}

	// Raft sets deadlines on conns it has closed: no effect, no hang.
	setDone := make(chan struct{})
	go func() {
		_ = accepted.SetDeadline(time.Now().Add(time.Second))
		_ = accepted.SetReadDeadline(time.Time{})
		_ = accepted.SetWriteDeadline(time.Now())
		close(setDone)
	}()
	select {
	case <-setDone:
	case <-time.After(5 * time.Second):
		t.Fatal("SetDeadline on a closed conn blocked")
	}

	// Close wakes a Read blocked on the same conn.
	d2, _ := dialStreamPair(t, a, b)
	blocked = readInBackground(d2, 1)
	_ = d2.Close()
	if r := awaitStreamRead(t, blocked, 5*time.Second); !errors.Is(r.err, net.ErrClosed) {
		t.Fatalf("blocked Read after Close = %v, want net.ErrClosed", r.err)
	}
}

func TestStreamDialFailures(t *testing.T) {
	ns := startStreamNATS(t, 0)
	cfg := streamTestConfig("a")
	cfg.DialTimeout = 5 * time.Second
	a, nc := startStreamLayer(t, ns, cfg)

	t.Run("missing node fails fast", func(t *testing.T) {
		start := time.Now()
		_, err := a.Dial("nobody", 10*time.Second)
		if !errors.Is(err, ErrNodeUnreachable) {
			t.Fatalf("Dial = %v, want ErrNodeUnreachable", err)
		}
		if took := time.Since(start); took > time.Second {
			t.Fatalf("Dial to a missing node took %s", took)
		}
	})

	t.Run("silent listener times out", func(t *testing.T) {
		mute, err := nc.SubscribeSync("natlog._raft.test.mute.accept")
		if err != nil {
			t.Fatal(err)
		}
		defer mute.Unsubscribe()
		start := time.Now()
		_, err = a.Dial("mute", 150*time.Millisecond)
		if !errors.Is(err, ErrDialTimeout) {
			t.Fatalf("Dial = %v, want ErrDialTimeout", err)
		}
		if took := time.Since(start); took < 140*time.Millisecond || took > 3*time.Second {
			t.Fatalf("Dial gave up after %s, want about 150ms", took)
		}
	})

	t.Run("refusal is reported", func(t *testing.T) {
		refuser, err := nc.Subscribe("natlog._raft.test.refuser.accept", func(m *nats.Msg) {
			_ = m.Respond([]byte(`{"error":"go away"}`))
		})
		if err != nil {
			t.Fatal(err)
		}
		defer refuser.Unsubscribe()
		if _, err := a.Dial("refuser", time.Second); !errors.Is(err, ErrDialRefused) {
			t.Fatalf("Dial = %v, want ErrDialRefused", err)
		}
	})

	t.Run("listener refuses bad connect requests", func(t *testing.T) {
		good := connectRequest{Protocol: streamProtocol, Cluster: "test", From: "z",
			Inbox: "natlog._raft.test.z.conn.x1", Window: minWindow}
		tests := []struct {
			name string
			edit func(*connectRequest)
		}{
			{"other cluster", func(r *connectRequest) { r.Cluster = "elsewhere" }},
			{"other protocol", func(r *connectRequest) { r.Protocol = 2 }},
			{"inbox outside the sender's subjects", func(r *connectRequest) { r.Inbox = "_INBOX.x" }},
			{"inbox of another node", func(r *connectRequest) { r.Inbox = "natlog._raft.test.a.conn.x1" }},
			{"tiny window", func(r *connectRequest) { r.Window = 10 }},
		}
		for _, tt := range tests {
			req := good
			tt.edit(&req)
			body, _ := json.Marshal(req)
			m, err := nc.Request("natlog._raft.test.a.accept", body, 2*time.Second)
			if err != nil {
				t.Fatalf("%s: request: %v", tt.name, err)
			}
			var rep connectReply
			if err := json.Unmarshal(m.Data, &rep); err != nil || rep.Error == "" || rep.Inbox != "" {
				t.Errorf("%s: reply %s, want an error", tt.name, m.Data)
			}
		}
		m, err := nc.Request("natlog._raft.test.a.accept", []byte("not json"), 2*time.Second)
		if err != nil || !bytes.Contains(m.Data, []byte(`"error"`)) {
			t.Errorf("malformed request: reply %v, %v, want an error", m, err)
		}
	})

	t.Run("bad address", func(t *testing.T) {
		if _, err := a.Dial("x.y", time.Second); err == nil {
			t.Fatal("Dial to an address with a dot succeeded")
		}
	})

	t.Run("node id in use", func(t *testing.T) {
		_, err := NewNATSStreamLayer(connectStreamNATS(t, ns), cfg)
		if !errors.Is(err, ErrNodeIDInUse) {
			t.Fatalf("second layer for node a = %v, want ErrNodeIDInUse", err)
		}
	})
}

// Many connections between the same nodes at once stay separate streams.
func TestStreamConcurrentConnections(t *testing.T) {
	ns := startStreamNATS(t, 64<<10)
	a, _ := startStreamLayer(t, ns, streamTestConfig("a"))
	b, _ := startStreamLayer(t, ns, streamTestConfig("b"))
	srv, _ := startStreamLayer(t, ns, streamTestConfig("srv"))

	// srv echoes every connection until EOF.
	go func() {
		for {
			c, err := srv.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				_, _ = io.Copy(c, c)
			}()
		}
	}()

	const conns, size = 24, 200 << 10
	var wg sync.WaitGroup
	errs := make(chan error, conns)
	for i := range conns {
		from := a
		if i%2 == 1 {
			from = b
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			c, err := from.Dial("srv", 5*time.Second)
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			data := bytes.Repeat([]byte{byte(i)}, size)
			go func() { _, _ = c.Write(data) }()
			got := make([]byte, size)
			if _, err := io.ReadFull(c, got); err != nil {
				errs <- fmt.Errorf("conn %d: %w", i, err)
				return
			}
			if !bytes.Equal(got, data) {
				errs <- fmt.Errorf("conn %d: echo differs", i)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// peerPair is a connection dialed from a to b, with keepalives every 50 ms
// and the given idle timeout.
type peerPair struct {
	ns               *server.Server
	cfg              TransportConfig
	a                *NATSStreamLayer
	ncA              *nats.Conn
	dialed, accepted *streamConn
}

func startPeerPair(t *testing.T, idle time.Duration) peerPair {
	t.Helper()
	p := peerPair{ns: startStreamNATS(t, 0), cfg: streamTestConfig("a")}
	p.cfg.KeepaliveInterval = 50 * time.Millisecond
	p.cfg.IdleTimeout = idle
	p.a, p.ncA = startStreamLayer(t, p.ns, p.cfg)
	cfgB := p.cfg
	cfgB.NodeID = "b"
	b, _ := startStreamLayer(t, p.ns, cfgB)
	p.dialed, p.accepted = dialStreamPair(t, p.a, b)
	return p
}

// A peer whose NATS connection dies sends no fin, but its subscriptions go
// with it: the next frame to it (a keepalive ping, at the latest) comes back
// as NATS "no responders", and the Read that raft's accepting side blocks
// in without a deadline ends with ErrConnReset, before the idle timeout.
func TestStreamPeerDeathEndsBlockedRead(t *testing.T) {
	p := startPeerPair(t, 5*time.Second)
	a, ncA, dialed, accepted, cfg := p.a, p.ncA, p.dialed, p.accepted, p.cfg

	onB := readInBackground(accepted, 1)
	onA := readInBackground(dialed, 1)
	start := time.Now()
	ncA.Close() // a's process "dies": no fin, no more pings

	r := awaitStreamRead(t, onB, 10*time.Second)
	if !errors.Is(r.err, ErrConnReset) {
		t.Fatalf("b's Read = %v, want ErrConnReset (no responders)", r.err)
	}
	if took := r.at.Sub(start); took >= cfg.IdleTimeout {
		t.Fatalf("b noticed after %s, not before the idle timeout of %s", took, cfg.IdleTimeout)
	}
	if r := awaitStreamRead(t, onA, 10*time.Second); !errors.Is(r.err, ErrNATSClosed) {
		t.Fatalf("a's Read = %v, want ErrNATSClosed", r.err)
	}
	if _, err := a.Dial("b", time.Second); !errors.Is(err, ErrNodeUnreachable) {
		t.Fatalf("Dial on a closed NATS connection = %v, want ErrNodeUnreachable", err)
	}
}

// A peer that stops answering while something still takes its frames (a
// half-open connection the NATS server has not noticed yet) is caught by
// the keepalive idle check: the blocked Read ends with ErrPeerSilent.
func TestStreamPeerSilentEndsBlockedRead(t *testing.T) {
	p := startPeerPair(t, 400*time.Millisecond)
	ncA, dialed, accepted, cfg := p.ncA, p.dialed, p.accepted, p.cfg

	// A black hole on a's side of the connection: b's frames are taken
	// and never answered.
	hole := connectStreamNATS(t, p.ns)
	if _, err := hole.Subscribe(dialed.inbox, func(*nats.Msg) {}); err != nil {
		t.Fatal(err)
	}
	if err := hole.Flush(); err != nil {
		t.Fatal(err)
	}
	onB := readInBackground(accepted, 1)
	start := time.Now()
	ncA.Close()

	r := awaitStreamRead(t, onB, 10*time.Second)
	if !errors.Is(r.err, ErrPeerSilent) {
		t.Fatalf("b's Read = %v, want ErrPeerSilent", r.err)
	}
	// Not before the idle timeout, counted from a's last ping (at most a
	// keepalive interval before the close); silence is counted in ticks,
	// which a loaded host may delay, so the upper bound is loose.
	if took := r.at.Sub(start); took < cfg.IdleTimeout-cfg.KeepaliveInterval || took > cfg.IdleTimeout+5*time.Second {
		t.Fatalf("b noticed after %s with an idle timeout of %s", took, cfg.IdleTimeout)
	}
}

// Pings keep a connection with no traffic alive past the idle timeout.
func TestStreamKeepaliveKeepsIdleConnection(t *testing.T) {
	ns := startStreamNATS(t, 0)
	cfg := streamTestConfig("a")
	cfg.KeepaliveInterval = 50 * time.Millisecond
	cfg.IdleTimeout = 300 * time.Millisecond
	a, _ := startStreamLayer(t, ns, cfg)
	cfg.NodeID = "b"
	b, _ := startStreamLayer(t, ns, cfg)
	dialed, accepted := dialStreamPair(t, a, b)

	_ = accepted.SetReadDeadline(time.Now().Add(4 * cfg.IdleTimeout))
	if _, err := accepted.Read(make([]byte, 1)); !isNetTimeout(err) {
		t.Fatalf("idle Read = %v, want its own deadline, not a failure", err)
	}
	if _, err := dialed.Write([]byte("still here")); err != nil {
		t.Fatalf("Write after idling: %v", err)
	}
	_ = accepted.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := accepted.Read(make([]byte, 32)); n != 10 || err != nil {
		t.Fatalf("Read after idling = %d, %v", n, err)
	}
}

// Frames forged onto a connection's subject by someone else break the
// connection with a named error instead of corrupting the stream, and the
// peer learns of it through a reset.
func TestStreamForgedFramesBreakTheConnection(t *testing.T) {
	ns := startStreamNATS(t, 0)
	cfg := streamTestConfig("a")
	cfg.KeepaliveInterval = time.Hour // no pings: the next seq stays 1
	cfg.IdleTimeout = 2 * time.Hour
	cfg.Window = minWindow // so that a frame beyond it fits the max payload
	a, _ := startStreamLayer(t, ns, cfg)
	cfg.NodeID = "b"
	b, _ := startStreamLayer(t, ns, cfg)
	forger := connectStreamNATS(t, ns)

	ack := func(v uint64) []byte { return binary.BigEndian.AppendUint64(nil, v) }
	tests := []struct {
		name  string
		frame []byte
		want  error
	}{
		{"skipped sequence number", appendFrame(nil, frameData, 5, []byte("x")), ErrStreamGap},
		{"repeated sequence number", appendFrame(nil, frameData, 0, []byte("x")), ErrStreamGap},
		{"unknown kind", appendFrame(nil, frameKind(99), 1, nil), ErrBadFrame},
		{"empty data", appendFrame(nil, frameData, 1, nil), ErrBadFrame},
		{"data beyond the window", appendFrame(nil, frameData, 1, make([]byte, cfg.Window+1)), ErrBadFrame},
		{"ack of bytes never sent", appendFrame(nil, frameAck, 1, ack(1)), ErrBadFrame},
		{"ack of the wrong size", appendFrame(nil, frameAck, 1, []byte{1}), ErrBadFrame},
		{"reset", appendFrame(nil, frameRst, 1, []byte("forged")), ErrConnReset},
		{"out-of-band reset", appendFrame(nil, frameRst, 0, []byte("forged")), ErrConnReset},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dialed, accepted := dialStreamPair(t, a, b)
			onB := readInBackground(accepted, 1)
			onA := readInBackground(dialed, 1)
			// Garbage too short to be a frame is dropped without harm.
			if err := forger.Publish(accepted.inbox, []byte{1, 2}); err != nil {
				t.Fatal(err)
			}
			if err := forger.Publish(accepted.inbox, tt.frame); err != nil {
				t.Fatal(err)
			}
			if r := awaitStreamRead(t, onB, 5*time.Second); !errors.Is(r.err, tt.want) {
				t.Fatalf("Read on the forged-to side = %d, %v, want %v", r.n, r.err, tt.want)
			}
			if tt.want == ErrConnReset {
				// A forged reset breaks only the side it was sent to: a
				// conn does not answer a reset with one.
				_ = dialed.Close()
				if r := awaitStreamRead(t, onA, 5*time.Second); !errors.Is(r.err, net.ErrClosed) {
					t.Fatalf("Read on the other side = %d, %v, want net.ErrClosed after its Close", r.n, r.err)
				}
				return
			}
			if r := awaitStreamRead(t, onA, 5*time.Second); !errors.Is(r.err, ErrConnReset) {
				t.Fatalf("Read on the other side = %d, %v, want ErrConnReset", r.n, r.err)
			}
		})
	}
}

// A node that restarted does not know the connections of its previous life:
// it resets them at their first frame, so the dialer fails at once rather
// than at its deadline or idle timeout. (A keepalive sent while the node
// was away may have reset the connection already: NATS answered it with
// "no responders". Either way the connection ends with ErrConnReset.)
func TestStreamRestartedPeerResetsOldConnections(t *testing.T) {
	ns := startStreamNATS(t, 0)
	cfg := streamTestConfig("a")
	cfg.IdleTimeout = time.Hour
	a, _ := startStreamLayer(t, ns, cfg)
	cfg.NodeID = "b"
	b, ncB := startStreamLayer(t, ns, cfg)
	dialed, _ := dialStreamPair(t, a, b)

	ncB.Close() // b dies without closing its connections...
	pollUntil(t, 5*time.Second, "b's subscriptions to go", func() bool {
		_, err := a.Dial("b", time.Second)
		return errors.Is(err, ErrNodeUnreachable)
	})
	startStreamLayer(t, ns, cfg) // ...and comes back under the same id

	onA := readInBackground(dialed, 1)
	start := time.Now()
	if _, err := dialed.Write([]byte("hello?")); err != nil && !errors.Is(err, ErrConnReset) {
		t.Fatalf("Write: %v", err)
	}
	r := awaitStreamRead(t, onA, 5*time.Second)
	if !errors.Is(r.err, ErrConnReset) {
		t.Fatalf("Read = %v, want ErrConnReset", r.err)
	}
	t.Logf("reset after %s", r.at.Sub(start))
}

func TestStreamLayerClose(t *testing.T) {
	ns := startStreamNATS(t, 0)
	a, _ := startStreamLayer(t, ns, streamTestConfig("a"))
	b, _ := startStreamLayer(t, ns, streamTestConfig("b"))
	dialed, _ := dialStreamPair(t, a, b)

	accepting := make(chan error, 1)
	go func() {
		_, err := b.Accept()
		accepting <- err
	}()
	onA := readInBackground(dialed, 1)
	if err := b.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := b.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
	select {
	case err := <-accepting:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Accept = %v, want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Accept still blocked after Close")
	}
	if r := awaitStreamRead(t, onA, 5*time.Second); r.err != io.EOF {
		t.Fatalf("peer's Read = %v, want io.EOF", r.err)
	}
	if _, err := b.Dial("a", time.Second); !errors.Is(err, net.ErrClosed) {
		t.Fatalf("Dial after Close = %v, want net.ErrClosed", err)
	}
	if _, err := a.Dial(raft.ServerAddress("b"), time.Second); !errors.Is(err, ErrNodeUnreachable) {
		t.Fatalf("Dial to a closed layer = %v, want ErrNodeUnreachable", err)
	}
}
