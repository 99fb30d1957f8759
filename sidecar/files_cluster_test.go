package sidecar

import (
	"fmt"
	"testing"
)

// TestClusterManyLogsWithinOpenFiles: three nodes whose logs may keep 12
// files open each (four segments) replicate 40 logs; every node holds
// every record of every log, within its bound, also after a node restarts
// (its replicas of the logs reopen and catch up through parked files).
func TestClusterManyLogsWithinOpenFiles(t *testing.T) {
	tc := newTestCluster(t)
	tc.tweak = func(c *Config) { c.MaxOpenFiles = 12 }
	for _, id := range []string{"n1", "n2", "n3"} {
		tc.start(id, 3)
	}
	nc := tc.client()
	const nLogs = 40
	want := map[string][]string{}
	for i := range nLogs {
		name := fmt.Sprintf("l%d", i)
		want[name] = appendN(t, nc, name, name+"a", 2)
	}
	for name, vals := range want {
		tc.converged(name, vals)
	}
	for _, id := range tc.ids() {
		if b := tc.node(id).cfg.Log.Files; b.Max() != 4 || b.OpenSegments() > b.Max() {
			t.Fatalf("%s: %d segments open, bound %d", id, b.OpenSegments(), b.Max())
		}
	}
	follower := notNode(tc.leader())
	tc.stop(follower)
	for name := range want {
		want[name] = append(want[name], appendN(t, nc, name, name+"b", 1)...)
	}
	tc.start(follower, 3)
	for name, vals := range want {
		tc.converged(name, vals)
	}
	if b := tc.node(follower).cfg.Log.Files; b.OpenSegments() > b.Max() {
		t.Fatalf("%s after restart: %d segments open, bound %d", follower, b.OpenSegments(), b.Max())
	}
}
