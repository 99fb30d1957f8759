package raftfsm

import (
	"fmt"
	"io"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// BenchmarkRaftApply commits 100-byte entries on a 3-node cluster in one
// process (in-memory stores, so the transport is what is measured), over
// the NATS transport and over raft's TCP transport on 127.0.0.1, one Apply
// at a time and with 256 Applies in flight. It reports entries/s and the
// p50 and p99 latency of one Apply. The FSM does next to nothing (every
// command is the same 100 bytes, which it records once).
//
//	go test -run '^$' -bench RaftApply -benchtime 3s ./raftfsm/
func BenchmarkRaftApply(b *testing.B) {
	for _, transport := range []string{"nats", "tcp"} {
		for _, inflight := range []int{1, 256} {
			b.Run(fmt.Sprintf("transport=%s/inflight=%d", transport, inflight), func(b *testing.B) {
				benchRaftApply(b, transport, inflight)
			})
		}
	}
}

func benchRaftApply(b *testing.B, transport string, inflight int) {
	nodes := startBenchCluster(b, transport)
	leader := waitTransportLeader(b, 10*time.Second, nodes...)
	cmd := make([]byte, 100)
	// Warm up: every follower connection dialed, the pipeline running.
	for range 100 {
		if err := leader.raft.Apply(cmd, 0).Error(); err != nil {
			b.Fatalf("warm-up Apply: %v", err)
		}
	}

	lats := make([][]time.Duration, inflight)
	var next atomic.Int64
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for w := range inflight {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				t0 := time.Now()
				if err := leader.raft.Apply(cmd, 0).Error(); err != nil {
					b.Errorf("Apply on %s (now %s): %v", leader.id, leader.raft.State(), err)
					return
				}
				lats[w] = append(lats[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start)
	b.StopTimer()

	all := slices.Concat(lats...)
	slices.Sort(all)
	if len(all) == 0 {
		return
	}
	b.ReportMetric(float64(len(all))/elapsed.Seconds(), "entries/s")
	b.ReportMetric(float64(all[len(all)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(all[len(all)*99/100].Microseconds()), "p99-µs")
}

// startBenchCluster starts three Raft servers over the named transport,
// with raft's default settings except for timeouts halved, for a faster
// first election (still long enough that a host busy with other work does
// not move leadership during a run).
func startBenchCluster(b *testing.B, transport string) []*transportNode {
	b.Helper()
	config := func(id string) *raft.Config {
		c := raft.DefaultConfig()
		c.LocalID = raft.ServerID(id)
		c.HeartbeatTimeout = 500 * time.Millisecond
		c.ElectionTimeout = 500 * time.Millisecond
		c.LeaderLeaseTimeout = 250 * time.Millisecond
		c.Logger = quietRaftLogger()
		return c
	}
	ns := startStreamNATS(b, 0)
	var nodes []*transportNode
	for i := range 3 {
		id := fmt.Sprintf("n%d", i+1)
		switch transport {
		case "nats":
			nc := connectStreamNATS(b, ns)
			cfg := DefaultTransportConfig(id)
			trans, err := NewNATSTransport(nc, cfg)
			if err != nil {
				b.Fatal(err)
			}
			nodes = append(nodes, startTransportNode(b, config(id), trans, nc))
		case "tcp":
			trans, err := raft.NewTCPTransport("127.0.0.1:0", nil, 3, 10*time.Second, io.Discard)
			if err != nil {
				b.Fatal(err)
			}
			nodes = append(nodes, startTransportNode(b, config(id), trans, nil))
		}
	}
	bootstrapTransportNodes(b, nodes...)
	return nodes
}
