// The Raft transport over NATS.
//
// hashicorp/raft's NetworkTransport speaks its RPCs over any
// raft.StreamLayer: a listener that accepts byte streams and a dialer that
// opens them. NATSStreamLayer is such a layer built on a *nats.Conn alone, so
// a natlog node needs no listening port of its own for Raft: its Raft address
// is its node id, and the subjects below carry the bytes.
//
// Subjects (P is TransportConfig.Prefix, C the cluster, N a node id):
//
//	P._raft.C.N.accept      connect requests to node N (request-reply, JSON)
//	P._raft.C.N.conn.<id>   the byte stream of one connection towards N
//
// A connection is a pair of such subjects, one per direction; each side picks
// its own <id> (a NUID) and learns the other's in the handshake. Every message
// on a connection subject is a frame (stream_frame.go): a kind, a sequence
// number and a payload. Data is cut into frames below the NATS max payload;
// the receiver checks the sequence and breaks the connection on a gap (NATS
// core may drop messages, e.g. across a reconnect) rather than deliver a
// corrupt stream. A credit window bounds what a sender may have unread at the
// receiver, so a snapshot stream cannot flood a slow follower's memory and
// write deadlines mean what they say. Keepalive pings and an idle timeout end
// connections whose peer vanished (its process or NATS connection gone), which
// raft alone would not notice on the accepting side, where it reads without a
// deadline.
//
// Everything lives under P._raft so that the NATS permissions of ordinary
// clients can deny it (a client that can publish there can forge Raft RPCs).

package raftfsm

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"
	"github.com/nats-io/nats.go"
)

// Errors of the NATS transport. A connection that fails with one of them is
// dead: every later Read and Write on it returns the same error. Nothing can
// be concluded about bytes written before the failure (like TCP: they may or
// may not have reached the peer); raft treats such an RPC as failed and
// retries on a new connection.
var (
	// ErrNodeUnreachable: Dial found no node listening under the address (NATS
	// "no responders"), or the NATS connection is not connected. Nothing was
	// sent to the peer.
	ErrNodeUnreachable = errors.New("raftfsm: raft node unreachable over NATS")

	// ErrDialTimeout: the peer did not answer the connect request within the
	// dial timeout. It may have created its side of the connection; its idle
	// timeout will end it.
	ErrDialTimeout = errors.New("raftfsm: raft connect request timed out")

	// ErrDialRefused: the peer answered the connect request with an error
	// (closed, backlog full, wrong cluster or protocol version).
	ErrDialRefused = errors.New("raftfsm: raft connect request refused")

	// ErrStreamGap: a frame of the connection was lost or reordered (a
	// sequence number was skipped); the stream after it cannot be trusted.
	ErrStreamGap = errors.New("raftfsm: raft stream lost a message")

	// ErrPeerSilent: nothing, not even a keepalive, arrived from the peer for
	// TransportConfig.IdleTimeout; the peer or its NATS connection is gone.
	ErrPeerSilent = errors.New("raftfsm: raft peer silent beyond the idle timeout")

	// ErrPeerClosed: Write on a connection whose peer has closed it.
	ErrPeerClosed = errors.New("raftfsm: raft connection closed by peer")

	// ErrConnReset: the peer reset the connection (it broke its side, or it
	// does not know the connection, e.g. after a restart).
	ErrConnReset = errors.New("raftfsm: raft connection reset by peer")

	// ErrBadFrame: a malformed frame, or a peer that broke the protocol (e.g.
	// sent beyond its credit window).
	ErrBadFrame = errors.New("raftfsm: malformed raft stream frame")

	// ErrNATSClosed: the NATS connection under the layer was closed.
	ErrNATSClosed = errors.New("raftfsm: NATS connection closed")

	// ErrNodeIDInUse: NewNATSStreamLayer found another process answering on
	// this node's accept subject. Two processes with one Raft id could vote
	// twice in a term; the layer refuses to start rather than risk it.
	ErrNodeIDInUse = errors.New("raftfsm: raft node id already in use on this NATS system")
)

// TransportConfig configures NewNATSTransport and NewNATSStreamLayer.
// DefaultTransportConfig gives the safe defaults; Validate says what is wrong.
type TransportConfig struct {
	// NodeID is this node's Raft address (raft.ServerAddress) and the token
	// naming its subjects. One NATS subject token: not empty, no '.', '*',
	// '>' or white space. Peers dial it by this name.
	NodeID string

	// Prefix is the first subject token(s) of the internal subjects
	// ("natlog" gives natlog._raft...).
	Prefix string

	// Cluster names the Raft group, so that several clusters can share one
	// NATS system. One subject token.
	Cluster string

	// DialTimeout caps how long Dial waits for the connect reply (raft asks
	// for its own, larger, I/O timeout; the smaller one wins). A node that
	// is not subscribed at all fails at once with ErrNodeUnreachable.
	DialTimeout time.Duration

	// KeepaliveInterval: a connection that has sent nothing for this long
	// sends a ping.
	KeepaliveInterval time.Duration

	// IdleTimeout: a connection that has received nothing (data, ack or
	// ping) for this long fails with ErrPeerSilent. At least twice
	// KeepaliveInterval.
	IdleTimeout time.Duration

	// Window is the credit window per direction, in bytes: the most a sender
	// may have sent that the receiving application has not yet read. It
	// bounds the memory a connection buffers. At least 64 KiB.
	Window int

	// MaxChunk caps the data bytes per NATS message; 0 means as much as the
	// connection's max payload allows (nats.Conn.MaxPayload less the frame
	// header). The effective chunk is also at most Window/2.
	MaxChunk int

	// AcceptBacklog is how many accepted connections may wait for Accept;
	// connect requests beyond it are refused (ErrDialRefused at the dialer).
	AcceptBacklog int

	// MaxPool is raft.NetworkTransport's pool of idle connections per peer.
	MaxPool int

	// Timeout is raft.NetworkTransport's I/O deadline per RPC (scaled up for
	// InstallSnapshot by the snapshot size).
	Timeout time.Duration

	// Logger receives the transport's events; a discarding logger if nil.
	Logger hclog.Logger
}

// DefaultTransportConfig returns the defaults for node nodeID: prefix
// "natlog", cluster "natlog", dial timeout 2 s, keepalive 1 s, idle timeout
// 5 s, window 4 MiB, chunks as large as the NATS max payload allows, backlog
// 64, raft pool 3 and raft I/O timeout 10 s.
func DefaultTransportConfig(nodeID string) TransportConfig {
	return TransportConfig{
		NodeID:            nodeID,
		Prefix:            "natlog",
		Cluster:           "natlog",
		DialTimeout:       2 * time.Second,
		KeepaliveInterval: time.Second,
		IdleTimeout:       5 * time.Second,
		Window:            4 << 20,
		AcceptBacklog:     64,
		MaxPool:           3,
		Timeout:           10 * time.Second,
	}
}

// minWindow is the smallest credit window Validate accepts.
const minWindow = 64 << 10

// Validate reports the first setting that cannot work.
func (c TransportConfig) Validate() error {
	if err := checkToken("node id", c.NodeID); err != nil {
		return err
	}
	if err := checkToken("cluster", c.Cluster); err != nil {
		return err
	}
	if c.Prefix == "" {
		return errors.New("raftfsm: transport prefix is empty")
	}
	for _, tok := range strings.Split(c.Prefix, ".") {
		if err := checkToken("prefix", tok); err != nil {
			return err
		}
	}
	switch {
	case c.DialTimeout <= 0:
		return fmt.Errorf("raftfsm: dial timeout %s must be positive", c.DialTimeout)
	case c.KeepaliveInterval <= 0:
		return fmt.Errorf("raftfsm: keepalive interval %s must be positive", c.KeepaliveInterval)
	case c.IdleTimeout < 2*c.KeepaliveInterval:
		return fmt.Errorf("raftfsm: idle timeout %s must be at least twice the keepalive interval %s", c.IdleTimeout, c.KeepaliveInterval)
	case c.Window < minWindow:
		return fmt.Errorf("raftfsm: window %d below the minimum %d", c.Window, minWindow)
	case c.MaxChunk < 0:
		return fmt.Errorf("raftfsm: max chunk %d is negative", c.MaxChunk)
	case c.AcceptBacklog <= 0:
		return fmt.Errorf("raftfsm: accept backlog %d must be positive", c.AcceptBacklog)
	case c.MaxPool < 0:
		return fmt.Errorf("raftfsm: max pool %d is negative", c.MaxPool)
	case c.Timeout < 0:
		return fmt.Errorf("raftfsm: timeout %s is negative", c.Timeout)
	}
	return nil
}

// checkToken reports whether s can stand as one NATS subject token.
func checkToken(what, s string) error {
	if s == "" {
		return fmt.Errorf("raftfsm: %s is empty", what)
	}
	if strings.ContainsAny(s, ".*> \t\r\n") {
		return fmt.Errorf("raftfsm: %s %q is not a NATS subject token (no '.', '*', '>' or white space)", what, s)
	}
	return nil
}

// NATSTransport is a raft.NetworkTransport whose connections run over
// NATS (NewNATSTransport), without pipelined replication.
//
// hashicorp/raft v1.8.0's pipeline can deadlock: when its decoding
// goroutine stops (the follower answered a newer term, or a read failed)
// while the pipeline holds the most RPCs in flight it allows, the
// replication goroutine blocks for good handing it the next one, and
// raft.Shutdown, which waits for it, never returns (seen after repeated
// leadership transfers: a node's shutdown hung the test binary). Without
// a pipeline, Raft replicates to each follower one AppendEntries RPC at a
// time, each carrying every entry ready (up to MaxAppendEntries).
type NATSTransport struct {
	*raft.NetworkTransport
}

// AppendEntriesPipeline reports that pipelining is not supported, so Raft
// replicates without it.
func (t *NATSTransport) AppendEntriesPipeline(raft.ServerID, raft.ServerAddress) (raft.AppendPipeline, error) {
	return nil, raft.ErrPipelineReplicationNotSupported
}

// NewNATSTransport returns a NATSTransport whose connections run over nc
// through a NATSStreamLayer. nc stays the caller's: the transport never
// closes it, and the caller closes it only after closing the transport.
// Give Raft a NATS connection of its own, so that client traffic cannot
// delay heartbeats. The node's Raft address is cfg.NodeID.
//
// Closing the transport (raft.Shutdown does) closes the stream layer and
// every connection it holds.
func NewNATSTransport(nc *nats.Conn, cfg TransportConfig) (*NATSTransport, error) {
	layer, err := NewNATSStreamLayer(nc, cfg)
	if err != nil {
		return nil, err
	}
	return &NATSTransport{raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
		Stream:  layer,
		MaxPool: cfg.MaxPool,
		Timeout: cfg.Timeout,
		Logger:  layer.logger,
	})}, nil
}

// discardLogger is the logger of a transport configured without one.
func discardLogger() hclog.Logger {
	return hclog.New(&hclog.LoggerOptions{Name: "raft-nats", Output: io.Discard, Level: hclog.Off})
}
