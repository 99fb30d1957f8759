package sidecar

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
)

func TestRaftQuietLowersNormalErrors(t *testing.T) {
	var buf bytes.Buffer
	l := hclog.Logger(raftQuiet{hclog.New(&hclog.LoggerOptions{Name: "raft n1", Level: hclog.Info, Output: &buf}), nil})
	l.Error("peer has newer term, stopping replication", "peer", "n2")
	l.Named("net").Error("failed to decode incoming command", "error", errors.New("use of closed network connection"))
	l.With("x", 1).Error("failed to flush response", "error", errors.New("raftfsm: raft connection closed by peer"))
	l.Error("failed to decode incoming command", "error", errors.New("msgpack decode error"))
	l.Log(hclog.Error, "failed to appendEntries to", "peer", "n3", "error", errors.New("timeout"))
	l.Warn("no known peers, aborting election")
	l.Warn("failed to get previous log", "previous-index", 1, "last-index", 0, "error", errors.New("log not found"))
	l.Warn("failed to contact", "server-id", "n3")
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 6 {
		t.Fatalf("logged %d lines, want 6 (closed connections at debug):\n%s", len(lines), buf.String())
	}
	for i, want := range []string{
		"[INFO]  raft n1: peer has newer term",
		"[ERROR] raft n1: failed to decode incoming command: error=\"msgpack decode error\"",
		"[ERROR] raft n1: failed to appendEntries to",
		"[INFO]  raft n1: no known peers",
		"[INFO]  raft n1: failed to get previous log",
		"[WARN]  raft n1: failed to contact",
	} {
		if !strings.Contains(lines[i], want) {
			t.Errorf("line %d = %q, want it to contain %q", i, lines[i], want)
		}
	}
}

func TestRaftQuietDropsRepeatedPeerErrors(t *testing.T) {
	var buf bytes.Buffer
	rep := newRepeats(time.Hour)
	l := hclog.Logger(raftQuiet{hclog.New(&hclog.LoggerOptions{Name: "raft n1", Level: hclog.Info, Output: &buf}), rep})
	unreachable := errors.New("raftfsm: raft node unreachable over NATS")
	for range 5 {
		l.Error("failed to heartbeat to", "peer", "n3", "backoff time", "10ms", "error", unreachable)
		l.Named("x").Error("failed to heartbeat to", "peer", "n2", "error", unreachable)
	}
	l.Error("failed to decode incoming command", "error", errors.New("bad frame"))
	l.Error("failed to decode incoming command", "error", errors.New("bad frame"))
	full := errors.New("unable to store logs within log store: no space left on device")
	for range 5 { // a follower whose disk is full, at every entry the leader sends
		l.Error("failed to append to logs", "error", full)
	}
	lines := strings.Split(strings.TrimSpace(buf.String()), "\n")
	if len(lines) != 5 {
		t.Fatalf("logged %d lines, want one per peer, both others and one full disk:\n%s", len(lines), buf.String())
	}
	// Once the interval has passed, the next one says how many were dropped.
	rep.mu.Lock()
	for k := range rep.last {
		rep.last[k] = time.Now().Add(-2 * time.Hour)
	}
	rep.mu.Unlock()
	buf.Reset()
	l.Error("failed to heartbeat to", "peer", "n3", "error", unreachable)
	if !strings.Contains(buf.String(), "repeats_dropped=4") {
		t.Fatalf("after the interval: %q, want repeats_dropped=4", buf.String())
	}
}
