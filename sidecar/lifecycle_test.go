package sidecar

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/natlog/natlog/internal/testnats"
	"github.com/natlog/natlog/sidecar/protocol"
)

// A node on an existing NATS server (a real nats-server process) serves
// its clients, and keeps serving after that server restarts.
func TestExternalNATS(t *testing.T) {
	ns := testnats.StartServer(t)
	cfg := testConfig(t)
	cfg.NATSURL = ns.URL
	cfg.Prefix = "acme.natlog"
	s := startNode(t, cfg)
	if s.NATSURL() != ns.URL {
		t.Errorf("NATSURL %q, want the external server's %q", s.NATSURL(), ns.URL)
	}
	nc, err := nats.Connect(ns.URL, nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	m := request(t, nc, "acme.natlog.append.orders", []byte("via nats-server"), nil)
	if string(m.Data) != `{"log":"orders","offset":0}` {
		t.Fatalf("append: %s", m.Data)
	}
	if m := request(t, nc, "acme.natlog.read.orders", []byte("0"), nil); string(m.Data) != "via nats-server" {
		t.Fatalf("read: %q", m.Data)
	}
	// Nothing answers on the default prefix.
	if _, err := nc.Request("natlog.append.orders", []byte("x"), 200*time.Millisecond); err == nil {
		t.Fatal("a request on the default prefix was answered")
	}

	ns.Stop()
	eventually(t, 5*time.Second, "the node to see the disconnect", func() bool { return !s.Ready() })
	ns.Start()
	eventually(t, 20*time.Second, "the node to reconnect", s.Ready)
	eventually(t, 20*time.Second, "appends to work again", func() bool {
		m, err := nc.Request("acme.natlog.append.orders", []byte("after restart"), time.Second)
		return err == nil && string(m.Data) == `{"log":"orders","offset":1}`
	})
}

// The micro framework's control subjects describe the service.
func TestMicroService(t *testing.T) {
	s := startNode(t, testConfig(t))
	nc := connectTo(t, s)
	m := request(t, nc, "$SRV.INFO.natlog", nil, nil)
	var info micro.Info
	if err := json.Unmarshal(m.Data, &info); err != nil {
		t.Fatal(err)
	}
	if info.Name != "natlog" || info.Metadata["node_id"] != s.NodeID() || len(info.Endpoints) != 9 {
		t.Fatalf("service info: %s", m.Data)
	}
	subjects := map[string]string{}
	for _, ep := range info.Endpoints {
		subjects[ep.Name] = ep.Subject
		if ep.QueueGroup != "natlog" {
			t.Errorf("endpoint %s in queue group %q", ep.Name, ep.QueueGroup)
		}
	}
	for name, subj := range map[string]string{"append": "natlog.append.>", "read": "natlog.read.>", "info": "natlog.info.>",
		"create": "natlog.create.>", "delete": "natlog.delete.>", "logs": "natlog.logs", "status": "natlog.cluster.status",
		"node_read": "natlog.node." + s.NodeID() + ".read.>", "node_status": "natlog.node." + s.NodeID() + ".cluster.status"} {
		if subjects[name] != subj {
			t.Errorf("endpoint %s on %q, want %q", name, subjects[name], subj)
		}
	}
	wantOK(t, request(t, nc, "natlog.append.x", []byte("v"), nil))
	wantError(t, request(t, nc, "natlog.append.a$", []byte("v"), nil), protocol.ErrBadLogName)
	var stats micro.Stats
	if err := json.Unmarshal(request(t, nc, "$SRV.STATS.natlog", nil, nil).Data, &stats); err != nil {
		t.Fatal(err)
	}
	for _, ep := range stats.Endpoints {
		if ep.Name == "append" && (ep.NumRequests != 2 || ep.NumErrors != 1) {
			t.Errorf("append stats: %+v", ep)
		}
	}
}

// Shutdown answers what it has taken: appends in flight are acknowledged
// and durable, long polls answer (empty), and nothing is lost.
func TestGracefulShutdown(t *testing.T) {
	ns := testnats.StartServer(t)
	cfg := testConfig(t)
	cfg.NATSURL = ns.URL
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(ns.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	wantOK(t, request(t, nc, "natlog.append.g", []byte("first"), nil))
	wantOK(t, request(t, nc, "natlog.append.idle", []byte("first"), nil))

	poll := make(chan *nats.Msg, 1)
	go func() {
		m, err := nc.Request("natlog.read.idle", []byte(`{"offset":1,"wait_ms":60000}`), 30*time.Second)
		if err != nil {
			t.Error(err)
		}
		poll <- m
	}()
	eventually(t, 5*time.Second, "the poll to wait", func() bool { return len(s.waiters) == 1 })

	// Appends racing with the shutdown: each is either acknowledged (and
	// then must survive) or not answered by this node at all.
	var acked sync.Map
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for c := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				v := fmt.Sprintf("c%d-%d", c, i)
				m, err := nc.Request("natlog.append.g", []byte(v), 2*time.Second)
				if err != nil {
					return // no responders, or timed out: not acknowledged
				}
				var r protocol.AppendReply
				if json.Unmarshal(m.Data, &r) == nil && protocol.ReplyError(m.Header, m.Data) == nil {
					acked.Store(r.Offset, v)
				}
			}
		})
	}
	eventually(t, 10*time.Second, "appends to flow", func() bool {
		n := 0
		acked.Range(func(_, _ any) bool { n++; return n < 5 })
		return n >= 5
	})
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	start := time.Now()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	close(stop)
	wg.Wait()
	if el := time.Since(start); el > 10*time.Second {
		t.Errorf("Shutdown took %v", el)
	}
	select {
	case m := <-poll:
		rep, err := protocol.DecodeReadReply(m.Data)
		if err != nil || len(rep.Records) != 0 || rep.Next != 1 {
			t.Fatalf("poll answered at shutdown: %+v %v", rep, err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the long poll was not answered at shutdown")
	}
	// After shutdown nobody answers.
	if _, err := nc.Request("natlog.append.g", []byte("late"), 200*time.Millisecond); err == nil {
		t.Fatal("a request was answered after shutdown")
	}

	// Every acknowledged append is there after a restart.
	cfg2 := testConfig(t)
	cfg2.DataDir, cfg2.NATSURL = cfg.DataDir, ns.URL
	s = startNode(t, cfg2)
	n := 0
	acked.Range(func(k, v any) bool {
		n++
		m := request(t, nc, "natlog.read.g", fmt.Append(nil, k), nil)
		if string(m.Data) != v.(string) {
			t.Errorf("offset %v: %q, acknowledged as %q", k, m.Data, v)
		}
		return true
	})
	t.Logf("%d appends acknowledged around the shutdown", n)
}

// Two nodes never share a data dir.
func TestDataDirLock(t *testing.T) {
	cfg := testConfig(t)
	startNode(t, cfg)
	cfg2 := testConfig(t)
	cfg2.DataDir = cfg.DataDir
	if _, err := Start(cfg2); err == nil || !strings.Contains(err.Error(), "in use by another natlog") {
		t.Fatalf("second node on one data dir: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	tests := []struct {
		name   string
		mutate func(*Config)
		want   string
	}{
		{"no data dir", func(c *Config) { c.DataDir = "" }, "data dir"},
		{"bad prefix", func(c *Config) { c.Prefix = "a..b" }, "prefix"},
		{"bad node id", func(c *Config) { c.NodeID = "a b" }, "node id"},
		{"url and config", func(c *Config) { c.NATSURL = "nats://x"; c.NATSConfigFile = "f" }, "--nats-url"},
		{"bad listen", func(c *Config) { c.NATSListen = "nowhere" }, "listen"},
		{"bad http", func(c *Config) { c.HTTPListen = "8080" }, "HTTP"},
		{"tiny segments", func(c *Config) { c.Log.MaxSegmentBytes = 1 }, "MaxSegmentBytes"},
		{"read limits", func(c *Config) { c.DefaultReadMax = 0 }, "read limits"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := DefaultConfig()
			tt.mutate(&cfg)
			if err := cfg.Validate(); err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("Validate = %v, want an error about %q", err, tt.want)
			}
		})
	}
	if err := DefaultConfig().Validate(); err != nil {
		t.Fatalf("DefaultConfig is invalid: %v", err)
	}
}

// A port in use is a clear error, not a hang.
func TestNATSPortInUse(t *testing.T) {
	s := startNode(t, testConfig(t))
	cfg := testConfig(t)
	cfg.NATSListen = strings.TrimPrefix(s.NATSURL(), "nats://")
	if _, err := Start(cfg); err == nil || !strings.Contains(err.Error(), "address already in use") {
		t.Fatalf("Start on a used port: %v", err)
	}
}

// A node keeps its id: given on first start, it is stored; a later start
// without one finds it, and one with another id is refused.
func TestNodeIDIsKept(t *testing.T) {
	cfg := testConfig(t)
	cfg.HTTPListen = ""
	cfg.NodeID = "first"
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	cfg.NodeID = ""
	if s, err = Start(cfg); err != nil {
		t.Fatal(err)
	}
	if s.NodeID() != "first" {
		t.Fatalf("restarted without --node-id as %q, want the stored %q", s.NodeID(), "first")
	}
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	cfg.NodeID = "second"
	if _, err := Start(cfg); err == nil || !strings.Contains(err.Error(), "belongs to node first") {
		t.Fatalf("start with another id: %v", err)
	}
}

// A leaf remote given both as --leaf-remote and in the embedded server's
// configuration file is refused with a clear error.
func TestLeafRemoteInOnePlace(t *testing.T) {
	cfg := testConfig(t)
	cfg.HTTPListen = ""
	conf := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(conf, []byte("listen: 127.0.0.1:-1\nleafnodes { remotes = [ { url: \"nats-leaf://127.0.0.1:7422\" } ] }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	cfg.NATSConfigFile = conf
	cfg.NATSLeafRemotes = []string{"nats-leaf://127.0.0.1:7423"}
	if s, err := Start(cfg); err == nil || !strings.Contains(err.Error(), "one place") {
		if s != nil {
			s.Shutdown(context.Background())
		}
		t.Fatalf("Start with the leaf remote in two places: %v", err)
	}
}
