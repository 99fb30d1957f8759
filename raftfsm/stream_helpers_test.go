package raftfsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
)

// startStreamNATS starts a real nats-server on a random loopback port, shut down
// when the test ends. maxPayload 0 keeps the server's default (1 MB).
func startStreamNATS(tb testing.TB, maxPayload int32) *server.Server {
	tb.Helper()
	opts := &server.Options{
		Host:       "127.0.0.1",
		Port:       server.RANDOM_PORT,
		NoLog:      true,
		NoSigs:     true,
		MaxPayload: maxPayload,
	}
	ns, err := server.NewServer(opts)
	if err != nil {
		tb.Fatalf("nats-server: %v", err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		ns.Shutdown()
		tb.Fatal("nats-server not ready")
	}
	tb.Cleanup(func() {
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return ns
}

// connectStreamNATS opens a NATS connection closed when the test ends.
func connectStreamNATS(tb testing.TB, ns *server.Server) *nats.Conn {
	tb.Helper()
	nc, err := nats.Connect(ns.ClientURL(), nats.Timeout(5*time.Second))
	if err != nil {
		tb.Fatalf("connect: %v", err)
	}
	tb.Cleanup(nc.Close)
	return nc
}

// streamTestConfig is the default configuration with timings short
// enough for tests and a cluster name of its own.
func streamTestConfig(nodeID string) TransportConfig {
	cfg := DefaultTransportConfig(nodeID)
	cfg.Cluster = "test"
	cfg.KeepaliveInterval = 100 * time.Millisecond
	cfg.IdleTimeout = 2 * time.Second
	cfg.Timeout = 5 * time.Second
	return cfg
}

// startStreamLayer starts a stream layer on its own NATS connection, both closed
// when the test ends.
func startStreamLayer(tb testing.TB, ns *server.Server, cfg TransportConfig) (*NATSStreamLayer, *nats.Conn) {
	tb.Helper()
	nc := connectStreamNATS(tb, ns)
	l, err := NewNATSStreamLayer(nc, cfg)
	if err != nil {
		tb.Fatalf("NewNATSStreamLayer(%s): %v", cfg.NodeID, err)
	}
	tb.Cleanup(func() { _ = l.Close() })
	return l, nc
}

// dialStreamPair dials from a to b and returns both ends (b's as Accept gave it).
func dialStreamPair(tb testing.TB, a, b *NATSStreamLayer) (dialed, accepted *streamConn) {
	tb.Helper()
	type result struct {
		c   net.Conn
		err error
	}
	ch := make(chan result, 1)
	go func() {
		c, err := b.Accept()
		ch <- result{c, err}
	}()
	c, err := a.Dial(raft.ServerAddress(b.Addr().String()), 5*time.Second)
	if err != nil {
		tb.Fatalf("Dial %s: %v", b.Addr(), err)
	}
	r := <-ch
	if r.err != nil {
		tb.Fatalf("Accept: %v", r.err)
	}
	tb.Cleanup(func() { _ = c.Close(); _ = r.c.Close() })
	return c.(*streamConn), r.c.(*streamConn)
}

// pollUntil polls cond until it holds or timeout passes.
func pollUntil(tb testing.TB, timeout time.Duration, what string, cond func() bool) {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			tb.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		time.Sleep(2 * time.Millisecond)
	}
}

// streamRead is the outcome of a Read run in the background.
type streamRead struct {
	n   int
	err error
	at  time.Time
}

// readInBackground starts one Read of up to size bytes.
func readInBackground(c net.Conn, size int) <-chan streamRead {
	ch := make(chan streamRead, 1)
	go func() {
		n, err := c.Read(make([]byte, size))
		ch <- streamRead{n, err, time.Now()}
	}()
	return ch
}

// awaitStreamRead waits for a background Read, failing the test after timeout.
func awaitStreamRead(tb testing.TB, ch <-chan streamRead, timeout time.Duration) streamRead {
	tb.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(timeout):
		tb.Fatalf("Read still blocked after %s", timeout)
		return streamRead{}
	}
}

// isNetTimeout reports whether err is a deadline error as net.Conn users test it.
func isNetTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// quietRaftLogger is a logger for raft that prints nothing.
func quietRaftLogger() hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Output: io.Discard, Level: hclog.Off})
}

// recordingFSM records every distinct command in the order it first
// applied; a command applied again (a client retry after an indefinite
// ErrLeadershipLost) is skipped. Its snapshot is all of them.
type recordingFSM struct {
	mu       sync.Mutex
	entries  [][]byte
	seen     map[string]bool
	restores int
}

func (f *recordingFSM) Apply(l *raft.Log) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.seen[string(l.Data)] {
		return false
	}
	if f.seen == nil {
		f.seen = make(map[string]bool)
	}
	f.seen[string(l.Data)] = true
	f.entries = append(f.entries, bytes.Clone(l.Data))
	return true
}

func (f *recordingFSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return &recordingSnapshot{entries: f.entries[:len(f.entries):len(f.entries)]}, nil
}

func (f *recordingFSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	data, err := io.ReadAll(rc)
	if err != nil {
		return err
	}
	var entries [][]byte
	for len(data) > 0 {
		n, k := binary.Uvarint(data)
		if k <= 0 || uint64(len(data)-k) < n {
			return fmt.Errorf("corrupt snapshot at %d entries", len(entries))
		}
		entries = append(entries, data[k:k+int(n)])
		data = data[k+int(n):]
	}
	seen := make(map[string]bool, len(entries))
	for _, e := range entries {
		seen[string(e)] = true
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	f.entries, f.seen = entries, seen
	f.restores++
	return nil
}

// state returns the FSM's entries and how often it restored a snapshot.
func (f *recordingFSM) state() (entries [][]byte, restores int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.entries, f.restores
}

type recordingSnapshot struct{ entries [][]byte }

func (s *recordingSnapshot) Persist(sink raft.SnapshotSink) error {
	var buf []byte
	for _, e := range s.entries {
		buf = binary.AppendUvarint(buf[:0], uint64(len(e)))
		buf = append(buf, e...)
		if _, err := sink.Write(buf); err != nil {
			_ = sink.Cancel()
			return err
		}
	}
	return sink.Close()
}

func (s *recordingSnapshot) Release() {}

// transportNode is one Raft server of an in-process cluster.
type transportNode struct {
	id    raft.ServerID
	addr  raft.ServerAddress
	nc    *nats.Conn // nil on the TCP transport
	raft  *raft.Raft
	fsm   *recordingFSM
	logs  *raft.InmemStore
	trans raft.Transport
}

// fastRaftConfig is raft's configuration with the short timeouts tests need
// under -race on two cores.
func fastRaftConfig(id raft.ServerID) *raft.Config {
	c := raft.DefaultConfig()
	c.LocalID = id
	c.HeartbeatTimeout = 50 * time.Millisecond
	c.ElectionTimeout = 50 * time.Millisecond
	c.LeaderLeaseTimeout = 50 * time.Millisecond
	c.CommitTimeout = 5 * time.Millisecond
	c.Logger = quietRaftLogger()
	return c
}

// startTransportNode starts a Raft server with in-memory stores and the given
// transport; it shuts down when the test ends (before its NATS connection
// closes, as cleanups run last-in first-out).
func startTransportNode(tb testing.TB, cfg *raft.Config, trans raft.Transport, nc *nats.Conn) *transportNode {
	tb.Helper()
	store := raft.NewInmemStore()
	n := &transportNode{id: cfg.LocalID, addr: trans.LocalAddr(), nc: nc, fsm: &recordingFSM{}, logs: store, trans: trans}
	r, err := raft.NewRaft(cfg, n.fsm, store, store, raft.NewInmemSnapshotStore(), trans)
	if err != nil {
		tb.Fatalf("NewRaft %s: %v", cfg.LocalID, err)
	}
	n.raft = r
	tb.Cleanup(func() { _ = r.Shutdown().Error() })
	return n
}

// startNATSTransportNode starts a Raft server on the NATS transport, with a NATS
// connection of its own.
func startNATSTransportNode(tb testing.TB, ns *server.Server, id string, tweak func(*raft.Config)) *transportNode {
	tb.Helper()
	nc := connectStreamNATS(tb, ns)
	trans, err := NewNATSTransport(nc, streamTestConfig(id))
	if err != nil {
		tb.Fatalf("NewNATSTransport %s: %v", id, err)
	}
	cfg := fastRaftConfig(raft.ServerID(id))
	if tweak != nil {
		tweak(cfg)
	}
	return startTransportNode(tb, cfg, trans, nc)
}

// bootstrapTransportNodes makes nodes[0] bootstrapTransportNodes a cluster of all nodes as voters.
func bootstrapTransportNodes(tb testing.TB, nodes ...*transportNode) {
	tb.Helper()
	var servers []raft.Server
	for _, n := range nodes {
		servers = append(servers, raft.Server{ID: n.id, Address: n.addr})
	}
	if err := nodes[0].raft.BootstrapCluster(raft.Configuration{Servers: servers}).Error(); err != nil {
		tb.Fatalf("bootstrapTransportNodes: %v", err)
	}
}

// waitTransportLeader waits until exactly one of nodes leads and returns it.
func waitTransportLeader(tb testing.TB, timeout time.Duration, nodes ...*transportNode) *transportNode {
	tb.Helper()
	var leader *transportNode
	pollUntil(tb, timeout, "a single leader", func() bool {
		leader = nil
		for _, n := range nodes {
			if n.raft.State() == raft.Leader {
				if leader != nil {
					return false
				}
				leader = n
			}
		}
		return leader != nil
	})
	return leader
}
