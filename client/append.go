package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/sidecar/protocol"
)

// Record is a record of a log. Offset and Time are set on records read
// (Time in Unix nanoseconds); appends ignore them.
type Record struct {
	Offset  uint64
	Time    int64
	Headers nats.Header
	Value   []byte
}

// AppendOption modifies an append.
type AppendOption func(*appendOpts)

type appendOpts struct {
	headers  nats.Header
	msgID    string
	expected *uint64
}

// WithHeaders stores headers with the record (Append) or sets the
// request's headers (AppendBatch: each record carries its own).
func WithHeaders(h nats.Header) AppendOption { return func(o *appendOpts) { o.headers = h } }

// WithMsgID sets the append's Natlog-Msg-Id instead of the client's own
// "<producer>-<sequence>": to retry an append whose outcome was indefinite
// (IsIndefinite) without writing it twice.
func WithMsgID(id string) AppendOption { return func(o *appendOpts) { o.msgID = id } }

// WithExpectedOffset makes the append conditional: it is written only if
// the log's next offset is off, and fails with ErrExpectedOffset otherwise.
func WithExpectedOffset(off uint64) AppendOption {
	return func(o *appendOpts) { o.expected = &off }
}

// AppendResult is the outcome of an append.
type AppendResult struct {
	// First and Last are the offsets of the first and last record
	// appended (equal for one record); Count is how many.
	First, Last uint64
	Count       int
	// Duplicate says the node had seen the append's Natlog-Msg-Id: it
	// was not written again, and the offsets are the first append's.
	Duplicate bool
	// Index is the Raft index of the entry that applied the append (0
	// from a standalone node): FetchOptions.MinIndex set to it makes any
	// replica read only once it holds the append, and never from a log
	// that was deleted before it (which min_offset cannot tell apart
	// from the log that replaced it). The client also keeps the highest
	// one it got (LastIndex).
	Index uint64
}

// Append appends one record to log and returns its offset, once the node
// acknowledged it (with the default fsync policy: on stable storage, on a
// quorum in a cluster). It retries through elections and timeouts with
// the same Natlog-Msg-Id, so a retry never writes the record twice.
func (c *Client) Append(ctx context.Context, log string, value []byte, opts ...AppendOption) (uint64, error) {
	r, err := c.appendOne(ctx, log, value, opts...)
	return r.First, err
}

// appendOne is Append with the whole result.
func (c *Client) appendOne(ctx context.Context, log string, value []byte, opts ...AppendOption) (AppendResult, error) {
	var o appendOpts
	for _, f := range opts {
		f(&o)
	}
	hdr := make(nats.Header, len(o.headers)+2)
	for k, v := range o.headers {
		hdr[k] = v
	}
	if hdr.Get(protocol.HeaderContentType) == protocol.ContentTypeMsgpack {
		// That content type makes the body a batch: send one.
		return c.AppendBatch(ctx, log, []Record{{Value: value, Headers: o.headers}}, opts...)
	}
	c.stampHeaders(hdr, &o)
	msg := &nats.Msg{Subject: c.subjects.Append(log), Data: value, Header: hdr}
	m, err := c.do(ctx, "append", log, true, 0, func(int) *nats.Msg { return msg })
	if err != nil {
		return AppendResult{}, err
	}
	var rep protocol.AppendReply
	if err := json.Unmarshal(m.Data, &rep); err != nil {
		return AppendResult{}, &Error{Op: "append", Log: log, Err: err, Indefinite: true}
	}
	c.noteIndex(rep.Index)
	return AppendResult{First: rep.Offset, Last: rep.Offset, Count: 1, Duplicate: rep.Duplicate, Index: rep.Index}, nil
}

// noteIndex raises LastIndex to index.
func (c *Client) noteIndex(index uint64) {
	for cur := c.lastIndex.Load(); cur < index && !c.lastIndex.CompareAndSwap(cur, index); cur = c.lastIndex.Load() {
	}
}

// LastIndex is the highest Raft index of the appends this client has had
// acknowledged (0 if none, or only by a standalone node). With it as
// FetchOptions.MinIndex a read sees every one of them, from whichever
// replica answers: read-your-writes for the whole client, whatever was
// deleted and created again meanwhile.
func (c *Client) LastIndex() uint64 { return c.lastIndex.Load() }

// stampHeaders sets an append request's msg id and expected offset.
func (c *Client) stampHeaders(hdr nats.Header, o *appendOpts) {
	if o.msgID == "" && hdr.Get(protocol.HeaderMsgID) == "" {
		o.msgID = c.nextMsgID()
	}
	if o.msgID != "" {
		hdr[protocol.HeaderMsgID] = []string{o.msgID}
	}
	if o.expected != nil {
		hdr[protocol.HeaderExpectedOffset] = []string{strconv.FormatUint(*o.expected, 10)}
	}
}

// AppendBatch appends records to log atomically and in order, with
// consecutive offsets, in one request (one fsync). Retries carry the same
// Natlog-Msg-Id. WithHeaders here sets headers of the request, not of the
// records (only Natlog-Msg-Id and Natlog-Expected-Offset mean anything).
func (c *Client) AppendBatch(ctx context.Context, log string, records []Record, opts ...AppendOption) (AppendResult, error) {
	var o appendOpts
	for _, f := range opts {
		f(&o)
	}
	if len(records) == 0 {
		return AppendResult{}, nil
	}
	hdr := make(nats.Header, len(o.headers)+3)
	for k, v := range o.headers {
		hdr[k] = v
	}
	hdr[protocol.HeaderContentType] = []string{protocol.ContentTypeMsgpack}
	c.stampHeaders(hdr, &o)
	msg := &nats.Msg{Subject: c.subjects.Append(log), Data: encodeBatch(records), Header: hdr}
	return c.sendBatch(ctx, log, msg)
}

func (c *Client) sendBatch(ctx context.Context, log string, msg *nats.Msg) (AppendResult, error) {
	m, err := c.do(ctx, "append", log, true, 0, func(int) *nats.Msg { return msg })
	if err != nil {
		return AppendResult{}, err
	}
	var rep protocol.AppendBatchReply
	if err := json.Unmarshal(m.Data, &rep); err != nil {
		return AppendResult{}, &Error{Op: "append", Log: log, Err: err, Indefinite: true}
	}
	c.noteIndex(rep.Index)
	return AppendResult{First: rep.First, Last: rep.Last, Count: rep.Count, Duplicate: rep.Duplicate, Index: rep.Index}, nil
}

func encodeBatch(records []Record) []byte {
	req := protocol.AppendBatchRequest{Records: make([]protocol.AppendRecord, len(records))}
	size := 16
	for i, r := range records {
		req.Records[i] = protocol.AppendRecord{Value: r.Value, Headers: protocol.Headers(r.Headers)}
		size += len(r.Value) + 16
		for k, vs := range r.Headers {
			size += len(k) + 8
			for _, v := range vs {
				size += len(v) + 4
			}
		}
	}
	return req.AppendMsgpack(make([]byte, 0, size))
}

// AppendFuture is the outcome of an AppendAsync, once Done is closed.
type AppendFuture struct {
	done   chan struct{}
	offset uint64
	index  uint64
	err    error
}

// Done is closed when the append has been acknowledged or has failed.
func (f *AppendFuture) Done() <-chan struct{} { return f.done }

// Offset is the record's offset; valid once Done is closed and Err is nil.
func (f *AppendFuture) Offset() uint64 { <-f.done; return f.offset }

// Index is the Raft index of the entry that applied the record's batch
// (see AppendResult.Index; 0 from a standalone node); valid once Done is
// closed and Err is nil.
func (f *AppendFuture) Index() uint64 { <-f.done; return f.index }

// Err is the append's error; valid once Done is closed.
func (f *AppendFuture) Err() error { <-f.done; return f.err }

// Wait waits for the outcome, or for ctx.
func (f *AppendFuture) Wait(ctx context.Context) (uint64, error) {
	select {
	case <-f.done:
		return f.offset, f.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// AppendAsync queues one record for log and returns at once with a future
// of its outcome, or blocks (until ctx ends) while WithMaxPending records
// are already pending. Records queued for one log go out in batches, one
// request in flight per log: while one is being acknowledged the next
// ones gather, so a busy producer sends large batches (one fsync each)
// and a quiet one single records. After a batch that filled the window,
// the next waits briefly (at most 1 ms) for the window to refill, so
// that a producer held back by the window sends full batches. Records of
// one client to one log are appended in the order AppendAsync was called,
// also across retries, each exactly once. A batch that fails (after retrying for
// WithAsyncTimeout) fails all its futures with the same error. AppendAsync
// copies value and the headers of WithHeaders before it returns: the
// caller may reuse them at once.
func (c *Client) AppendAsync(ctx context.Context, log string, value []byte, opts ...AppendOption) (*AppendFuture, error) {
	var o appendOpts
	for _, f := range opts {
		f(&o)
	}
	if o.expected != nil || o.msgID != "" {
		return nil, &Error{Op: "append", Log: log, Err: errAsyncOption}
	}
	if err := protocol.CheckLogName(log); err != nil {
		return nil, &Error{Op: "append", Log: log, Err: err}
	}
	if c.closed.Load() {
		return nil, &Error{Op: "append", Log: log, Err: ErrClosed}
	}
	select {
	case c.window <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-c.ctx.Done():
		return nil, &Error{Op: "append", Log: log, Err: ErrClosed}
	}
	c.closeMu.RLock()
	defer c.closeMu.RUnlock()
	if c.closed.Load() {
		<-c.window
		return nil, &Error{Op: "append", Log: log, Err: ErrClosed}
	}
	f := &AppendFuture{done: make(chan struct{})}
	// The record is sent later, from another goroutine: copy what the
	// caller may reuse.
	rec := Record{Value: bytes.Clone(value), Headers: cloneHeader(o.headers)}
	c.producerFor(log).enqueue(pending{rec: rec, f: f})
	return f, nil
}

type asyncOptionError struct{}

func (asyncOptionError) Error() string {
	return "AppendAsync takes no expected offset or msg id (it sets its own per batch); use Append"
}

var errAsyncOption error = asyncOptionError{}

// cloneHeader returns a deep copy of h (nil for nil).
func cloneHeader(h nats.Header) nats.Header {
	if h == nil {
		return nil
	}
	c := make(nats.Header, len(h))
	for k, vs := range h {
		c[k] = slices.Clone(vs)
	}
	return c
}

// Flush waits until every record queued with AppendAsync before the call
// has been acknowledged or has failed, or until ctx ends (it returns ctx's
// error). It may be called concurrently, with AppendAsync too.
func (c *Client) Flush(ctx context.Context) error {
	c.prodMu.Lock()
	ps := make([]*producer, 0, len(c.producers))
	for _, p := range c.producers {
		ps = append(ps, p)
	}
	c.prodMu.Unlock()
	for _, p := range ps {
		if err := p.flush(ctx); err != nil {
			return err
		}
	}
	return nil
}

type pending struct {
	rec Record
	f   *AppendFuture
}

// producer sends one log's queued records, one batch at a time.
type producer struct {
	c       *Client
	log     string
	mu      sync.Mutex
	queue   []pending
	sending bool
	// enqueued and completed count the records queued and those whose
	// futures are done; batches complete in queue order, so the done
	// ones are the first completed queued. flushed, when not nil, is
	// closed (and cleared) when completed grows: Flush waits on it.
	enqueued, completed uint64
	flushed             chan struct{}
	// want, when not 0, is the queue length the producer waits for
	// before its next batch; enqueue signals grown when it is reached.
	want  int
	grown chan struct{} // buffered(1)
}

func (c *Client) producerFor(log string) *producer {
	c.prodMu.Lock()
	defer c.prodMu.Unlock()
	p := c.producers[log]
	if p == nil {
		p = &producer{c: c, log: log, grown: make(chan struct{}, 1)}
		c.producers[log] = p
	}
	return p
}

func (p *producer) enqueue(r pending) {
	p.mu.Lock()
	p.queue = append(p.queue, r)
	p.enqueued++
	start := !p.sending
	p.sending = true
	signal := p.want > 0 && len(p.queue) >= p.want
	if signal {
		p.want = 0
	}
	p.mu.Unlock()
	if signal {
		select {
		case p.grown <- struct{}{}:
		default:
		}
	}
	if start {
		p.c.wg.Add(1)
		go p.run()
	}
}

// run sends batches until the queue is empty.
func (p *producer) run() {
	defer p.c.wg.Done()
	maxBytes := int(p.c.nc.MaxPayload()) - 4096
	for {
		p.mu.Lock()
		n, size := 0, 0
		for n < len(p.queue) && n < p.c.opts.maxBatch {
			rs := len(p.queue[n].rec.Value) + 64
			for k, vs := range p.queue[n].rec.Headers {
				rs += len(k) + 8*len(vs)
				for _, v := range vs {
					rs += len(v)
				}
			}
			if n > 0 && size+rs > maxBytes {
				break
			}
			size += rs
			n++
		}
		if n == 0 {
			p.sending = false
			p.mu.Unlock()
			return
		}
		batch := p.queue[:n:n]
		p.queue = p.queue[n:]
		if len(p.queue) == 0 {
			p.queue = nil // let the backing array go
		}
		p.mu.Unlock()
		t0 := time.Now()
		p.send(batch)
		p.mu.Lock()
		p.completed += uint64(len(batch))
		if p.flushed != nil {
			close(p.flushed)
			p.flushed = nil
		}
		p.mu.Unlock()
		p.linger(len(batch), time.Since(t0))
	}
}

// flush waits until the records queued before the call are done.
func (p *producer) flush(ctx context.Context) error {
	p.mu.Lock()
	target := p.enqueued
	for p.completed < target {
		if p.flushed == nil {
			p.flushed = make(chan struct{})
		}
		ch := p.flushed
		p.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
		p.mu.Lock()
	}
	p.mu.Unlock()
	return nil
}

// linger waits, after a batch of sent records came back, for the
// application to refill the window when that batch had filled it: the
// application was then blocked in AppendAsync, and the next batch would
// otherwise leave with the one or two records it managed to queue, a
// whole round trip for almost nothing, every other round trip. It waits
// until half the freed slots are queued again, or a quarter of the last
// round trip (at most 1 ms), whichever comes first.
func (p *producer) linger(sent int, rtt time.Duration) {
	w := cap(p.c.window)
	p.mu.Lock()
	q := len(p.queue)
	want := min(q+sent/2, p.c.opts.maxBatch)
	if q+sent < w || q >= want {
		p.mu.Unlock()
		return
	}
	p.want = want
	select {
	case <-p.grown: // a stale signal
	default:
	}
	p.mu.Unlock()
	t := time.NewTimer(min(max(rtt/4, 50*time.Microsecond), time.Millisecond))
	defer t.Stop()
	select {
	case <-p.grown:
	case <-t.C:
	case <-p.c.ctx.Done():
	}
	p.mu.Lock()
	p.want = 0
	p.mu.Unlock()
}

func (p *producer) send(batch []pending) {
	c := p.c
	ctx, cancel := context.WithTimeout(c.ctx, c.opts.asyncTimeout)
	defer cancel()
	var r AppendResult
	var err error
	if len(batch) == 1 && batch[0].rec.Headers.Get(protocol.HeaderContentType) != protocol.ContentTypeMsgpack {
		r, err = c.appendOne(ctx, p.log, batch[0].rec.Value, WithHeaders(batch[0].rec.Headers))
	} else {
		recs := make([]Record, len(batch))
		for i := range batch {
			recs[i] = batch[i].rec
		}
		r, err = c.AppendBatch(ctx, p.log, recs)
		if err == nil && r.Count != len(batch) {
			// first+i would name records of another append (a
			// duplicate of an older batch with the same id).
			err = &Error{Op: "append", Log: p.log, Indefinite: true, Attempts: 1,
				Err: fmt.Errorf("the node acknowledged %d records at offset %d for a batch of %d", r.Count, r.First, len(batch))}
		}
	}
	if err != nil && c.ctx.Err() != nil {
		var e *Error
		if !errors.As(err, &e) || e.Err != ErrClosed {
			err = &Error{Op: "append", Log: p.log, Err: ErrClosed, Indefinite: IsIndefinite(err)}
		}
	}
	for i := range batch {
		f := batch[i].f
		if err != nil {
			f.err = err
		} else {
			f.offset, f.index = r.First+uint64(i), r.Index
		}
		close(f.done)
		<-c.window
	}
}
