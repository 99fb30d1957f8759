package client_test

import (
	"bytes"
	"context"
	"slices"
	"testing"
	"time"

	"github.com/natlog/natlog/client"
	"github.com/natlog/natlog/sidecar"
)

// Benchmarks of the client against real nodes in this process (one
// standalone node, or three in a Raft cluster) on a real nats-server, with
// durable appends (fsync before every acknowledgement). b.N counts
// records; each reports records/s. Compare with the raw-NATS figures of
// the sidecar package's benchmarks (BenchmarkAppendInflight256,
// BenchmarkClusterAppendInflight256, BenchmarkReadBatch).

var value100 = bytes.Repeat([]byte("x"), 100)

func benchClient(b *testing.B, nodes int) (*cluster, *client.Client) {
	c := newCluster(b, nodes, func(cfg *sidecar.Config) { cfg.Log.MaxIndexBytes = 12 << 20 })
	cl := c.client(client.WithMaxPending(256))
	if nodes > 0 {
		c.leader(cl)
	}
	return c, cl
}

func sizes(b *testing.B, f func(b *testing.B, nodes int)) {
	for _, n := range []struct {
		name  string
		nodes int
	}{{"1node", 0}, {"3nodes", 3}} {
		b.Run(n.name, func(b *testing.B) { f(b, n.nodes) })
	}
}

// BenchmarkAppendAsync: AppendAsync of 100-byte records with 256 pending.
func BenchmarkAppendAsync(b *testing.B) {
	sizes(b, func(b *testing.B, nodes int) {
		_, cl := benchClient(b, nodes)
		ctx := context.Background()
		// Warm up: the log exists, the view is current.
		if _, err := cl.Append(ctx, "bench", value100); err != nil {
			b.Fatal(err)
		}
		futs := make([]*client.AppendFuture, 0, b.N)
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			f, err := cl.AppendAsync(ctx, "bench", value100)
			if err != nil {
				b.Fatal(err)
			}
			futs = append(futs, f)
		}
		if err := cl.Flush(ctx); err != nil {
			b.Fatal(err)
		}
		el := time.Since(start)
		b.StopTimer()
		for _, f := range futs {
			if f.Err() != nil {
				b.Fatal(f.Err())
			}
		}
		b.ReportMetric(float64(b.N)/el.Seconds(), "records/s")
	})
}

// BenchmarkAppend: one 100-byte Append at a time.
func BenchmarkAppend(b *testing.B) {
	sizes(b, func(b *testing.B, nodes int) {
		_, cl := benchClient(b, nodes)
		ctx := context.Background()
		if _, err := cl.Append(ctx, "bench", value100); err != nil {
			b.Fatal(err)
		}
		lat := make([]time.Duration, 0, b.N)
		b.ResetTimer()
		start := time.Now()
		for range b.N {
			t0 := time.Now()
			if _, err := cl.Append(ctx, "bench", value100); err != nil {
				b.Fatal(err)
			}
			lat = append(lat, time.Since(t0))
		}
		el := time.Since(start)
		b.StopTimer()
		slices.Sort(lat)
		b.ReportMetric(float64(b.N)/el.Seconds(), "records/s")
		b.ReportMetric(float64(lat[len(lat)/2].Microseconds()), "p50-µs")
		b.ReportMetric(float64(lat[len(lat)*99/100].Microseconds()), "p99-µs")
	})
}

// BenchmarkConsume: Consume of b.N 100-byte records from offset 0 of a
// log filled beforehand (in batches of 1000).
func BenchmarkConsume(b *testing.B) {
	sizes(b, func(b *testing.B, nodes int) {
		_, cl := benchClient(b, nodes)
		ctx := context.Background()
		recs := make([]client.Record, 1000)
		for i := range recs {
			recs[i].Value = value100
		}
		for n := 0; n < b.N; n += len(recs) {
			if _, err := cl.AppendBatch(ctx, "bench", recs); err != nil {
				b.Fatal(err)
			}
		}
		// Let every replica hold the records: the benchmark measures
		// reading, not replication.
		if err := waitApplied(ctx, cl); err != nil {
			b.Fatal(err)
		}
		b.ResetTimer()
		start := time.Now()
		n := 0
		for r, err := range cl.Records(ctx, "bench") {
			if err != nil {
				b.Fatal(err)
			}
			if len(r.Value) != len(value100) {
				b.Fatalf("record %d: %d bytes", r.Offset, len(r.Value))
			}
			if n++; n == b.N {
				break
			}
		}
		el := time.Since(start)
		b.StopTimer()
		b.ReportMetric(float64(b.N)/el.Seconds(), "records/s")
	})
}

// waitApplied waits until every node has applied the leader's commit index.
func waitApplied(ctx context.Context, cl *client.Client) error {
	any, err := cl.Status(ctx)
	if err != nil || any.Mode != "cluster" {
		return err
	}
	st, err := cl.StatusOf(ctx, any.Leader)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(30 * time.Second)
	for _, p := range st.Peers {
		for {
			ps, err := cl.StatusOf(ctx, p.ID)
			if err == nil && ps.AppliedIndex >= st.CommitIndex {
				break
			}
			if time.Now().After(deadline) {
				return context.DeadlineExceeded
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	return nil
}
