package bench

// Everything that talks to natlog is in this file, behind the target
// interface, and it goes through natlog's Go client package (client/), so
// the figures are what an application using it gets: AppendAsync with its
// batching for the window mode, Append one at a time, AppendBatch, Read,
// Fetch and Consume with the client's read routing (reads go round-robin
// to the followers in a cluster). Every append carries the client's
// Natlog-Msg-Id, as it does for applications.

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/client"
	"github.com/natlog/natlog/sidecar/protocol"
)

// natlogTarget drives one natlog log through the client.
type natlogTarget struct {
	cl *client.Client
	// readCl, if set, serves Read: a client preferring one node.
	readCl *client.Client
	log    string
	// next is where the next Fetch starts.
	next uint64
	// batch caches the records of the last AppendBatch.
	batch []client.Record
}

var _ target = (*natlogTarget)(nil)

// dialNatlog connects to the natlog node or cluster at url (its NATS) for
// log under the default prefix, with at most window appends pending in
// AppendWindow.
// readNode, if not empty, is the node that single-record reads prefer.
func dialNatlog(ctx context.Context, url, log string, window int, readNode string) (*natlogTarget, error) {
	timeout := 30 * time.Second
	if d, ok := ctx.Deadline(); ok {
		timeout = max(time.Until(d), time.Millisecond)
	}
	opts := []client.Option{client.WithNATSOptions(nats.Name("natlog-bench"), nats.MaxReconnects(-1)),
		client.WithMaxPending(max(window, 1)), client.WithRequestTimeout(min(timeout, opTimeout))}
	cl, err := client.Dial(url, opts...)
	if err != nil {
		return nil, fmt.Errorf("natlog: connect %s: %w", url, err)
	}
	t := &natlogTarget{cl: cl, log: log}
	if readNode != "" {
		if t.readCl, err = client.Dial(url, append(opts, client.WithPreferredNode(readNode))...); err != nil {
			cl.Close()
			return nil, fmt.Errorf("natlog: connect %s: %w", url, err)
		}
	}
	return t, nil
}

func (t *natlogTarget) Close() {
	t.cl.Close()
	if t.readCl != nil {
		t.readCl.Close()
	}
}

// natlogNotReady reports whether err means the cluster has no leader
// taking requests yet: worth retrying during setup.
func natlogNotReady(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, protocol.ErrNotLeader) ||
		errors.Is(err, protocol.ErrUnavailable)
}

// waitReady polls the cluster status until there is a leader and every one
// of the n members is present (leader or follower).
func (t *natlogTarget) waitReady(ctx context.Context, n int) error {
	var last string
	err := retry(ctx, 50*time.Millisecond, func() error {
		sctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := t.cl.Status(sctx)
		cancel()
		if err != nil {
			return err
		}
		up := 0
		for _, p := range st.Peers {
			if p.State == "leader" || p.State == "follower" {
				up++
			}
		}
		if st.Leader == "" || (n > 1 && up < n) {
			last = fmt.Sprintf("leader %q, %d of %d members up", st.Leader, up, n)
			return errNotReady
		}
		return nil
	}, func(err error) bool { return err == errNotReady || natlogNotReady(err) })
	if err != nil && last != "" {
		return fmt.Errorf("natlog not ready (%s): %w", last, err)
	}
	return err
}

var errNotReady = errors.New("not ready")

// leadFrom has the cluster's leadership moved to node id (natlog cluster
// step-down), retrying while an election is under way.
func (t *natlogTarget) leadFrom(ctx context.Context, id string) error {
	return retry(ctx, 50*time.Millisecond, func() error {
		sctx, cancel := context.WithTimeout(ctx, 15*time.Second)
		defer cancel()
		leader, err := t.cl.StepDown(sctx, id)
		if err == nil && leader != id {
			return fmt.Errorf("%w: step-down to %s left %s leading", errNotReady, id, leader)
		}
		return err
	}, func(err error) bool { return errors.Is(err, errNotReady) || natlogNotReady(err) })
}

// Setup creates the log; the create subject is served by the leader only,
// so its success also means the leader takes appends.
func (t *natlogTarget) Setup(ctx context.Context) error {
	return retry(ctx, 50*time.Millisecond, func() error {
		_, err := t.cl.Create(ctx, t.log, protocol.LogSettings{})
		return err
	}, natlogNotReady)
}

// deleteLog removes the log (for runs against an existing deployment).
func (t *natlogTarget) deleteLog(ctx context.Context) error {
	return t.cl.Delete(ctx, t.log)
}

func (t *natlogTarget) Append(ctx context.Context, payload []byte) error {
	_, err := t.cl.Append(ctx, t.log, payload)
	return err
}

// AppendWindow appends with AppendAsync, which blocks while window records
// are pending; a second goroutine takes the futures in order and records
// each record's latency from its AppendAsync call to its acknowledgement.
func (t *natlogTarget) AppendWindow(ctx context.Context, payload []byte, window int, until time.Time, lat *latencies) (int64, error) {
	type sent struct {
		f  *client.AppendFuture
		t0 time.Time
	}
	futs := make(chan sent, window)
	done := make(chan error, 1)
	var n int64
	go func() {
		var first error
		for s := range futs {
			if err := s.f.Err(); err != nil {
				if first == nil {
					first = err
				}
				continue
			}
			lat.record(time.Since(s.t0))
			n++
		}
		done <- first
	}()
	var err error
	for time.Now().Before(until) && ctx.Err() == nil {
		t0 := time.Now()
		var f *client.AppendFuture
		if f, err = t.cl.AppendAsync(ctx, t.log, payload); err != nil {
			break
		}
		futs <- sent{f, t0}
	}
	close(futs)
	if ferr := <-done; err == nil {
		err = ferr
	}
	if err == nil {
		err = ctx.Err()
	}
	return n, err
}

// AppendBatch appends the records in one atomic request.
func (t *natlogTarget) AppendBatch(ctx context.Context, payloads [][]byte) error {
	if len(t.batch) != len(payloads) {
		t.batch = make([]client.Record, len(payloads))
	}
	for i, p := range payloads {
		t.batch[i].Value = p
	}
	r, err := t.cl.AppendBatch(ctx, t.log, t.batch)
	if err != nil {
		return err
	}
	if r.Count != len(payloads) {
		return fmt.Errorf("natlog: batch of %d acknowledged %d records", len(payloads), r.Count)
	}
	return nil
}

func (t *natlogTarget) Read(ctx context.Context, off uint64) error {
	cl := t.cl
	if t.readCl != nil {
		cl = t.readCl
	}
	r, err := cl.Read(ctx, t.log, off)
	if err != nil {
		return err
	}
	if r.Offset != off {
		return fmt.Errorf("natlog: read %d answered offset %d", off, r.Offset)
	}
	return nil
}

func (t *natlogTarget) Fetch(ctx context.Context, max int, total uint64) (int, error) {
	if t.next >= total {
		t.next = 0
	}
	b, err := t.cl.Fetch(ctx, t.log, t.next, client.FetchOptions{Max: int(min(uint64(max), total-t.next))})
	if err != nil {
		return 0, err
	}
	if len(b.Records) == 0 {
		return 0, fmt.Errorf("natlog: read at %d of a log ending at %d returned nothing", t.next, b.End)
	}
	t.next = b.Next
	return len(b.Records), nil
}

// Settle waits until every member has applied what the leader has
// committed: the client routes reads to followers, and a follower that is
// behind would send them on to the leader.
func (t *natlogTarget) Settle(ctx context.Context, total uint64) error {
	if total == 0 {
		return nil
	}
	st, err := t.cl.Status(ctx)
	if err != nil || st.Mode != "cluster" {
		return err
	}
	lst, err := t.cl.StatusOf(ctx, st.Leader)
	if err != nil {
		return err
	}
	for _, p := range lst.Peers {
		err := retry(ctx, 10*time.Millisecond, func() error {
			ps, err := t.cl.StatusOf(ctx, p.ID)
			if err == nil && ps.AppliedIndex < lst.CommitIndex {
				return errNotReady
			}
			return err
		}, func(err error) bool { return err == errNotReady || natlogNotReady(err) })
		if err != nil {
			return fmt.Errorf("natlog: %s catching up: %w", p.ID, err)
		}
	}
	return nil
}

// errConsumed ends Consume once total records arrived.
var errConsumed = errors.New("consumed")

// Consume streams the log from offset 0 with the client's Consume.
func (t *natlogTarget) Consume(ctx context.Context, total uint64, every int, each func()) error {
	if total == 0 {
		return nil
	}
	var got uint64
	k := 0
	err := t.cl.Consume(ctx, t.log, func(r client.Record) error {
		if r.Offset != got {
			return fmt.Errorf("natlog: consumed offset %d, want %d", r.Offset, got)
		}
		got++
		if k++; k == every {
			each()
			k = 0
		}
		if got == total {
			return errConsumed
		}
		return nil
	}, client.FromOffset(0), client.WithBatchSize(every), client.WithPollWait(time.Second))
	if errors.Is(err, errConsumed) {
		return nil
	}
	return err
}
