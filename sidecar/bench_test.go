package sidecar

import (
	"bytes"
	"fmt"
	"slices"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	dto "github.com/prometheus/client_model/go"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/sidecar/protocol"
)

// Benchmarks through NATS against one node with durable appends (fsync
// before every acknowledgement, shared by concurrent appends). The client
// connects over TCP as any client would. Each reports records/s; b.N
// counts records.

func benchNode(b *testing.B) (*Server, *nats.Conn) {
	return benchNodeSync(b, logcore.SyncAlways)
}

func benchNodeSync(b *testing.B, sync logcore.SyncPolicy) (*Server, *nats.Conn) {
	cfg := testConfig(b)
	cfg.Log.MaxIndexBytes = 12 << 20
	cfg.Log.Sync = sync
	s := startNode(b, cfg)
	return s, connectTo(b, s)
}

var value100 = bytes.Repeat([]byte("x"), 100)

// BenchmarkAppendOneAtATime: one client, one 100-byte append at a time.
func BenchmarkAppendOneAtATime(b *testing.B) {
	s, nc := benchNode(b)
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
	reportFsync(b, s)
}

// reportFsync reports the mean fsync time of the run, to set the request
// latencies against.
func reportFsync(b *testing.B, s *Server) {
	var m dto.Metric
	if err := s.metrics.fsync.Write(&m); err != nil || m.Histogram.GetSampleCount() == 0 {
		return
	}
	h := m.Histogram
	b.ReportMetric(h.GetSampleSum()/float64(h.GetSampleCount())*1e6, "fsync-mean-µs")
}

// pipeline sends requests without waiting for each reply, keeping up to
// window in flight, and counts the replies on one subscription.
func pipeline(b *testing.B, nc *nats.Conn, n, window int, subject string, data []byte, hdr nats.Header, check func(*nats.Msg) error) time.Duration {
	b.Helper()
	inbox := nats.NewInbox()
	slots := make(chan struct{}, window)
	done := make(chan struct{})
	var got atomic.Int64
	var failed atomic.Value
	sub, err := nc.Subscribe(inbox+".*", func(m *nats.Msg) {
		if err := check(m); err != nil {
			failed.CompareAndSwap(nil, err)
		}
		<-slots
		if got.Add(1) == int64(n) {
			close(done)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	sub.SetPendingLimits(-1, -1)
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	start := time.Now()
	prefix := inbox + "."
	buf := make([]byte, 0, len(prefix)+20)
	for i := range n {
		slots <- struct{}{}
		buf = strconv.AppendInt(append(buf[:0], prefix...), int64(i), 10)
		if err := nc.PublishMsg(&nats.Msg{Subject: subject, Reply: string(buf), Data: data, Header: hdr}); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		b.Fatalf("only %d of %d replies", got.Load(), n)
	}
	el := time.Since(start)
	if err, ok := failed.Load().(error); ok {
		b.Fatal(err)
	}
	return el
}

func checkOK(m *nats.Msg) error {
	if e := protocol.ReplyError(m.Header, m.Data); e != nil {
		return e
	}
	return nil
}

// BenchmarkAppendInflight256: 100-byte appends, 256 in flight.
func BenchmarkAppendInflight256(b *testing.B) {
	s, nc := benchNode(b)
	b.ResetTimer()
	el := pipeline(b, nc, b.N, 256, "natlog.append.bench", value100, nil, checkOK)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "records/s")
	reportSyncs(b, s, b.N)
	reportFsync(b, s)
}

// BenchmarkAppendInflight256NoFsync is BenchmarkAppendInflight256 with
// fsync left to the OS (NOT durable): the CPU cost of the request path,
// without the disk.
func BenchmarkAppendInflight256NoFsync(b *testing.B) {
	_, nc := benchNodeSync(b, logcore.SyncNeverUnsafe)
	b.ResetTimer()
	el := pipeline(b, nc, b.N, 256, "natlog.append.bench", value100, nil, checkOK)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "records/s")
}

// reportSyncs reports the fsyncs per record of the log "bench".
func reportSyncs(b *testing.B, s *Server, records int) {
	if e, ok := s.logs.get("bench"); ok {
		b.ReportMetric(float64(e.log.Stats().Syncs)/float64(records), "fsyncs/record")
	}
}

// BenchmarkAppendBatch100: batches of 100 100-byte records, one at a time
// and 64 in flight.
func BenchmarkAppendBatch100(b *testing.B) {
	for _, inflight := range []int{1, 64} {
		b.Run(fmt.Sprintf("inflight=%d", inflight), func(b *testing.B) { benchBatch(b, inflight) })
	}
}

func benchBatch(b *testing.B, inflight int) {
	s, nc := benchNode(b)
	req := protocol.AppendBatchRequest{Records: make([]protocol.AppendRecord, 100)}
	for i := range req.Records {
		req.Records[i].Value = value100
	}
	body := req.AppendMsgpack(nil)
	hdr := nats.Header{protocol.HeaderContentType: {protocol.ContentTypeMsgpack}}
	batches := max(b.N/100, 1)
	b.ResetTimer()
	el := pipeline(b, nc, batches, inflight, "natlog.append.bench", body, hdr, checkOK)
	b.StopTimer()
	b.ReportMetric(float64(batches*100)/el.Seconds(), "records/s")
	reportSyncs(b, s, batches*100)
	reportFsync(b, s)
}

// BenchmarkReadBatch: batched reads of 1000 100-byte records, 4 in flight,
// of a log filled beforehand.
func BenchmarkReadBatch(b *testing.B) {
	_, nc := benchNode(b)
	const fill = 200_000
	req := protocol.AppendBatchRequest{Records: make([]protocol.AppendRecord, 1000)}
	for i := range req.Records {
		req.Records[i].Value = value100
	}
	body := req.AppendMsgpack(nil)
	hdr := nats.Header{protocol.HeaderContentType: {protocol.ContentTypeMsgpack}}
	pipeline(b, nc, fill/1000, 16, "natlog.append.bench", body, hdr, checkOK)
	reads := max(b.N/1000, 1)
	var records atomic.Int64
	b.ResetTimer()
	// Each request reads 1000 records from a different place in the log.
	inbox := nats.NewInbox()
	slots := make(chan struct{}, 4)
	done := make(chan struct{})
	var got atomic.Int64
	var failed atomic.Value
	sub, err := nc.Subscribe(inbox+".*", func(m *nats.Msg) {
		rep, err := protocol.DecodeReadReply(m.Data)
		if err != nil || len(rep.Records) == 0 {
			failed.CompareAndSwap(nil, fmt.Errorf("read reply: %d records, %v, %v", len(rep.Records), err, protocol.ReplyError(m.Header, m.Data)))
		}
		records.Add(int64(len(rep.Records)))
		<-slots
		if got.Add(1) == int64(reads) {
			close(done)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer sub.Unsubscribe()
	sub.SetPendingLimits(-1, -1)
	nc.Flush()
	rhdr := nats.Header{protocol.HeaderContentType: {protocol.ContentTypeMsgpack}}
	start := time.Now()
	for i := range reads {
		slots <- struct{}{}
		r := protocol.ReadRequest{Offset: uint64(i*1000) % fill, Max: 1000}
		if err := nc.PublishMsg(&nats.Msg{Subject: "natlog.read.bench", Reply: inbox + "." + strconv.Itoa(i), Data: r.AppendMsgpack(nil), Header: rhdr}); err != nil {
			b.Fatal(err)
		}
	}
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		b.Fatalf("only %d of %d replies", got.Load(), reads)
	}
	el := time.Since(start)
	b.StopTimer()
	if err, ok := failed.Load().(error); ok {
		b.Fatal(err)
	}
	b.ReportMetric(float64(records.Load())/el.Seconds(), "records/s")
}

// BenchmarkBareNATS256 is the ceiling the append benchmarks run under: the
// same client, 256 requests in flight, against a responder on the same
// embedded server that answers each request at once with a constant.
func BenchmarkBareNATS256(b *testing.B) {
	s, nc := benchNode(b)
	resp, err := nats.Connect("", nats.InProcessServer(s.ns))
	if err != nil {
		b.Fatal(err)
	}
	defer resp.Close()
	reply := []byte(`{"log":"bench","offset":0}`)
	sub, err := resp.QueueSubscribe("bare.>", "q", func(m *nats.Msg) { m.Respond(reply) })
	if err != nil {
		b.Fatal(err)
	}
	sub.SetPendingLimits(-1, -1)
	resp.Flush()
	b.ResetTimer()
	el := pipeline(b, nc, b.N, 256, "bare.echo", value100, nil, checkOK)
	b.StopTimer()
	b.ReportMetric(float64(b.N)/el.Seconds(), "records/s")
}
