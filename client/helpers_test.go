package client_test

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/client"
	"github.com/natlog/natlog/sidecar"
)

// cluster is real natlog nodes in this process on one real nats-server,
// each connected to it by URL as separate processes would be.
type cluster struct {
	t     testing.TB
	url   string
	base  string
	mu    sync.Mutex
	nodes map[string]*sidecar.Server
	cfgs  map[string]sidecar.Config
	// tweak, if set, adjusts each new node's configuration.
	tweak func(*sidecar.Config)
}

func newNATS(t testing.TB) string {
	t.Helper()
	return startNATS(t, &server.Options{}).ClientURL()
}

// startNATS starts an embedded nats-server with opts (users, say) on a
// random loopback port, quiet, shut down when the test ends.
func startNATS(t testing.TB, opts *server.Options) *server.Server {
	t.Helper()
	opts.Host, opts.Port, opts.NoLog, opts.NoSigs = "127.0.0.1", server.RANDOM_PORT, true, true
	ns, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats-server not ready")
	}
	t.Cleanup(func() { ns.Shutdown(); ns.WaitForShutdown() })
	return ns
}

// newCluster starts n nodes (n1..nn); n == 0 starts one standalone node.
func newCluster(t testing.TB, n int, tweak ...func(*sidecar.Config)) *cluster {
	t.Helper()
	url := newNATS(t)
	c := &cluster{t: t, url: url, base: t.TempDir(), nodes: map[string]*sidecar.Server{}, cfgs: map[string]sidecar.Config{}}
	if len(tweak) > 0 {
		c.tweak = tweak[0]
	}
	t.Cleanup(func() {
		for _, id := range c.ids() {
			c.stop(id)
		}
	})
	if n == 0 {
		c.start("n1", -1)
		return c
	}
	for i := 1; i <= n; i++ {
		c.start("n"+itoa(i), n)
	}
	return c
}

func itoa(i int) string { return string(rune('0' + i)) }

// start starts node id; expect < 0 makes a standalone node.
func (c *cluster) start(id string, expect int) *sidecar.Server {
	c.t.Helper()
	cfg, ok := c.cfgs[id]
	if !ok {
		cfg = sidecar.DefaultConfig()
		cfg.NodeID = id
		cfg.DataDir = filepath.Join(c.base, id)
		cfg.NATSURL = c.url
		cfg.NATSListen = ""
		cfg.HTTPListen = ""
		cfg.MaxReadWait = 5 * time.Second
		cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
		cfg.Log.MaxIndexBytes = 12 * 4096
		cfg.Version = "0.0.1-test"
		if expect >= 0 {
			cfg.Cluster = sidecar.FastClusterConfig()
			cfg.Cluster.Name = "test"
			cfg.Cluster.BootstrapExpect = expect
			cfg.Cluster.RaftLogLevel = "off"
		}
		if c.tweak != nil {
			c.tweak(&cfg)
		}
		c.cfgs[id] = cfg
	}
	s, err := sidecar.Start(cfg)
	if err != nil {
		c.t.Fatalf("start %s: %v", id, err)
	}
	c.mu.Lock()
	c.nodes[id] = s
	c.mu.Unlock()
	return s
}

// stop shuts node id down without leaving the cluster, as a crash would
// (its Raft state stays; it comes back as the same member).
func (c *cluster) stop(id string) {
	c.mu.Lock()
	s := c.nodes[id]
	delete(c.nodes, id)
	c.mu.Unlock()
	if s == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		c.t.Errorf("shutdown %s: %v", id, err)
	}
}

func (c *cluster) ids() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	var ids []string
	for id := range c.nodes {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// leader waits until every running node names the same running leader.
func (c *cluster) leader(cl *client.Client) string {
	c.t.Helper()
	var leader string
	eventually(c.t, 30*time.Second, "a leader every node agrees on", func() bool {
		leader = ""
		for _, id := range c.ids() {
			ctx, cancel := context.WithTimeout(context.Background(), time.Second)
			st, err := cl.StatusOf(ctx, id)
			cancel()
			if err != nil || st.Leader == "" || leader != "" && st.Leader != leader {
				return false
			}
			leader = st.Leader
		}
		return leader != "" && slices.Contains(c.ids(), leader)
	})
	return leader
}

func (c *cluster) conn() *nats.Conn {
	c.t.Helper()
	return c.connAt(c.url)
}

// connAt connects to the NATS server at url (a cluster whose nodes are on
// servers of their own).
func (c *cluster) connAt(url string) *nats.Conn {
	c.t.Helper()
	nc, err := nats.Connect(url, nats.Timeout(5*time.Second))
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(nc.Close)
	return nc
}

func (c *cluster) client(opts ...client.Option) *client.Client {
	c.t.Helper()
	return c.clientAt(c.url, opts...)
}

// clientAt is a client on the NATS server at url.
func (c *cluster) clientAt(url string, opts ...client.Option) *client.Client {
	c.t.Helper()
	cl, err := client.Connect(c.connAt(url), append([]client.Option{client.WithRefreshInterval(200 * time.Millisecond)}, opts...)...)
	if err != nil {
		c.t.Fatal(err)
	}
	c.t.Cleanup(func() { cl.Close() })
	return cl
}

// eventually polls cond until it holds or d passes.
func eventually(t testing.TB, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %v waiting for %s", d, what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func ctxT(t testing.TB, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}
