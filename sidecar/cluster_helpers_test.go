package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/sidecar/protocol"
)

// testCluster is natlog nodes in one process on one embedded nats-server,
// each connected to it by URL as separate processes would be.
type testCluster struct {
	t       testing.TB
	url     string
	leafURL string // the server's leaf node listener
	base    string
	mu      sync.Mutex
	nodes   map[string]*Server
	cfgs    map[string]Config
	// tweak, if set, adjusts each new node's configuration.
	tweak func(*Config)
}

func newTestCluster(t testing.TB) *testCluster {
	t.Helper()
	// It also takes leaf node connections (sidecar mode).
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	leafPort := l.Addr().(*net.TCPAddr).Port
	l.Close()
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true,
		LeafNode: server.LeafNodeOpts{Host: "127.0.0.1", Port: leafPort}})
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	// The nodes' data dirs live under base, made before the cleanup
	// below is registered, so that the nodes stop before it is removed.
	tc := &testCluster{t: t, url: ns.ClientURL(), leafURL: fmt.Sprintf("nats-leaf://127.0.0.1:%d", leafPort),
		base: t.TempDir(), nodes: map[string]*Server{}, cfgs: map[string]Config{}}
	t.Cleanup(func() {
		for _, id := range tc.ids() {
			tc.stop(id)
		}
		ns.Shutdown()
		ns.WaitForShutdown()
	})
	return tc
}

// newThreeNodes starts a cluster of n1, n2 and n3 (bootstrap-expect 3).
func newThreeNodes(t testing.TB) *testCluster {
	t.Helper()
	tc := newTestCluster(t)
	for _, id := range []string{"n1", "n2", "n3"} {
		tc.start(id, 3)
	}
	return tc
}

// notNode returns n1, or n2 if id is n1: a node of a cluster of n1, n2, ...
// other than id.
func notNode(id string) string {
	if id == "n1" {
		return "n2"
	}
	return "n1"
}

// peer is member id as the leader's status shows it.
func (tc *testCluster) peer(id string) (protocol.Peer, bool) {
	for _, p := range tc.node(tc.leader()).cluster.status().Peers {
		if p.ID == id {
			return p, true
		}
	}
	return protocol.Peer{}, false
}

// start starts node id (fresh, or on its data dir again).
func (tc *testCluster) start(id string, expect int) *Server {
	tc.t.Helper()
	cfg, ok := tc.cfgs[id]
	if !ok {
		cfg = testConfig(tc.t)
		cfg.NodeID = id
		cfg.DataDir = filepath.Join(tc.base, id)
		cfg.NATSURL = tc.url
		cfg.NATSListen = ""
		cfg.HTTPListen = ""
		cfg.MaxReadWait = 5 * time.Second
		cfg.Cluster = FastClusterConfig()
		cfg.Cluster.Name = "test"
		cfg.Cluster.BootstrapExpect = expect
		cfg.Cluster.RaftLogLevel = "off"
		if tc.tweak != nil {
			tc.tweak(&cfg)
		}
		tc.cfgs[id] = cfg
	}
	s, err := Start(cfg)
	if err != nil {
		tc.t.Fatalf("start %s: %v", id, err)
	}
	tc.mu.Lock()
	tc.nodes[id] = s
	tc.mu.Unlock()
	return s
}

// stop shuts node id down (without leaving the cluster).
func (tc *testCluster) stop(id string) {
	if err := tc.shutdown(id); err != nil {
		tc.t.Errorf("shutdown %s: %v", id, err)
	}
}

// shutdown shuts node id down and returns what Shutdown said.
func (tc *testCluster) shutdown(id string) error {
	tc.mu.Lock()
	s := tc.nodes[id]
	delete(tc.nodes, id)
	tc.mu.Unlock()
	if s == nil {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	return s.Shutdown(ctx)
}

func (tc *testCluster) node(id string) *Server {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	return tc.nodes[id]
}

func (tc *testCluster) ids() []string {
	tc.mu.Lock()
	defer tc.mu.Unlock()
	var ids []string
	for id := range tc.nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// leader waits until the running nodes agree on a leader that is one of
// them, and returns its id.
func (tc *testCluster) leader() string {
	tc.t.Helper()
	var leader string
	eventually(tc.t, 20*time.Second, "a leader all nodes agree on", func() bool {
		leader = ""
		for _, id := range tc.ids() {
			st := tc.node(id).status()
			if st.Leader == "" || leader != "" && st.Leader != leader {
				return false
			}
			leader = st.Leader
		}
		return leader != "" && tc.node(leader) != nil && tc.node(leader).status().State == "leader"
	})
	return leader
}

// client connects to the cluster's NATS.
func (tc *testCluster) client() *nats.Conn {
	tc.t.Helper()
	nc, err := nats.Connect(tc.url, nats.Timeout(5*time.Second))
	if err != nil {
		tc.t.Fatal(err)
	}
	tc.t.Cleanup(nc.Close)
	return nc
}

// records returns the values of log name on node id, in offset order (nil
// if the log is being replaced: callers poll).
func (tc *testCluster) records(id, name string) []string {
	l := tc.node(id).cluster.fsm.Log(name)
	if l == nil {
		return nil
	}
	var out []string
	for off := l.LowestOffset(); off < l.NextOffset(); off++ {
		rec, err := l.Read(off)
		if errors.Is(err, logcore.ErrClosed) {
			return nil // replaced by a snapshot restore, or deleted: look again
		}
		if err != nil {
			tc.t.Fatalf("%s: read %s@%d: %v", id, name, off, err)
		}
		out = append(out, string(rec.Value))
	}
	return out
}

// converged waits until every running node holds want in log name.
func (tc *testCluster) converged(name string, want []string) {
	tc.t.Helper()
	eventually(tc.t, 20*time.Second, fmt.Sprintf("%d records of %s on every node", len(want), name), func() bool {
		for _, id := range tc.ids() {
			if !slices.Equal(tc.records(id, name), want) {
				return false
			}
		}
		return true
	})
}

// appendRetry appends value with msgID, retrying through elections (no
// responders, not leader, unavailable, timeouts) as a client must.
func appendRetry(t testing.TB, nc *nats.Conn, name, value, msgID string) (protocol.AppendReply, error) {
	deadline := time.Now().Add(30 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		m, err := nc.RequestMsg(&nats.Msg{Subject: "natlog.append." + name, Data: []byte(value),
			Header: nats.Header{protocol.HeaderMsgID: {msgID}}}, 2*time.Second)
		if err != nil {
			if !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, nats.ErrTimeout) {
				return protocol.AppendReply{}, err
			}
			last = err
			time.Sleep(10 * time.Millisecond)
			continue
		}
		if e := protocol.ReplyError(m.Header, m.Data); e != nil {
			if e.ErrCode != protocol.CodeNotLeader && e.ErrCode != protocol.CodeUnavailable {
				return protocol.AppendReply{}, e
			}
			last = e
			time.Sleep(10 * time.Millisecond)
			continue
		}
		var r protocol.AppendReply
		if err := json.Unmarshal(m.Data, &r); err != nil {
			return r, err
		}
		return r, nil
	}
	return protocol.AppendReply{}, fmt.Errorf("append %s: gave up: %v", msgID, last)
}

// requestRetry sends a request until it is answered other than "no
// responders", a timeout, not leader or unavailable (an election), as a
// client must; the request should carry a Natlog-Msg-Id if it appends.
func requestRetry(t testing.TB, nc *nats.Conn, subject string, data []byte, hdr nats.Header) *nats.Msg {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		m, err := nc.RequestMsg(&nats.Msg{Subject: subject, Data: data, Header: hdr}, 2*time.Second)
		retry := errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout)
		if err == nil {
			e := protocol.ReplyError(m.Header, m.Data)
			retry = e != nil && (e.ErrCode == protocol.CodeNotLeader || e.ErrCode == protocol.CodeUnavailable)
		} else if !retry {
			t.Fatalf("request %s: %v", subject, err)
		}
		if !retry {
			return m
		}
		if time.Now().After(deadline) {
			t.Fatalf("request %s: still refused after 30 s: %v", subject, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// appendN appends values prefix-0 .. prefix-(n-1) one by one and returns
// them.
func appendN(t testing.TB, nc *nats.Conn, name, prefix string, n int) []string {
	t.Helper()
	var vals []string
	for i := range n {
		v := prefix + "-" + strconv.Itoa(i)
		if _, err := appendRetry(t, nc, name, v, v); err != nil {
			t.Fatal(err)
		}
		vals = append(vals, v)
	}
	return vals
}
