package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"iter"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/sidecar/protocol"
)

// readMsg builds a read request for an attempt: to a replica chosen by the
// client (avoiding the one the previous attempt went to), or to the
// shared subject. It records the node in *node.
func (c *Client) readMsg(log string, body []byte, hdr nats.Header, node *string) func(int) *nats.Msg {
	return func(attempt int) *nats.Msg {
		avoid := ""
		if attempt > 1 {
			avoid = *node
		}
		*node = c.readNode(avoid)
		return &nats.Msg{Subject: c.nodeReadSubject(*node, log), Data: body, Header: hdr}
	}
}

// behind reports whether err is an offset-out-of-range or unknown-log
// answer that may come from a replica that is only behind (not from the
// leader), and where to read again: from the leader by its own subject,
// or, when the client cannot address the leader (reads on the shared
// subject, no leader known), leader is "" and the read is to be repeated
// linearizably.
func (c *Client) behind(err error, node string) (leader string, ok bool) {
	if !errors.Is(err, protocol.ErrOffsetOutOfRange) && !errors.Is(err, protocol.ErrUnknownLog) {
		return "", false
	}
	leader = c.Leader()
	switch {
	case node != "" && node == leader:
		return "", false // the leader's own answer
	case leader == "" || node == "" || c.nodeReadsDenied.Load():
		return "", true
	}
	return leader, true
}

// Read returns the record at offset of log, from a replica the client
// chooses (see WithPreferredNode). A replica answers from what it has
// applied; if it does not have the offset yet, the client asks the leader
// (or, when it cannot address the leader, reads it again as a linearizable
// batch read), so a record whose append was acknowledged is always found.
func (c *Client) Read(ctx context.Context, log string, offset uint64) (Record, error) {
	body := strconv.AppendUint(nil, offset, 10)
	var node string
	m, err := c.do(ctx, "read", log, true, 0, c.readMsg(log, body, nil, &node))
	if leader, ok := c.behind(err, node); ok && leader == "" {
		return c.readLinearizable(ctx, log, offset, err)
	} else if ok {
		m, err = c.do(ctx, "read", log, true, 0, func(int) *nats.Msg {
			return &nats.Msg{Subject: c.nodeReadSubject(leader, log), Data: body}
		})
	}
	if err != nil {
		return Record{}, err
	}
	r := Record{Value: m.Data, Headers: nats.Header{}}
	for k, v := range m.Header {
		switch k {
		case protocol.HeaderOffset:
			r.Offset, err = strconv.ParseUint(m.Header.Get(k), 10, 64)
		case protocol.HeaderTime:
			r.Time, err = strconv.ParseInt(m.Header.Get(k), 10, 64)
		default:
			r.Headers[k] = v
		}
		if err != nil {
			return Record{}, &Error{Op: "read", Log: log, Err: fmt.Errorf("bad %s header: %w", k, err)}
		}
	}
	return r, nil
}

// readLinearizable repeats a read that a replica answered with notFound (it
// may only be behind) as a one-record linearizable batch read: any replica
// answers it only once it has applied everything committed before the
// read, so it finds a record whose append was acknowledged, and answers at
// once for an offset that does not exist (a min_offset read would wait for
// that offset, then fail "unavailable").
func (c *Client) readLinearizable(ctx context.Context, log string, offset uint64, notFound error) (Record, error) {
	b, err := c.Fetch(ctx, log, offset, FetchOptions{Max: 1, Linearizable: true})
	if err != nil {
		var e *Error
		if errors.As(err, &e) {
			e.Op = "read"
		}
		return Record{}, err
	}
	if len(b.Records) == 0 || b.Records[0].Offset != offset {
		return Record{}, notFound // offset is the log's end
	}
	r := b.Records[0]
	if r.Headers == nil {
		r.Headers = nats.Header{}
	}
	return r, nil
}

// FetchOptions shape a batch read. Zero values take the node's defaults.
type FetchOptions struct {
	// Max is the most records returned (the node's default is 1000).
	Max int
	// MaxBytes bounds the record data returned (the first record is
	// returned whatever its size).
	MaxBytes int
	// Wait is how long the node waits for a record when the offset is
	// the log's end (long polling); 0 answers at once.
	Wait time.Duration
	// MinOffset, if set, makes the replica wait until it holds this
	// offset before reading (read-your-writes). A replica that has not
	// yet seen the log deleted and created again takes the old log's
	// offset for it: MinIndex does not.
	MinOffset *uint64
	// MinIndex, if not 0, makes the replica wait until it has applied
	// the Raft log up to this index before reading: an
	// AppendResult.Index (or LastIndex, or a Batch.Index) names a point
	// in the cluster's history, and the read sees everything up to it
	// (read-your-writes that survives a delete and re-create of the
	// log). A replica that does not get there within the node's max read
	// wait answers ErrUnavailable, which is retried. A standalone node
	// ignores it.
	MinIndex uint64
	// Linearizable makes the read see every append acknowledged before
	// it began (a round trip to the leader).
	Linearizable bool
	// StartTime, if not zero, reads from the first record at or after
	// it instead of from the offset.
	StartTime time.Time
}

// Batch is the reply of a batch read.
type Batch struct {
	Records []Record
	// Next is the offset to read next; Lowest and End the log's first
	// offset and end (next append's offset) as the replica saw them.
	Next, Lowest, End uint64
	// Index is the Raft index the replica had applied when it answered
	// (0 from a standalone node): as the next read's MinIndex it keeps a
	// reader that moves to another replica from going back in history.
	Index uint64
}

// Fetch reads records of log from offset, from a replica the client
// chooses; a replica that does not have offset yet defers to the leader
// (or, when the client cannot address the leader, the read is repeated
// linearizably).
func (c *Client) Fetch(ctx context.Context, log string, offset uint64, fo FetchOptions) (Batch, error) {
	req := protocol.ReadRequest{Offset: offset, Max: fo.Max, MaxBytes: fo.MaxBytes,
		WaitMs: fo.Wait.Milliseconds(), MinOffset: fo.MinOffset, MinIndex: fo.MinIndex, Linearizable: fo.Linearizable}
	if !fo.StartTime.IsZero() {
		t := fo.StartTime.UnixNano()
		req.StartTime = &t
	}
	body := req.AppendMsgpack(nil)
	hdr := nats.Header{protocol.HeaderContentType: {protocol.ContentTypeMsgpack}}
	var node string
	m, err := c.do(ctx, "fetch", log, true, fo.Wait, c.readMsg(log, body, hdr, &node))
	if leader, ok := c.behind(err, node); ok && !req.Linearizable {
		if leader == "" {
			req.Linearizable = true
			body = req.AppendMsgpack(nil)
		}
		m, err = c.do(ctx, "fetch", log, true, fo.Wait, func(int) *nats.Msg {
			return &nats.Msg{Subject: c.nodeReadSubject(leader, log), Data: body, Header: hdr}
		})
	}
	if err != nil {
		return Batch{}, err
	}
	rep, err := protocol.DecodeReadReply(m.Data)
	if err != nil {
		return Batch{}, &Error{Op: "fetch", Log: log, Err: err}
	}
	b := Batch{Records: make([]Record, len(rep.Records)), Next: rep.Next, Lowest: rep.Lowest, End: rep.End, Index: rep.Index}
	for i, r := range rep.Records {
		b.Records[i] = Record{Offset: r.Offset, Time: r.Time, Headers: nats.Header(r.Headers), Value: r.Value}
	}
	return b, nil
}

// ConsumeOption sets where a consumer starts and how it polls.
type ConsumeOption func(*consumeOpts)

type consumeOpts struct {
	from      uint64
	fromTime  time.Time
	fromStart bool
	fromEnd   bool
	batch     int
	wait      time.Duration
}

// FromOffset starts at offset.
func FromOffset(off uint64) ConsumeOption {
	return func(o *consumeOpts) { *o = consumeOpts{from: off, batch: o.batch, wait: o.wait} }
}

// FromTime starts at the first record at or after t.
func FromTime(t time.Time) ConsumeOption {
	return func(o *consumeOpts) { *o = consumeOpts{fromTime: t, batch: o.batch, wait: o.wait} }
}

// FromStart starts at the log's oldest record (the default).
func FromStart() ConsumeOption {
	return func(o *consumeOpts) { *o = consumeOpts{fromStart: true, batch: o.batch, wait: o.wait} }
}

// FromEnd starts after the log's newest record: only new records.
func FromEnd() ConsumeOption {
	return func(o *consumeOpts) { *o = consumeOpts{fromEnd: true, batch: o.batch, wait: o.wait} }
}

// WithBatchSize sets the most records a consumer asks for at once (2000;
// the node also bounds a reply by the NATS max payload).
func WithBatchSize(n int) ConsumeOption { return func(o *consumeOpts) { o.batch = n } }

// WithPollWait sets how long a consumer's read waits at the end of the
// log before it asks again (5 s; the node caps it with --max-read-wait).
func WithPollWait(d time.Duration) ConsumeOption { return func(o *consumeOpts) { o.wait = d } }

// errStop ends Consume from Records when the loop breaks.
var errStop = errors.New("stop")

// Consume calls fn with every record of log from the starting point (see
// FromOffset, FromTime, FromStart, FromEnd) in offset order, waiting for
// new records as they are appended, until ctx ends (it returns ctx's
// error) or fn returns an error (it returns that error). It reads from
// replicas the client chooses and goes on through node failures and
// leader changes from the offset after the last one it delivered, never
// skipping or repeating one: a replica that is behind waits until it has
// caught up before it answers. It waits for a log that does not exist
// yet. It fails if records it has not delivered are removed by retention
// before it reads them (ErrOffsetOutOfRange).
func (c *Client) Consume(ctx context.Context, log string, fn func(Record) error, opts ...ConsumeOption) error {
	o := consumeOpts{fromStart: true, batch: 2000, wait: 5 * time.Second}
	for _, f := range opts {
		f(&o)
	}
	// The next batch is fetched while fn works through the current one;
	// fctx stops that fetch when Consume returns.
	fctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type fetched struct {
		b   Batch
		err error
	}
	// index is the highest Raft index a reply said its replica had
	// applied (0: none yet, or a standalone node).
	var index uint64
	fetch := func(off uint64) <-chan fetched {
		fo := FetchOptions{Max: o.batch, Wait: o.wait, MinIndex: index}
		if off > 0 {
			// A replica must hold everything before off: one that is
			// behind (after a failover, say) waits to catch up
			// instead of answering "out of range". With MinIndex it
			// also waits until it has the history the records
			// delivered came from: one that has not seen the log
			// deleted and created again would otherwise hold the
			// old log's offsets and answer from it.
			mo := off - 1
			fo.MinOffset = &mo
		}
		ch := make(chan fetched, 1)
		go func() {
			b, err := c.Fetch(fctx, log, off, fo)
			ch <- fetched{b, err}
		}()
		return ch
	}
	backoff := c.opts.backoffMin
	pause := func() error {
		t := time.NewTimer(backoff)
		defer t.Stop()
		backoff = min(2*backoff, c.opts.backoffMax)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.ctx.Done():
			return &Error{Op: "consume", Log: log, Err: ErrClosed}
		case <-t.C:
			return nil
		}
	}

	// Where to start.
	var next uint64
	for started := false; !started; {
		if err := ctx.Err(); err != nil {
			return err
		}
		switch {
		case !o.fromTime.IsZero():
			b, err := c.Fetch(ctx, log, 0, FetchOptions{Max: 1, StartTime: o.fromTime})
			if err == nil {
				next, started, index = b.Next-uint64(len(b.Records)), true, b.Index
				continue
			}
			if retry, _ := outcome(err); !retry && !errors.Is(err, protocol.ErrUnknownLog) && !IsIndefinite(err) {
				return err
			}
		case o.fromStart || o.fromEnd:
			info, err := c.Info(ctx, log)
			if err == nil && o.fromEnd {
				// Any replica answers Info, one behind with an end
				// that has passed: the end is taken from a
				// linearizable read at that offset (which a replica
				// behind cannot have gone beyond), so that no record
				// appended before Consume was called is delivered.
				var b Batch
				if b, err = c.Fetch(ctx, log, info.NextOffset, FetchOptions{Max: 1, Linearizable: true}); err == nil {
					next, started, index = b.End, true, b.Index
					continue
				}
			} else if err == nil {
				next, started = info.FirstOffset, true
				continue
			}
			// Out of range: the log was recreated between the two
			// reads; ask again.
			if retry, _ := outcome(err); !retry && !errors.Is(err, protocol.ErrUnknownLog) && !IsIndefinite(err) && !errors.Is(err, protocol.ErrOffsetOutOfRange) {
				return err
			}
		default:
			next, started = o.from, true
			continue
		}
		if err := pause(); err != nil {
			return err
		}
	}

	// queue holds the fetches in flight, in offset order: the one at next,
	// and, while whole batches beyond it are known to exist, one more at
	// the offset it will end at if it comes back full. A fetch that no
	// longer starts at next (the batch before it came back short) is
	// dropped; its goroutine ends into its buffered channel.
	type inflight struct {
		off uint64
		ch  <-chan fetched
	}
	queue := []inflight{{next, fetch(next)}}
	delivered := false
	for {
		p := queue[0]
		queue = queue[1:]
		if p.off != next {
			if len(queue) == 0 {
				queue = append(queue, inflight{next, fetch(next)})
			}
			continue
		}
		var r fetched
		select {
		case r = <-p.ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		if r.err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			if errors.Is(r.err, protocol.ErrOffsetOutOfRange) && !delivered && o.fromStart {
				// The oldest records went meanwhile: start again at
				// the new oldest.
				info, err := c.Info(ctx, log)
				if err != nil {
					return err
				}
				next = info.FirstOffset
			} else if retry, _ := outcome(r.err); !retry && !errors.Is(r.err, protocol.ErrUnknownLog) && !IsIndefinite(r.err) {
				return r.err
			} else if err := pause(); err != nil {
				return err
			}
			queue = []inflight{{next, fetch(next)}}
			continue
		}
		backoff = c.opts.backoffMin
		b := r.b
		index = max(index, b.Index)
		if len(b.Records) > 0 && b.Records[0].Offset != next {
			return &Error{Op: "consume", Log: log, Err: fmt.Errorf("got offset %d, want %d", b.Records[0].Offset, next)}
		}
		end := next + uint64(len(b.Records))
		if len(queue) == 0 || queue[0].off != end {
			queue = append(queue[:0], inflight{end, fetch(end)})
		}
		if ahead := end + uint64(o.batch); len(queue) == 1 && len(b.Records) == o.batch && b.End >= ahead+uint64(o.batch) {
			// A whole batch beyond the next one exists: read it too.
			queue = append(queue, inflight{ahead, fetch(ahead)})
		}
		for _, rec := range b.Records {
			if rec.Offset != next {
				return &Error{Op: "consume", Log: log, Err: fmt.Errorf("got offset %d, want %d", rec.Offset, next)}
			}
			if err := fn(rec); err != nil {
				return err
			}
			next++
			delivered = true
		}
	}
}

// Records iterates over the records of log as Consume delivers them. An
// error ends the iteration with (Record{}, err).
func (c *Client) Records(ctx context.Context, log string, opts ...ConsumeOption) iter.Seq2[Record, error] {
	return func(yield func(Record, error) bool) {
		err := c.Consume(ctx, log, func(r Record) error {
			if !yield(r, nil) {
				return errStop
			}
			return nil
		}, opts...)
		if err != nil && err != errStop {
			yield(Record{}, err)
		}
	}
}

// Info describes log (any node answers, from what it has applied).
func (c *Client) Info(ctx context.Context, log string) (protocol.LogInfo, error) {
	var info protocol.LogInfo
	m, err := c.do(ctx, "info", log, true, 0, func(int) *nats.Msg { return &nats.Msg{Subject: c.subjects.Info(log)} })
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(m.Data, &info); err != nil {
		return info, &Error{Op: "info", Log: log, Err: err}
	}
	return info, nil
}

// Logs lists the logs, sorted by name.
func (c *Client) Logs(ctx context.Context) ([]protocol.LogInfo, error) {
	var rep protocol.LogsReply
	m, err := c.do(ctx, "logs", "", true, 0, func(int) *nats.Msg { return &nats.Msg{Subject: c.subjects.Logs()} })
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(m.Data, &rep); err != nil {
		return nil, &Error{Op: "logs", Err: err}
	}
	return rep.Logs, nil
}

// Create creates log with its own settings (idempotent for equal ones).
func (c *Client) Create(ctx context.Context, log string, settings protocol.LogSettings) (protocol.LogInfo, error) {
	var info protocol.LogInfo
	body, err := json.Marshal(settings)
	if err != nil {
		return info, err
	}
	m, err := c.do(ctx, "create", log, true, 0, func(int) *nats.Msg { return &nats.Msg{Subject: c.subjects.Create(log), Data: body} })
	if err != nil {
		return info, err
	}
	if err := json.Unmarshal(m.Data, &info); err != nil {
		return info, &Error{Op: "create", Log: log, Err: err}
	}
	return info, nil
}

// Delete deletes log and all its records.
func (c *Client) Delete(ctx context.Context, log string) error {
	_, err := c.do(ctx, "delete", log, false, 0, func(int) *nats.Msg { return &nats.Msg{Subject: c.subjects.Delete(log)} })
	return err
}

// RemoveNode removes member id from the cluster's Raft configuration,
// through the leader: for a node that crashed and will not come back (a
// running node announces itself and is added back).
func (c *Client) RemoveNode(ctx context.Context, id string) error {
	_, err := c.do(ctx, "remove", "", false, 0, func(int) *nats.Msg {
		return &nats.Msg{Subject: c.subjects.Prefix() + ".cluster.remove", Data: []byte(id)}
	})
	return err
}

// StepDown has the cluster's leader hand its leadership to the voter to,
// or to any other voter if to is empty (before maintenance of the leader's
// machine, or to move the leader next to the NATS server the clients use),
// and returns the new leader. An untargeted step-down is not idempotent:
// a retry may move the leadership again.
func (c *Client) StepDown(ctx context.Context, to string) (string, error) {
	m, err := c.do(ctx, "stepdown", "", false, 10*time.Second, func(int) *nats.Msg {
		return &nats.Msg{Subject: c.subjects.Prefix() + ".cluster.stepdown", Data: []byte(to)}
	})
	if err != nil {
		return "", err
	}
	var r struct {
		Leader string `json:"leader"`
	}
	if err := json.Unmarshal(m.Data, &r); err != nil {
		return "", &Error{Op: "stepdown", Err: fmt.Errorf("reply: %w", err)}
	}
	return r.Leader, nil
}
