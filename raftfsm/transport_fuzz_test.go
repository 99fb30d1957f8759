package raftfsm

import (
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// pipeLayer is a raft.StreamLayer whose Accept returns the connections a
// test hands it.
type pipeLayer struct {
	conns  chan net.Conn
	closed chan struct{}
}

type pipeAddr struct{}

func (pipeAddr) Network() string { return "pipe" }
func (pipeAddr) String() string  { return "pipe" }

func (p *pipeLayer) Accept() (net.Conn, error) {
	select {
	case c := <-p.conns:
		return c, nil
	case <-p.closed:
		return nil, errors.New("closed")
	}
}

func (p *pipeLayer) Close() error   { close(p.closed); return nil }
func (p *pipeLayer) Addr() net.Addr { return pipeAddr{} }
func (p *pipeLayer) Dial(raft.ServerAddress, time.Duration) (net.Conn, error) {
	return nil, errors.New("pipeLayer does not dial")
}

// FuzzTransportRPC feeds arbitrary bytes to hashicorp/raft's network
// transport as an incoming connection's stream: what a forged or damaged
// message on a node's Raft subjects delivers. The transport (its msgpack
// decoding) must not panic or exhaust memory; a panic in its connection
// goroutine would kill the node. (The Raft subjects are fenced by NATS
// permissions in a deployment; this is the defence in depth.)
func FuzzTransportRPC(f *testing.F) {
	f.Add([]byte{0})                                       // rpcAppendEntries, then nothing
	f.Add([]byte{0, 0x80})                                 // an empty map
	f.Add([]byte{1, 0x81, 0xa4, 'T', 'e', 'r', 'm', 0x05}) // rpcRequestVote {Term: 5}
	f.Add([]byte{2, 0xdd, 0xff, 0xff, 0xff, 0xff})         // an array claiming 4 billion elements
	f.Add([]byte{0, 0xdb, 0x7f, 0xff, 0xff, 0xff})         // a string claiming 2 GiB
	f.Fuzz(func(t *testing.T, b []byte) {
		layer := &pipeLayer{conns: make(chan net.Conn, 1), closed: make(chan struct{})}
		trans := raft.NewNetworkTransportWithConfig(&raft.NetworkTransportConfig{
			Stream: layer, MaxPool: 1, Timeout: time.Second, Logger: discardLogger()})
		done := make(chan struct{})
		consumed := make(chan struct{})
		go func() {
			defer close(consumed)
			for {
				select {
				case rpc := <-trans.Consumer():
					rpc.Respond(nil, errors.New("fuzz"))
				case <-done:
					return
				}
			}
		}()
		server, client := net.Pipe()
		layer.conns <- server
		drained := make(chan struct{})
		go func() { io.Copy(io.Discard, client); close(drained) }()
		client.SetWriteDeadline(time.Now().Add(2 * time.Second))
		client.Write(b)
		client.Close()
		<-drained
		close(done)
		<-consumed
		trans.Close()
	})
}
