package sidecar

import (
	"context"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// A data dir written in one mode is refused in the other: a cluster
// node's dir started standalone would serve nothing of the cluster's and
// take appends meant for it; a standalone dir started in a cluster would
// hide its logs.
func TestDataDirModeMismatchRefused(t *testing.T) {
	tc := newTestCluster(t)
	tc.start("n1", 1)
	tc.leader()
	tc.stop("n1")
	dir := filepath.Join(tc.base, "n1")
	refused := func(cfg Config, want string) {
		t.Helper()
		s, err := Start(cfg)
		if err == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			s.Shutdown(ctx)
		}
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Fatalf("Start with data dir %s: %v, want refused (%q)", cfg.DataDir, err, want)
		}
	}
	cfg := testConfig(t)
	cfg.DataDir, cfg.NodeID = dir, "n1"
	refused(cfg, "--cluster NAME")

	s := startNode(t, testConfig(t))
	nc := connectTo(t, s)
	wantOK(t, request(t, nc, "natlog.append.orders", []byte("x"), nil))
	standalone := s.cfg.DataDir
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	cfg = testConfig(t)
	cfg.DataDir, cfg.NodeID = standalone, s.nodeID
	cfg.NATSURL, cfg.NATSListen, cfg.HTTPListen = tc.url, "", ""
	cfg.Cluster = FastClusterConfig()
	cfg.Cluster.Name = "test"
	refused(cfg, "standalone node's logs")
}
