package raftfsm

import (
	"bytes"
	"sync"
	"testing"
	"time"
)

func TestStreamFrameRoundTrip(t *testing.T) {
	tests := []struct {
		name    string
		kind    frameKind
		seq     uint64
		payload []byte
	}{
		{"data", frameData, 1, []byte("hello")},
		{"ack", frameAck, 1 << 40, []byte{0, 0, 0, 0, 0, 0, 1, 0}},
		{"ping without payload", framePing, 7, nil},
		{"largest sequence", frameFin, ^uint64(0), nil},
	}
	for _, tt := range tests {
		kind, seq, payload, ok := parseFrame(appendFrame(nil, tt.kind, tt.seq, tt.payload))
		if !ok || kind != tt.kind || seq != tt.seq || !bytes.Equal(payload, tt.payload) {
			t.Errorf("%s: parsed %v %d %q %v", tt.name, kind, seq, payload, ok)
		}
	}
	for n := range frameHeader {
		if _, _, _, ok := parseFrame(make([]byte, n)); ok {
			t.Errorf("a %d-byte message parsed as a frame", n)
		}
	}
}

func TestStreamDeadlineTimer(t *testing.T) {
	t.Run("fires and can be moved back", func(t *testing.T) {
		d := newDeadline()
		d.set(time.Now().Add(10 * time.Millisecond))
		select {
		case <-d.done():
		case <-time.After(5 * time.Second):
			t.Fatal("deadline never passed")
		}
		d.set(time.Now().Add(time.Hour))
		if isClosed(d.done()) {
			t.Fatal("deadline moved to the future still reads as passed")
		}
		d.set(time.Time{})
		if isClosed(d.done()) {
			t.Fatal("cleared deadline reads as passed")
		}
	})

	t.Run("a superseded timer does nothing", func(t *testing.T) {
		d := newDeadline()
		d.set(time.Now().Add(5 * time.Millisecond))
		d.set(time.Now().Add(time.Hour))
		select {
		case <-d.done():
			t.Fatal("the first timer closed the second deadline's channel")
		case <-time.After(50 * time.Millisecond):
		}
	})

	// Raft sets deadlines on connections that another goroutine closed;
	// that must neither block nor panic.
	t.Run("set after stop, from many goroutines", func(t *testing.T) {
		d := newDeadline()
		d.set(time.Now().Add(time.Millisecond))
		d.stop()
		var wg sync.WaitGroup
		for i := range 8 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for j := range 200 {
					switch (i + j) % 4 {
					case 0:
						d.set(time.Now().Add(time.Duration(j%3) * time.Millisecond))
					case 1:
						d.set(time.Time{})
					case 2:
						d.stop()
					case 3:
						d.set(time.Now().Add(-time.Second))
					}
				}
			}()
		}
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatal("set/stop blocked")
		}
	})
}
