package bench

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/nats-io/nuid"
)

// jsTarget drives one JetStream stream with nats.go's jetstream package:
// Publish one at a time, PublishMsgAsync for the window, an atomic batch
// publish for batches, direct gets for single reads and ordered consumers
// for batched reads and streaming.
type jsTarget struct {
	nc       *nats.Conn
	js       jetstream.JetStream
	stream   jetstream.Stream
	name     string
	subject  string
	replicas int

	// Async publish bookkeeping: when each message in flight was sent, and
	// the histogram of the AppendWindow running now.
	mu     sync.Mutex
	starts map[*nats.Msg]time.Time
	lat    *latencies
	acked  atomic.Int64
	errs   atomic.Int64
	errMsg atomic.Value // string: the first async error

	// ordered is the consumer Fetch fetches from; pos is how many
	// records it has delivered.
	ordered jetstream.Consumer
	pos     uint64
}

var _ target = (*jsTarget)(nil)

// dialJetStream connects to url for the stream name (subject
// "<name>.log") with replicas replicas; window is the async publish limit.
func dialJetStream(url, name string, replicas, window int) (*jsTarget, error) {
	nc, err := nats.Connect(url, nats.Name("natlog-bench-jetstream"), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("jetstream: connect %s: %w", url, err)
	}
	t := &jsTarget{nc: nc, name: name, subject: strings.ToLower(name) + ".log", replicas: replicas, starts: map[*nats.Msg]time.Time{}}
	t.js, err = jetstream.New(nc,
		jetstream.WithPublishAsyncMaxPending(window),
		jetstream.WithPublishAsyncAckHandler(t.onAck),
		jetstream.WithPublishAsyncErrHandler(t.onErr))
	if err != nil {
		nc.Close()
		return nil, err
	}
	return t, nil
}

func (t *jsTarget) Close() { t.nc.Close() }

func (t *jsTarget) Setup(ctx context.Context) error {
	cfg := jetstream.StreamConfig{
		Name:               t.name,
		Subjects:           []string{t.subject},
		Storage:            jetstream.FileStorage,
		Replicas:           t.replicas,
		AllowDirect:        true,
		AllowAtomicPublish: true,
	}
	// A new cluster answers "JetStream not ready", or nothing at all, until
	// its meta group has a leader: retry, each attempt short (a request
	// sent too early is never answered). Creating an existing stream with
	// the same configuration succeeds, so a slow attempt does no harm.
	err := retry(ctx, 50*time.Millisecond, func() error {
		cctx, cancel := context.WithTimeout(ctx, 500*time.Millisecond)
		defer cancel()
		s, err := t.js.CreateStream(cctx, cfg)
		if err != nil {
			return err
		}
		t.stream = s
		return nil
	}, func(err error) bool { return ctx.Err() == nil })
	if err != nil {
		return fmt.Errorf("jetstream: create stream: %w", err)
	}
	// The stream must have a leader and all its replicas current.
	err = retry(ctx, 50*time.Millisecond, func() error {
		info, err := t.stream.Info(ctx)
		if err != nil {
			return err
		}
		if t.replicas > 1 {
			c := info.Cluster
			if c == nil || c.Leader == "" || len(c.Replicas) < t.replicas-1 {
				return errNotReady
			}
			for _, p := range c.Replicas {
				if !p.Current {
					return errNotReady
				}
			}
		}
		return nil
	}, func(err error) bool { return ctx.Err() == nil })
	if err != nil {
		return fmt.Errorf("jetstream: stream not ready: %w", err)
	}
	return t.waitInterest(ctx)
}

// waitInterest waits until a publish on the stream's subject reaches the
// stream from this client's server: in a new cluster the stream's interest
// takes a moment to travel the routes, and until then a publish finds no
// responders (which js.Publish retries, but a raw batch cannot). The probe
// expects a last sequence the stream cannot have, so it is refused, never
// stored.
func (t *jsTarget) waitInterest(ctx context.Context) error {
	return retry(ctx, 10*time.Millisecond, func() error {
		m := &nats.Msg{Subject: t.subject, Header: nats.Header{}}
		m.Header.Set(jetstream.ExpectedLastSeqHeader, strconv.FormatUint(1<<62, 10))
		rep, err := t.nc.RequestMsg(m, time.Second)
		if err != nil {
			return err
		}
		if !strings.Contains(string(rep.Data), `"error"`) {
			return fmt.Errorf("jetstream: the interest probe was stored: %s", rep.Data)
		}
		return nil
	}, func(err error) bool { return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) })
}

// leader names the server that leads the stream ("" for R1).
func (t *jsTarget) leader(ctx context.Context) (string, error) {
	info, err := t.stream.Info(ctx)
	if err != nil || info.Cluster == nil {
		return "", err
	}
	return info.Cluster.Leader, nil
}

// deleteStream removes the stream (for runs against an existing server).
func (t *jsTarget) deleteStream(ctx context.Context) error {
	return t.js.DeleteStream(ctx, t.name)
}

func (t *jsTarget) Append(ctx context.Context, payload []byte) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	_, err := t.js.Publish(ctx, t.subject, payload)
	return err
}

func (t *jsTarget) onAck(_ jetstream.JetStream, m *nats.Msg, _ *jetstream.PubAck) {
	now := time.Now()
	t.mu.Lock()
	t0, ok := t.starts[m]
	delete(t.starts, m)
	lat := t.lat
	t.mu.Unlock()
	if ok && lat != nil {
		lat.record(now.Sub(t0))
	}
	t.acked.Add(1)
}

func (t *jsTarget) onErr(_ jetstream.JetStream, m *nats.Msg, err error) {
	t.mu.Lock()
	delete(t.starts, m)
	t.mu.Unlock()
	t.errs.Add(1)
	t.errMsg.CompareAndSwap(nil, err.Error())
}

// AppendWindow publishes with PublishMsgAsync, which blocks while window
// publishes await their acknowledgement (WithPublishAsyncMaxPending).
func (t *jsTarget) AppendWindow(ctx context.Context, payload []byte, window int, until time.Time, lat *latencies) (int64, error) {
	t.mu.Lock()
	t.lat = lat
	t.mu.Unlock()
	t.acked.Store(0)
	defer func() {
		t.mu.Lock()
		t.lat = nil
		clear(t.starts)
		t.mu.Unlock()
	}()
	for time.Now().Before(until) && ctx.Err() == nil && t.errs.Load() == 0 {
		m := &nats.Msg{Subject: t.subject, Data: payload}
		t.mu.Lock()
		t.starts[m] = time.Now()
		t.mu.Unlock()
		if _, err := t.js.PublishMsgAsync(m); err != nil {
			t.mu.Lock()
			delete(t.starts, m)
			t.mu.Unlock()
			if errors.Is(err, jetstream.ErrTooManyStalledMsgs) {
				continue
			}
			return t.acked.Load(), err
		}
	}
	select {
	case <-t.js.PublishAsyncComplete():
	case <-time.After(opTimeout):
		return t.acked.Load(), errors.New("jetstream: async publishes not acknowledged in time")
	case <-ctx.Done():
		return t.acked.Load(), ctx.Err()
	}
	if n := t.errs.Load(); n > 0 {
		t.errs.Store(0)
		return t.acked.Load(), fmt.Errorf("jetstream: %d async publishes failed, the first with: %v", n, t.errMsg.Load())
	}
	return t.acked.Load(), ctx.Err()
}

// AppendBatch is JetStream's atomic batch publish (nats-server 2.12 and
// later; the stream has AllowAtomicPublish). nats.go v1.55 has no call for
// it, so the messages carry the headers by hand: Nats-Batch-Id and
// Nats-Batch-Sequence on each, Nats-Batch-Commit on the last, which alone
// is a request; the server acknowledges the whole batch in its reply.
func (t *jsTarget) AppendBatch(ctx context.Context, payloads [][]byte) error {
	// A commit that finds no responders means none of the batch reached
	// the stream (nothing listens on the subject from this server yet):
	// send the whole batch again, under a new id.
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	return retry(rctx, 10*time.Millisecond, func() error { return t.appendBatch(ctx, payloads) },
		func(err error) bool { return errors.Is(err, nats.ErrNoResponders) })
}

func (t *jsTarget) appendBatch(ctx context.Context, payloads [][]byte) error {
	id := nuid.Next()
	for i, p := range payloads {
		m := &nats.Msg{Subject: t.subject, Data: p, Header: nats.Header{}}
		m.Header["Nats-Batch-Id"] = []string{id}
		m.Header["Nats-Batch-Sequence"] = []string{strconv.Itoa(i + 1)}
		if i < len(payloads)-1 {
			if err := t.nc.PublishMsg(m); err != nil {
				return err
			}
			continue
		}
		m.Header["Nats-Batch-Commit"] = []string{"1"}
		ctx, cancel := context.WithTimeout(ctx, opTimeout)
		defer cancel()
		rep, err := t.nc.RequestMsgWithContext(ctx, m)
		if err != nil {
			return err
		}
		var ack struct {
			Seq   uint64 `json:"seq"`
			Count int    `json:"count"`
			Error *struct {
				Code        int    `json:"code"`
				ErrCode     int    `json:"err_code"`
				Description string `json:"description"`
			} `json:"error"`
		}
		if err := json.Unmarshal(rep.Data, &ack); err != nil {
			return fmt.Errorf("jetstream: batch ack %q: %w", rep.Data, err)
		}
		if ack.Error != nil {
			return fmt.Errorf("jetstream: batch publish: %s (%d/%d)", ack.Error.Description, ack.Error.Code, ack.Error.ErrCode)
		}
		if ack.Count != len(payloads) {
			return fmt.Errorf("jetstream: batch of %d acknowledged %d records", len(payloads), ack.Count)
		}
	}
	return nil
}

// Read is a direct get (the stream has AllowDirect) of sequence off+1.
func (t *jsTarget) Read(ctx context.Context, off uint64) error {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	m, err := t.stream.GetMsg(ctx, off+1)
	if err != nil {
		return err
	}
	if m.Sequence != off+1 {
		return fmt.Errorf("jetstream: get %d answered sequence %d", off+1, m.Sequence)
	}
	return nil
}

// Settle polls the stream's info until every replica is current and has
// no lag behind the leader.
func (t *jsTarget) Settle(ctx context.Context, total uint64) error {
	return retry(ctx, 10*time.Millisecond, func() error {
		info, err := t.stream.Info(ctx)
		if err != nil {
			return err
		}
		if info.State.LastSeq < total {
			return fmt.Errorf("jetstream: stream holds %d records, want %d", info.State.LastSeq, total)
		}
		if c := info.Cluster; c != nil {
			for _, p := range c.Replicas {
				if !p.Current || p.Lag > 0 {
					return errNotReady
				}
			}
		}
		return nil
	}, func(err error) bool { return err == errNotReady })
}

func (t *jsTarget) orderedConsumer(ctx context.Context) (jetstream.Consumer, error) {
	return t.stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{DeliverPolicy: jetstream.DeliverAllPolicy})
}

// Fetch fetches from one ordered consumer; at the end of the records it
// starts a new one from the first.
func (t *jsTarget) Fetch(ctx context.Context, max int, total uint64) (int, error) {
	if t.ordered == nil || t.pos >= total {
		c, err := t.orderedConsumer(ctx)
		if err != nil {
			return 0, err
		}
		t.ordered, t.pos = c, 0
	}
	want := int(min(uint64(max), total-t.pos))
	// In a cluster a new consumer's pull subject may not have reached
	// this client's server yet ("no responders"): retry for a while.
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n := 0
	err := retry(rctx, 10*time.Millisecond, func() error {
		batch, err := t.ordered.Fetch(want, jetstream.FetchMaxWait(opTimeout))
		if err != nil {
			return err
		}
		for range batch.Messages() {
			n++
		}
		if err := batch.Error(); err != nil {
			return err
		}
		if n == 0 {
			return fmt.Errorf("jetstream: fetch at %d returned nothing", t.pos)
		}
		return nil
	}, func(err error) bool { return n == 0 && errors.Is(err, nats.ErrNoResponders) })
	if err != nil {
		return n, err
	}
	t.pos += uint64(n)
	return n, nil
}

// Consume streams with a new ordered consumer's Consume callback, pulling
// every records at a time. (Not its Messages iterator: when a new
// consumer's first pull finds no responders, as it can while the
// consumer's interest crosses the routes of a cluster, Consume resets the
// consumer at once but the iterator waits for two missed heartbeats, 10 s
// by default.)
func (t *jsTarget) Consume(ctx context.Context, total uint64, every int, each func()) error {
	c, err := t.orderedConsumer(ctx)
	if err != nil {
		return err
	}
	done := make(chan struct{})
	var n uint64
	got := 0
	// The callback runs on one goroutine at a time; done orders its last
	// call before Consume returns.
	cc, err := c.Consume(func(jetstream.Msg) {
		if n >= total {
			return
		}
		n++
		if got++; got == every {
			each()
			got = 0
		}
		if n == total {
			close(done)
		}
	}, jetstream.PullMaxMessages(every))
	if err != nil {
		return err
	}
	defer cc.Stop()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-time.After(opTimeout):
		return fmt.Errorf("jetstream: consume: no end of the records after %s", opTimeout)
	}
}
