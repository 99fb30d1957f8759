package bench

// Everything that talks to natlog is in this file, behind the target
// interface, so that it can move to natlog's Go client package once that
// exists. For now it speaks the wire protocol (docs/protocol.md) with
// nats.go and the shared wire types of sidecar/protocol.

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/sidecar/protocol"
)

// natlogTarget drives one natlog log over raw NATS requests.
type natlogTarget struct {
	nc   *nats.Conn
	subj protocol.Subjects
	log  string

	appendSubj, readSubj string
	// next is where the next Fetch starts.
	next uint64
	// batchBody caches the msgpack body of the last AppendBatch.
	batchBody []byte
	batchKey  [2]int // records, payload size of batchBody
}

var _ target = (*natlogTarget)(nil)

// dialNatlog connects to the natlog node or cluster at url (its NATS) for
// log under the default prefix.
func dialNatlog(url, log string) (*natlogTarget, error) {
	nc, err := nats.Connect(url, nats.Name("natlog-bench"), nats.MaxReconnects(-1))
	if err != nil {
		return nil, fmt.Errorf("natlog: connect %s: %w", url, err)
	}
	subj, _ := protocol.NewSubjects("")
	return &natlogTarget{nc: nc, subj: subj, log: log, appendSubj: subj.Append(log), readSubj: subj.Read(log)}, nil
}

func (t *natlogTarget) Close() { t.nc.Close() }

// request sends one request and returns the reply, or the error it
// carries.
func (t *natlogTarget) request(ctx context.Context, m *nats.Msg) (*nats.Msg, error) {
	ctx, cancel := context.WithTimeout(ctx, opTimeout)
	defer cancel()
	rep, err := t.nc.RequestMsgWithContext(ctx, m)
	if err != nil {
		return nil, err
	}
	if e := protocol.ReplyError(rep.Header, rep.Data); e != nil {
		return nil, e
	}
	return rep, nil
}

// natlogNotReady reports whether err means the cluster has no leader
// taking requests yet: worth retrying during setup.
func natlogNotReady(err error) bool {
	return errors.Is(err, nats.ErrNoResponders) || errors.Is(err, nats.ErrTimeout) ||
		errors.Is(err, context.DeadlineExceeded) || errors.Is(err, protocol.ErrNotLeader) ||
		errors.Is(err, protocol.ErrUnavailable)
}

// status asks the node for the cluster status.
func (t *natlogTarget) status(ctx context.Context) (*protocol.ClusterStatus, error) {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	rep, err := t.request(ctx, nats.NewMsg(t.subj.Status()))
	if err != nil {
		return nil, err
	}
	var st protocol.ClusterStatus
	if err := json.Unmarshal(rep.Data, &st); err != nil {
		return nil, fmt.Errorf("natlog: cluster status: %w", err)
	}
	return &st, nil
}

// waitReady polls the cluster status until there is a leader and every one
// of the n members is present (leader or follower).
func (t *natlogTarget) waitReady(ctx context.Context, n int) error {
	var last string
	err := retry(ctx, 50*time.Millisecond, func() error {
		st, err := t.status(ctx)
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

// Setup creates the log; the create subject is served by the leader only,
// so its success also means the leader takes appends.
func (t *natlogTarget) Setup(ctx context.Context) error {
	return retry(ctx, 50*time.Millisecond, func() error {
		_, err := t.request(ctx, nats.NewMsg(t.subj.Create(t.log)))
		return err
	}, natlogNotReady)
}

// deleteLog removes the log (for runs against an existing deployment).
func (t *natlogTarget) deleteLog(ctx context.Context) error {
	_, err := t.request(ctx, nats.NewMsg(t.subj.Delete(t.log)))
	return err
}

func (t *natlogTarget) Append(ctx context.Context, payload []byte) error {
	_, err := t.request(ctx, &nats.Msg{Subject: t.appendSubj, Data: payload})
	return err
}

// AppendWindow runs window goroutines, each appending one record at a time:
// window requests in flight on the one connection.
func (t *natlogTarget) AppendWindow(ctx context.Context, payload []byte, window int, until time.Time, lat *latencies) (int64, error) {
	var (
		n     atomic.Int64
		wg    sync.WaitGroup
		errMu sync.Mutex
		first error
	)
	for range window {
		wg.Go(func() {
			for time.Now().Before(until) && ctx.Err() == nil {
				t0 := time.Now()
				rep, err := t.nc.RequestMsg(&nats.Msg{Subject: t.appendSubj, Data: payload}, opTimeout)
				if err == nil {
					if e := protocol.ReplyError(rep.Header, rep.Data); e != nil {
						err = e
					}
				}
				if err != nil {
					errMu.Lock()
					if first == nil {
						first = err
					}
					errMu.Unlock()
					return
				}
				lat.record(time.Since(t0))
				n.Add(1)
			}
		})
	}
	wg.Wait()
	if first == nil {
		first = ctx.Err()
	}
	return n.Load(), first
}

// AppendBatch sends one msgpack AppendBatchRequest.
func (t *natlogTarget) AppendBatch(ctx context.Context, payloads [][]byte) error {
	key := [2]int{len(payloads), len(payloads[0])}
	if t.batchBody == nil || t.batchKey != key {
		req := protocol.AppendBatchRequest{Records: make([]protocol.AppendRecord, len(payloads))}
		for i, p := range payloads {
			req.Records[i].Value = p
		}
		t.batchBody, t.batchKey = req.AppendMsgpack(nil), key
	}
	m := &nats.Msg{Subject: t.appendSubj, Data: t.batchBody, Header: nats.Header{}}
	m.Header.Set(protocol.HeaderContentType, protocol.ContentTypeMsgpack)
	rep, err := t.request(ctx, m)
	if err != nil {
		return err
	}
	var br protocol.AppendBatchReply
	if err := json.Unmarshal(rep.Data, &br); err != nil {
		return fmt.Errorf("natlog: batch reply: %w", err)
	}
	if br.Count != len(payloads) {
		return fmt.Errorf("natlog: batch of %d acknowledged %d records", len(payloads), br.Count)
	}
	return nil
}

func (t *natlogTarget) Read(ctx context.Context, off uint64) error {
	rep, err := t.request(ctx, &nats.Msg{Subject: t.readSubj, Data: strconv.AppendUint(nil, off, 10)})
	if err != nil {
		return err
	}
	if got := rep.Header.Get(protocol.HeaderOffset); got != strconv.FormatUint(off, 10) {
		return fmt.Errorf("natlog: read %d answered offset %q", off, got)
	}
	return nil
}

// readBatch reads up to max records from off.
func (t *natlogTarget) readBatch(ctx context.Context, off uint64, max int) (protocol.ReadReply, error) {
	req := protocol.ReadRequest{Offset: off, Max: max}
	m := &nats.Msg{Subject: t.readSubj, Data: req.AppendMsgpack(nil), Header: nats.Header{}}
	m.Header.Set(protocol.HeaderContentType, protocol.ContentTypeMsgpack)
	rep, err := t.request(ctx, m)
	if err != nil {
		return protocol.ReadReply{}, err
	}
	rr, err := protocol.DecodeReadReply(rep.Data)
	if err != nil {
		return rr, err
	}
	if len(rr.Records) == 0 && off < rr.End {
		return rr, fmt.Errorf("natlog: read at %d of a log ending at %d returned nothing", off, rr.End)
	}
	return rr, nil
}

func (t *natlogTarget) Fetch(ctx context.Context, max int, total uint64) (int, error) {
	if t.next >= total {
		t.next = 0
	}
	rr, err := t.readBatch(ctx, t.next, int(min(uint64(max), total-t.next)))
	if err != nil {
		return 0, err
	}
	t.next = rr.Next
	return len(rr.Records), nil
}

// Settle makes reads with min_offset of the last record until each
// replica has surely served one: reads go to any replica (a NATS queue
// group), and a replica serves what it has applied, which may be less than
// the leader acknowledged. A replica that holds the record answers at once;
// after 32 reads the chance that one of three replicas got none is below
// 1 in 100,000.
func (t *natlogTarget) Settle(ctx context.Context, total uint64) error {
	if total == 0 {
		return nil
	}
	last := total - 1
	for range 32 {
		req := protocol.ReadRequest{Offset: last, Max: 1, MinOffset: &last}
		m := &nats.Msg{Subject: t.readSubj, Data: req.AppendMsgpack(nil), Header: nats.Header{}}
		m.Header.Set(protocol.HeaderContentType, protocol.ContentTypeMsgpack)
		if _, err := t.request(ctx, m); err != nil {
			return err
		}
	}
	return nil
}

// Consume reads batches from offset 0, each from the previous reply's next.
func (t *natlogTarget) Consume(ctx context.Context, total uint64, every int, each func()) error {
	var off uint64
	got := 0
	for off < total {
		rr, err := t.readBatch(ctx, off, int(min(uint64(every), total-off)))
		if err != nil {
			return err
		}
		for range rr.Records {
			if got++; got == every {
				each()
				got = 0
			}
		}
		off = rr.Next
	}
	return nil
}
