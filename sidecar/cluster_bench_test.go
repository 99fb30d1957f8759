package sidecar

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/sidecar/protocol"
)

// benchCluster is three in-process nodes on one embedded nats-server, with
// raft's timeouts at a quarter of the defaults (one host).
func benchCluster(b *testing.B) *testCluster {
	tc := newTestCluster(b)
	tc.tweak = func(c *Config) {
		c.Cluster.HeartbeatTimeout = 250 * time.Millisecond
		c.Cluster.ElectionTimeout = 250 * time.Millisecond
		c.Cluster.LeaderLeaseTimeout = 125 * time.Millisecond
	}
	for _, id := range []string{"n1", "n2", "n3"} {
		tc.start(id, 3)
	}
	tc.leader()
	return tc
}

// BenchmarkClusterAppendOneAtATime: 100-byte appends to a 3-node cluster,
// one at a time: the latency of a replicated, durable append.
func BenchmarkClusterAppendOneAtATime(b *testing.B) {
	tc := benchCluster(b)
	nc := tc.client()
	lat := make([]time.Duration, 0, b.N)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		t0 := time.Now()
		m, err := nc.Request("natlog.append.bench", value100, 5*time.Second)
		if err != nil {
			b.Fatal(err)
		}
		if m.Header != nil {
			b.Fatalf("error reply: %v", protocol.ReplyError(m.Header, m.Data))
		}
		lat = append(lat, time.Since(t0))
	}
	el := time.Since(start)
	b.StopTimer()
	slices.Sort(lat)
	b.ReportMetric(float64(b.N)/el.Seconds(), "records/s")
	b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
	b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
}

// BenchmarkClusterAppendInflight256: 100-byte appends to a 3-node cluster,
// 256 in flight; the leader batches them into Raft entries.
func BenchmarkClusterAppendInflight256(b *testing.B) {
	tc := benchCluster(b)
	nc := tc.client()
	b.ResetTimer()
	el := pipeline(b, nc, b.N, 256, "natlog.append.bench", value100, nil, checkOK)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "records/s")
	st := tc.node(tc.leader()).status()
	b.ReportMetric(float64(b.N)/float64(st.CommitIndex), "records/entry")
}

// BenchmarkClusterReadLinearizable: linearizable single-record reads of a
// 3-node cluster, answered by whichever replica NATS picks: one at a time
// (the latency: p50) and 64 in flight (records/s).
func BenchmarkClusterReadLinearizable(b *testing.B) {
	tc := benchCluster(b)
	nc := tc.client()
	if m, err := nc.Request("natlog.append.bench", value100, 5*time.Second); err != nil || m.Header != nil {
		b.Fatalf("append: %v %v", err, m)
	}
	hdr := nats.Header{protocol.HeaderContentType: {protocol.ContentTypeMsgpack}}
	req := protocol.ReadRequest{Offset: 0, Max: 1, Linearizable: true}
	body := req.AppendMsgpack(nil)
	check := func(m *nats.Msg) error {
		if e := protocol.ReplyError(m.Header, m.Data); e != nil {
			return e
		}
		rep, err := protocol.DecodeReadReply(m.Data)
		if err != nil || len(rep.Records) != 1 {
			return fmt.Errorf("read reply: %d records, %v", len(rep.Records), err)
		}
		return nil
	}
	b.Run("one", func(b *testing.B) {
		lat := make([]time.Duration, 0, b.N)
		for range b.N {
			t0 := time.Now()
			m, err := nc.RequestMsg(&nats.Msg{Subject: "natlog.read.bench", Data: body, Header: hdr}, 5*time.Second)
			if err != nil {
				b.Fatal(err)
			}
			if err := check(m); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		b.StopTimer()
		slices.Sort(lat)
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	})
	b.Run("inflight64", func(b *testing.B) {
		el := pipeline(b, nc, b.N, 64, "natlog.read.bench", body, hdr, check)
		b.StopTimer()
		b.ReportMetric(float64(b.N)/el.Seconds(), "records/s")
	})
}
