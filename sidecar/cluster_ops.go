package sidecar

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/raft"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/raftfsm"
	"github.com/natlog/natlog/sidecar/protocol"
)

// applier batches the leader's operations into Raft entries: operations
// that arrive while MaxApplyInflight entries are in flight queue up, and
// the next entry carries all of them (up to MaxEntryBytes), as the
// standalone committer does with rounds. Each proposal gets its own
// raftfsm.Result back.
type applier struct {
	n        *clusterNode
	mu       sync.Mutex // guards pending, inflight
	pending  []*proposal
	inflight int
}

// proposal is one operation waiting for its entry.
type proposal struct {
	op     raftfsm.Op
	size   int
	stored int64               // raftfsm.AppendBytes(&op): what its records take in a segment
	done   chan proposalResult // buffered(1)
}

type proposalResult struct {
	res   raftfsm.Result
	index uint64 // the entry's Raft index, if it was applied
	err   error  // the entry's failure (raft's), not the op's
}

// propose submits op and waits for its outcome: the op's result and the
// Raft index of the entry that applied it.
func (a *applier) propose(op raftfsm.Op) (raftfsm.Result, uint64, error) {
	size := 64
	for i := range op.Records {
		size += len(op.Records[i].Value) + 16
		for _, h := range op.Records[i].Headers {
			size += len(h.Key) + len(h.Value) + 4
		}
	}
	p := &proposal{op: op, size: size, stored: raftfsm.AppendBytes(&op), done: make(chan proposalResult, 1)}
	a.mu.Lock()
	a.pending = append(a.pending, p)
	if a.inflight < a.n.cfg.MaxApplyInflight {
		a.inflight++
		batch := a.take()
		a.mu.Unlock()
		go a.round(batch)
	} else {
		a.mu.Unlock()
	}
	r := <-p.done
	return r.res, r.index, r.err
}

// take removes the next entry's proposals from pending; a.mu held.
func (a *applier) take() []*proposal {
	n, size := 0, 0
	for n < len(a.pending) && (n == 0 || size+a.pending[n].size <= a.n.cfg.MaxEntryBytes) {
		size += a.pending[n].size
		n++
	}
	batch := a.pending[:n:n]
	a.pending = a.pending[n:]
	if len(a.pending) == 0 {
		a.pending = nil
	}
	return batch
}

// round applies batch as one entry, answers it, and goes on with the
// proposals that queued meanwhile.
func (a *applier) round(batch []*proposal) {
	for {
		a.apply(batch)
		a.mu.Lock()
		if len(a.pending) == 0 {
			a.inflight--
			a.mu.Unlock()
			return
		}
		batch = a.take()
		a.mu.Unlock()
	}
}

func (a *applier) apply(batch []*proposal) {
	window, dedupMax := a.n.fsm.DedupConfig()
	cmd := raftfsm.Command{Version: raftfsm.CommandVersion, Time: time.Now().UnixNano(), Ops: make([]raftfsm.Op, 0, len(batch)),
		DedupWindow: window.Nanoseconds(), DedupMax: dedupMax}
	// Plain appends (no msg id, no expected offset) to one log are merged
	// into one op, so that the FSM writes them with one AppendBatch; each
	// request's records stay consecutive. where[i] is proposal i's op and
	// the position of its first record in it.
	type place struct{ op, at int }
	where := make([]place, len(batch))
	// A merged op's stored bytes are at most the sum of its parts', kept
	// within mergeLimit, so the FSM never refuses (raftfsm.ErrTooLarge) a
	// merge of requests that each fit.
	merged := map[string]int{} // log -> index of its open plain op
	mergedBytes := map[string]int64{}
	for i, p := range batch {
		if k, ok := merged[p.op.Log]; ok && plainAppend(&p.op) && mergedBytes[p.op.Log]+p.stored <= a.mergeLimit(&p.op) {
			where[i] = place{op: k, at: len(cmd.Ops[k].Records)}
			cmd.Ops[k].Records = append(cmd.Ops[k].Records, p.op.Records...)
			mergedBytes[p.op.Log] += p.stored
			continue
		}
		where[i] = place{op: len(cmd.Ops)}
		if plainAppend(&p.op) {
			merged[p.op.Log] = len(cmd.Ops)
			mergedBytes[p.op.Log] = p.stored
			p.op.Records = slices.Clip(p.op.Records) // appends to the merged op copy
		}
		cmd.Ops = append(cmd.Ops, p.op)
	}
	fail := func(err error) {
		for _, p := range batch {
			p.done <- proposalResult{err: err}
		}
	}
	data, err := raftfsm.EncodeCommand(&cmd)
	if err != nil {
		fail(err)
		return
	}
	start := time.Now()
	f := a.n.raft.Apply(data, a.n.cfg.ApplyTimeout)
	if err := f.Error(); err != nil {
		fail(err)
		return
	}
	if m := a.n.metrics; m != nil {
		m.apply.Observe(time.Since(start).Seconds())
		m.entryOps.Observe(float64(len(batch)))
	}
	results, ok := f.Response().([]raftfsm.Result)
	if !ok || len(results) != len(cmd.Ops) {
		err, _ := f.Response().(error)
		fail(fmt.Errorf("the FSM answered %T for %d ops: %v", f.Response(), len(cmd.Ops), err))
		return
	}
	for i, p := range batch {
		r := results[where[i].op]
		if r.Err == nil && len(cmd.Ops[where[i].op].Records) != len(p.op.Records) {
			r.First += uint64(where[i].at)
			r.Count = len(p.op.Records)
		}
		p.done <- proposalResult{res: r, index: f.Index()}
	}
}

// plainAppend reports whether op is an append that may share an op with
// others: no dedup id, no condition.
func plainAppend(op *raftfsm.Op) bool {
	return op.Kind == raftfsm.OpAppend && op.MsgID == "" && op.Expected == nil
}

// mergeLimit bounds the stored bytes (raftfsm.AppendBytes) of plain
// appends merged into one op for op's log: half its segment size (logcore
// keeps a batch that fits in a segment whole across a crash, and the FSM
// refuses a larger one), at most MaxEntryBytes.
func (a *applier) mergeLimit(op *raftfsm.Op) int64 {
	return min(int64(a.n.cfg.MaxEntryBytes), a.n.segmentBytes(op.Log, op.Settings)/2)
}

// segmentBytes is the segment size the FSM holds an append to log against:
// the log's, or, for a log the append creates, its settings'.
func (n *clusterNode) segmentBytes(log string, create *raftfsm.LogSettings) int64 {
	if l := n.fsm.Log(log); l != nil {
		return l.Config().MaxSegmentBytes
	}
	if create != nil && create.MaxSegmentBytes > 0 {
		return create.MaxSegmentBytes
	}
	return n.s.cfg.Log.MaxSegmentBytes
}

// fsmSettings returns the concrete settings the FSM creates a log with,
// from its effective configuration: every replica then holds the same
// values, whatever its own defaults (see raftfsm.LogSettings).
func fsmSettings(cfg logcore.Config) *raftfsm.LogSettings {
	return &raftfsm.LogSettings{
		MaxSegmentBytes:   cfg.MaxSegmentBytes,
		RetentionBytes:    cfg.Retention.MaxBytes,
		RetentionAge:      int64(cfg.Retention.MaxAge),
		RetentionSegments: cfg.Retention.MaxSegments,
	}
}

// raftError turns the failure of a Raft Apply into a protocol error.
func raftError(err error) *protocol.Error {
	switch {
	case errors.Is(err, raft.ErrNotLeader):
		return protocol.Errorf(protocol.ErrNotLeader, "this node is not the leader; nothing was written; retry")
	case errors.Is(err, raft.ErrLeadershipTransferInProgress):
		return protocol.Errorf(protocol.ErrNotLeader, "the leadership is being handed to another node; nothing was written; retry")
	case errors.Is(err, raft.ErrLeadershipLost):
		return protocol.Errorf(protocol.ErrNotLeader, "leadership lost while committing: the outcome is indefinite (it may have been written); retry with the same Natlog-Msg-Id")
	case errors.Is(err, raft.ErrRaftShutdown):
		// Not definite: hashicorp/raft fails the futures still waiting
		// at shutdown with it, entries the followers may already have
		// committed among them. ErrNotLeader's code (409) makes clients
		// retry, and the description says the outcome is open.
		return protocol.Errorf(protocol.ErrNotLeader, "the node is shutting down: the outcome is indefinite (it may have been written); retry with the same Natlog-Msg-Id")
	case errors.Is(err, raft.ErrEnqueueTimeout):
		return protocol.Errorf(protocol.ErrUnavailable, "raft is overloaded: nothing was written; retry")
	case strings.Contains(err.Error(), "unable to store logs"):
		// hashicorp/raft's LogCache: the leader could not write the
		// entry to its own Raft log (a full disk, say) and stepped down.
		// raft v1.8.0 has no typed error for it; the text is matched.
		return protocol.Errorf(protocol.ErrNotLeader, "the leader could not store the entry and stepped down (%v): the outcome is indefinite; retry with the same Natlog-Msg-Id", err)
	}
	return protocol.Errorf(protocol.ErrInternal, "raft: %v", err)
}

// resultError turns an op's raftfsm error into a protocol error.
func resultError(name string, err error) *protocol.Error {
	var eo *raftfsm.ExpectedOffsetError
	switch {
	case errors.As(err, &eo):
		return protocol.Errorf(protocol.ErrExpectedOffset, "expected offset %d but log %q's next offset is %d", eo.Expected, name, eo.Next)
	case errors.Is(err, raftfsm.ErrUnknownLog):
		return protocol.Errorf(protocol.ErrUnknownLog, "unknown log %q", name)
	case errors.Is(err, raftfsm.ErrBadCommand):
		return protocol.Errorf(protocol.ErrBadRequest, "%v", err)
	case errors.Is(err, logcore.ErrRecordTooLarge), errors.Is(err, raftfsm.ErrTooLarge):
		return protocol.Errorf(protocol.ErrPayloadTooLarge, "record too large for log %q: %v", name, err)
	case errors.Is(err, raftfsm.ErrStorage):
		return protocol.Errorf(protocol.ErrStorage, "log %q: %v", name, err)
	}
	return protocol.Errorf(protocol.ErrInternal, "log %q: %v", name, err)
}

// clusterAppend appends recs through Raft. A log it creates gets the node's
// default settings, filled in by this leader (as create does).
func (n *clusterNode) append(name string, recs []logcore.Record, o appendOpts) (appendResult, *protocol.Error) {
	op := raftfsm.Op{Kind: raftfsm.OpAppend, Log: name, MsgID: o.msgID, Settings: fsmSettings(n.s.cfg.Log),
		Records: make([]raftfsm.Record, len(recs))}
	if o.hasExpected {
		exp := o.expected
		op.Expected = &exp
	}
	for i, r := range recs {
		op.Records[i].Value = r.Value
		if len(r.Headers) > 0 {
			hs := make([]raftfsm.Header, len(r.Headers))
			for j, h := range r.Headers {
				hs[j] = raftfsm.Header{Key: h.Key, Value: h.Value}
			}
			op.Records[i].Headers = hs
		}
	}
	// Refused before it costs a Raft entry; the FSM refuses it alike.
	if size, seg := raftfsm.AppendBytes(&op), n.segmentBytes(name, op.Settings); size > seg {
		return appendResult{}, protocol.Errorf(protocol.ErrPayloadTooLarge, "the %d records take %d bytes on disk, more than log %q's segments of %d bytes: send them in smaller appends", len(recs), size, name, seg)
	}
	res, index, err := n.applier.propose(op)
	if err != nil {
		return appendResult{}, raftError(err)
	}
	if res.Err != nil {
		if errors.Is(res.Err, raftfsm.ErrStorage) {
			return appendResult{}, n.failedHere(name, res.Err)
		}
		return appendResult{}, resultError(name, res.Err)
	}
	return appendResult{first: res.First, count: len(recs), duplicate: res.Duplicate, index: index}, nil
}

// failedHere answers an append that Raft committed but this node's copy of
// the log could not take (a full disk, an I/O error; the FSM applies
// nothing more to it here): the other replicas apply it, unless their
// copies failed too. A leader in that
// state could only answer errors, so it hands the leadership to another
// voter, and the client, retrying with the same Natlog-Msg-Id, learns the
// append's offset from the next leader.
func (n *clusterNode) failedHere(name string, err error) *protocol.Error {
	if n.raft.State() != raft.Leader || !n.otherVoter() {
		// No one to hand over to (a cluster of one voter).
		return protocol.Errorf(protocol.ErrStorage, "log %q: %v", name, err)
	}
	if n.handingOver.CompareAndSwap(false, true) {
		n.s.logger.Error("natlog: this node's copy of a log failed; handing the leadership over", "log", name, "err", err)
		go func() {
			defer n.handingOver.Store(false)
			if err := n.raft.LeadershipTransfer().Error(); err != nil {
				n.s.logger.Warn("natlog: could not hand the leadership over", "err", err)
			}
		}()
	}
	return protocol.Errorf(protocol.ErrNotLeader, "log %q failed on this node (%v); the append was committed through Raft and the leadership moves to another voter: retry with the same Natlog-Msg-Id to learn its offset there", name, err)
}

// otherVoter reports whether the configuration has a voter besides this
// node.
func (n *clusterNode) otherVoter() bool {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return false
	}
	for _, srv := range f.Configuration().Servers {
		if srv.Suffrage == raft.Voter && string(srv.ID) != n.id {
			return true
		}
	}
	return false
}

// create creates a log through Raft.
func (n *clusterNode) create(name string, settings protocol.LogSettings) (protocol.LogInfo, *protocol.Error) {
	cfg, err := effectiveConfig(n.s.cfg.Log, settings)
	if err != nil {
		return protocol.LogInfo{}, protocol.AsError(err)
	}
	if l := n.fsm.Log(name); l != nil && *fsmSettings(l.Config()) != *fsmSettings(cfg) {
		// As on a single node. (Two creates of one new log with other
		// settings at once both succeed, with the first one's.)
		return protocol.LogInfo{}, protocol.Errorf(protocol.ErrLogExists, "log %q exists with other settings", name)
	}
	res, _, aerr := n.applier.propose(raftfsm.Op{Kind: raftfsm.OpCreate, Log: name, Settings: fsmSettings(cfg)})
	if aerr != nil {
		return protocol.LogInfo{}, raftError(aerr)
	}
	if res.Err != nil {
		return protocol.LogInfo{}, resultError(name, res.Err)
	}
	return n.info(name)
}

// deleteLog deletes a log through Raft.
func (n *clusterNode) deleteLog(name string) (protocol.DeleteReply, *protocol.Error) {
	if n.fsm.Log(name) == nil {
		return protocol.DeleteReply{}, protocol.Errorf(protocol.ErrUnknownLog, "unknown log %q", name)
	}
	res, index, err := n.applier.propose(raftfsm.Op{Kind: raftfsm.OpDelete, Log: name})
	if err != nil {
		return protocol.DeleteReply{}, raftError(err)
	}
	if res.Err != nil {
		return protocol.DeleteReply{}, resultError(name, res.Err)
	}
	return protocol.DeleteReply{Log: name, Deleted: true, Index: index}, nil
}

// fsmLog is a replica's log as reads see it.
type fsmLog struct {
	name string
	l    *logcore.Log
}

func (f fsmLog) reader() *logcore.Log { return f.l }

func (f fsmLog) storageError(err error) *protocol.Error {
	if errors.Is(err, logcore.ErrClosed) {
		return protocol.Errorf(protocol.ErrUnavailable, "log %q was closed (deleted, restored from a snapshot, or the node is stopping); retry", f.name)
	}
	return storageError(f.name, err)
}

// lookup returns the replica's log name.
func (n *clusterNode) lookup(name string) (fsmLog, *protocol.Error) {
	if err := n.fsm.FailedErr(name); err != nil {
		// Its copy here stopped at the failure and never catches up:
		// reads go to the replicas that have the log.
		return fsmLog{}, protocol.Errorf(protocol.ErrUnavailable, "this replica's copy of log %q failed (%v): read from another replica", name, err)
	}
	l := n.fsm.Log(name)
	if l == nil {
		return fsmLog{}, protocol.Errorf(protocol.ErrUnknownLog, "unknown log %q", name)
	}
	return fsmLog{name: name, l: l}, nil
}

// info describes a replica's log.
func (n *clusterNode) info(name string) (protocol.LogInfo, *protocol.Error) {
	fl, perr := n.lookup(name)
	if perr != nil {
		return protocol.LogInfo{}, perr
	}
	in, err := fl.l.Info()
	if err != nil {
		return protocol.LogInfo{}, fl.storageError(err)
	}
	li := protocol.LogInfo{
		Log:               name,
		FirstOffset:       in.LowestOffset,
		NextOffset:        in.NextOffset,
		Records:           in.Records,
		Segments:          in.Segments,
		Bytes:             in.Bytes,
		Sync:              "raft",
		MaxSegmentBytes:   fl.l.Config().MaxSegmentBytes,
		RetentionBytes:    in.Retention.MaxBytes,
		RetentionAgeMs:    in.Retention.MaxAge.Milliseconds(),
		RetentionSegments: in.Retention.MaxSegments,
	}
	li.Created, li.CreatedIndex, _ = n.fsm.Created(name)
	if in.Records > 0 {
		last := in.NextOffset - 1
		li.LastOffset = &last
	}
	return li, nil
}

// listLogs describes the replica's logs.
func (n *clusterNode) listLogs() protocol.LogsReply {
	rep := protocol.LogsReply{Logs: []protocol.LogInfo{}}
	for _, name := range n.fsm.Logs() {
		if li, err := n.info(name); err == nil {
			rep.Logs = append(rep.Logs, li)
		}
	}
	for name, err := range n.fsm.Failed() {
		rep.Logs = append(rep.Logs, protocol.LogInfo{Log: name, Error: err.Error()})
	}
	return rep
}

// catchUp makes a read wait (up to wait) until this replica has applied
// what the leader had committed when the read began (if linearizable),
// then the Raft log up to minIndex (if not 0), then until it holds the
// record at minOffset of log name (if not nil).
func (n *clusterNode) catchUp(ctx context.Context, name string, minOffset *uint64, minIndex uint64, linearizable bool, wait time.Duration) *protocol.Error {
	ctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	if linearizable {
		if perr := n.linearize(ctx); perr != nil {
			return perr
		}
	}
	if minIndex != 0 && !n.waitIndex(ctx, minIndex) {
		return protocol.Errorf(protocol.ErrUnavailable, "this replica has not applied index %d yet; retry", minIndex)
	}
	if minOffset == nil {
		return nil
	}
	for {
		if l := n.fsm.Log(name); l != nil {
			if l.NextOffset() > *minOffset {
				return nil
			}
			err := l.Wait(ctx, *minOffset)
			if err == nil {
				return nil
			}
			if !errors.Is(err, logcore.ErrClosed) {
				return protocol.Errorf(protocol.ErrUnavailable, "this replica does not hold offset %d of log %q yet; retry", *minOffset, name)
			}
		}
		select {
		case <-ctx.Done():
			return protocol.Errorf(protocol.ErrUnavailable, "this replica does not hold offset %d of log %q yet; retry", *minOffset, name)
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// waitIndex waits until this replica's FSM holds every command up to Raft
// index idx (an index an append or read reply named), or ctx ends; it
// reports whether it got there. It wakes when the FSM applies an entry
// (raftfsm.FSM.WaitApplied), not on a timer. idx may be an entry that
// never reaches the FSM (a barrier, a no-op, a configuration, or the
// index of a snapshot): once Raft has handed it over, the newest command
// at or below it decides (lastCommand). A replica that reaches idx only
// through such entries, with no command after them to wake the wait, is
// seen to be there when ctx ends (it looks once more), at the latest.
func (n *clusterNode) waitIndex(ctx context.Context, idx uint64) bool {
	// reached reports whether the FSM holds idx, or else the applied
	// index to wait for next.
	reached := func() (bool, uint64) {
		applied := n.fsm.AppliedIndex()
		if applied >= idx {
			return true, 0
		}
		if n.raft.AppliedIndex() >= idx {
			cmd := n.lastCommand(idx)
			return applied >= cmd, cmd
		}
		return false, applied + 1 // any progress: look again
	}
	for {
		ok, next := reached()
		if !ok && n.fsm.WaitApplied(ctx, next) != nil {
			ok, _ = reached()
			if !ok {
				return false
			}
		}
		if ok {
			for cur := n.covered.Load(); cur < idx && !n.covered.CompareAndSwap(cur, idx); cur = n.covered.Load() {
			}
			return true
		}
	}
}

// linearize waits until this replica has applied everything committed
// before the call: the read index (readIndex) of the leader, itself or
// asked over NATS. Concurrent reads share one (coalescer).
func (n *clusterNode) linearize(ctx context.Context) *protocol.Error {
	reads := &n.followerReads
	if n.raft.State() == raft.Leader {
		reads = &n.leaderReads
	}
	runCtx := n.readCtx
	if reads == &n.followerReads {
		runCtx = n.askCtx
	}
	idx, err := reads.do(ctx, runCtx)
	if err != nil {
		var perr *protocol.Error
		switch {
		case errors.As(err, &perr):
			return perr
		case errors.Is(err, ctx.Err()):
			return protocol.Errorf(protocol.ErrUnavailable, "no leader confirmed the read in time; retry")
		case errors.Is(err, raft.ErrRaftShutdown):
			return protocol.Errorf(protocol.ErrUnavailable, "the node is shutting down; retry")
		case errors.Is(err, raft.ErrNotLeader), errors.Is(err, raft.ErrLeadershipLost), errors.Is(err, raft.ErrLeadershipTransferInProgress):
			return protocol.Errorf(protocol.ErrUnavailable, "this node no longer leads, the read was not confirmed; retry")
		}
		return protocol.Errorf(protocol.ErrUnavailable, "the leader could not confirm the read: %v; retry", err)
	}
	wait := func(done func() bool) *protocol.Error {
		for !done() {
			select {
			case <-ctx.Done():
				return protocol.Errorf(protocol.ErrUnavailable, "this replica has not applied index %d yet; retry", idx)
			case <-time.After(2 * time.Millisecond):
			}
		}
		return nil
	}
	// Raft raises its applied index when it hands entries to the FSM,
	// before the FSM applies them: wait for both.
	if perr := wait(func() bool { return n.raft.AppliedIndex() >= idx }); perr != nil {
		return perr
	}
	cmd := n.lastCommand(idx)
	if perr := wait(func() bool { return n.fsm.AppliedIndex() >= cmd }); perr != nil {
		return perr
	}
	for cur := n.covered.Load(); cur < idx && !n.covered.CompareAndSwap(cur, idx); cur = n.covered.Load() {
	}
	return nil
}

// readCtx bounds one run of a read index query.
func (n *clusterNode) readCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), n.cfg.ApplyTimeout)
}

// askCtx bounds one question of a follower for the leader's read index:
// a leader that has not answered within two heartbeat timeouts has
// likely gone (its successor is elected about then), and the reads that
// wait for the question fail (unavailable) rather than wait longer.
func (n *clusterNode) askCtx() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), min(n.cfg.ApplyTimeout, 2*n.cfg.HeartbeatTimeout))
}

// askReadIndex asks the leader for its read index (onCommitIndex).
func (n *clusterNode) askReadIndex(ctx context.Context) (uint64, error) {
	m, err := n.rnc.RequestWithContext(ctx, n.s.subjects.Prefix()+"._cluster."+n.cfg.Name+".commit", nil)
	if err != nil {
		return 0, protocol.Errorf(protocol.ErrUnavailable, "no leader confirmed the read: %v; retry", err)
	}
	var idx uint64
	if _, err := fmt.Sscan(string(m.Data), &idx); err != nil {
		return 0, protocol.Errorf(protocol.ErrUnavailable, "leader: %s", m.Data)
	}
	return idx, nil
}

// readIndex returns, on the leader, a Raft index that covers every entry
// committed before the call: Raft's read index (Raft thesis, section
// 6.4), which writes nothing. Once the leader has committed an entry of
// its own term, its commit index covers all that any leader committed
// before; the first read of a term runs a barrier, which commits one.
// Then a majority of the voters, asked after the commit index was read,
// must still be in this term (confirmTerm): a newer leader needs the vote
// of one of them, so it was elected after the read began and cannot have
// committed anything acknowledged before it.
//
// hashicorp/raft's VerifyLeader is not used for the last step: it counts
// the answer to a heartbeat sent before it was called (one that was in
// flight, or delayed by a paused process), which shows only that the
// follower followed at some time before, perhaps before the read began.
func (n *clusterNode) readIndex(ctx context.Context) (uint64, error) {
	term := n.raft.CurrentTerm()
	if n.readyTerm.Load() != term {
		if err := await(ctx, n.raft.Barrier(n.cfg.ApplyTimeout)); err != nil {
			return 0, err
		}
		if n.raft.CurrentTerm() != term {
			return 0, raft.ErrLeadershipLost
		}
		n.readyTerm.Store(term)
	}
	idx := n.raft.CommitIndex()
	err := n.confirmTerm(ctx, term)
	if errors.Is(err, errTermNotConfirmed) {
		// Too few voters answered (some may run a release without
		// onTerm, during a rolling upgrade): a barrier shows the
		// leadership instead, as a majority stores its entry. Everything
		// committed before the read is at or below the barrier, which
		// is committed when it returns.
		if err := await(ctx, n.raft.Barrier(n.cfg.ApplyTimeout)); err != nil {
			return 0, err
		}
		return n.raft.CommitIndex(), nil
	}
	if err != nil {
		return 0, err
	}
	return idx, nil
}

// errTermNotConfirmed: too few voters answered that they are still in the
// leader's term.
var errTermNotConfirmed = errors.New("a majority of the voters did not confirm the leader's term")

// confirmTerm asks the other voters of the latest configuration for their
// current term (onTerm) and returns once, with this node, a majority of
// them answered term: they have not moved to a newer one.
func (n *clusterNode) confirmTerm(ctx context.Context, term uint64) error {
	f := n.raft.GetConfiguration()
	if err := f.Error(); err != nil {
		return err
	}
	var others []string
	voters := 0
	self := false
	for _, srv := range f.Configuration().Servers {
		if srv.Suffrage != raft.Voter {
			continue
		}
		voters++
		if string(srv.ID) == n.id {
			self = true
		} else {
			others = append(others, string(srv.ID))
		}
	}
	need := voters/2 + 1
	if self {
		if n.raft.CurrentTerm() != term {
			return raft.ErrLeadershipLost
		}
		need--
	}
	if need <= 0 {
		return nil
	}
	if need > len(others) {
		return errTermNotConfirmed
	}
	answers := make(chan uint64, len(others))
	for _, id := range others {
		go func() {
			m, err := n.rnc.RequestWithContext(ctx, n.termSubject(id), nil)
			var t uint64
			if err == nil {
				t, err = strconv.ParseUint(string(m.Data), 10, 64)
			}
			if err != nil {
				t = 0 // no answer counts against
			}
			answers <- t
		}()
	}
	for range others {
		select {
		case t := <-answers:
			switch {
			case t == term:
				if need--; need == 0 {
					return nil
				}
			case t > term:
				return raft.ErrLeadershipLost // a newer term exists
			}
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return errTermNotConfirmed
}

// termSubject is where node id answers its current Raft term (onTerm).
func (n *clusterNode) termSubject(id string) string {
	return n.s.subjects.Prefix() + "._cluster." + n.cfg.Name + ".term." + id
}

// onTerm answers this node's current Raft term (confirmTerm).
func (n *clusterNode) onTerm(m *nats.Msg) {
	m.Respond(strconv.AppendUint(nil, n.raft.CurrentTerm(), 10))
}

// await waits for a Raft future, or until ctx is done (the future then
// completes on its own: a barrier or a leadership check ends when the
// leader loses its lease at the latest).
func await(ctx context.Context, f raft.Future) error {
	done := make(chan error, 1)
	go func() { done <- f.Error() }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// lastCommand returns the Raft index of the newest command at or below idx
// that the FSM may not have applied yet (0: none). Entries that are not
// commands (barriers, no-ops, configurations) never reach the FSM, so
// the FSM's own applied index may stay below idx for good: the newest
// command decides. It is looked up in the Raft log, down to what the FSM
// is known to hold (its applied index, an index earlier reads found
// covered, the entries compacted into a snapshot). An unreadable entry
// counts as a command (the read then waits and times out rather than
// guess).
func (n *clusterNode) lastCommand(idx uint64) uint64 {
	floor := max(n.fsm.AppliedIndex(), n.covered.Load())
	if first, err := n.raftLogs.FirstIndex(); err == nil && first > 0 {
		floor = max(floor, first-1)
	}
	for i := idx; i > floor; i-- {
		var l raft.Log
		err := n.raftLogs.GetLog(i, &l)
		switch {
		case errors.Is(err, raft.ErrLogNotFound):
			// Compacted: below the snapshot, which the FSM holds.
		case err != nil, l.Type == raft.LogCommand:
			return i
		}
	}
	return 0
}

// onCommitIndex serves <prefix>._cluster.<name>.commit on the leader: its
// read index (readIndex), which covers everything committed before the
// request.
func (n *clusterNode) onCommitIndex(m *nats.Msg) {
	go func() {
		if n.raft.State() != raft.Leader {
			m.Respond([]byte("not leader"))
			return
		}
		ctx, cancel := n.readCtx()
		defer cancel()
		idx, err := n.leaderReads.do(ctx, n.readCtx)
		if err != nil {
			m.Respond([]byte(err.Error()))
			return
		}
		m.Respond(fmt.Appendf(nil, "%d", idx))
	}()
}

// subscribeLeaderEndpoints subscribes the endpoints only the leader
// serves: append, create, delete, and (internal) the commit index of
// linearizable reads and member removal. They are plain queue subscriptions (the micro framework cannot
// drop an endpoint), served by the same handlers.
func (s *Server) subscribeLeaderEndpoints() ([]*nats.Subscription, error) {
	n := s.cluster
	eps := []struct {
		subject string
		op      op
		h       func(*call)
	}{
		{s.subjects.Wildcard(protocol.OpAppend), opAppend, s.handleAppend},
		{s.subjects.Wildcard(protocol.OpCreate), opCreate, s.handleCreate},
		{s.subjects.Wildcard(protocol.OpDelete), opDelete, s.handleDelete},
	}
	var subs []*nats.Subscription
	for _, ep := range eps {
		h := s.handler(ep.op, ep.h)
		sub, err := s.nc.QueueSubscribe(ep.subject, queueGroup, func(m *nats.Msg) { h.Handle(natsRequest{m}) })
		if err != nil {
			for _, sub := range subs {
				sub.Unsubscribe()
			}
			return nil, err
		}
		sub.SetPendingLimits(pendingMsgs, pendingBytes)
		subs = append(subs, sub)
	}
	for subj, h := range map[string]nats.MsgHandler{
		s.subjects.Prefix() + "._cluster." + n.cfg.Name + ".commit": n.onCommitIndex,
		n.leaveSubject:    n.onLeave,
		n.stepDownSubject: n.onStepDown,
	} {
		sub, err := n.rnc.QueueSubscribe(subj, queueGroup, h)
		if err != nil {
			for _, sub := range subs {
				sub.Unsubscribe()
			}
			return nil, err
		}
		subs = append(subs, sub)
	}
	s.nc.Flush()
	n.rnc.Flush()
	return subs, nil
}

// natsRequest is a micro.Request on a plain NATS message.
type natsRequest struct{ m *nats.Msg }

var _ micro.Request = natsRequest{}

func (r natsRequest) Respond(data []byte, opts ...micro.RespondOpt) error {
	msg := &nats.Msg{Subject: r.m.Reply, Data: data}
	for _, o := range opts {
		o(msg)
	}
	return r.m.RespondMsg(msg)
}

func (r natsRequest) RespondJSON(v any, opts ...micro.RespondOpt) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	return r.Respond(b, opts...)
}

func (r natsRequest) Error(code, description string, data []byte, opts ...micro.RespondOpt) error {
	msg := &nats.Msg{Subject: r.m.Reply, Data: data, Header: nats.Header{}}
	for _, o := range opts {
		o(msg)
	}
	msg.Header.Set(micro.ErrorHeader, description)
	msg.Header.Set(micro.ErrorCodeHeader, code)
	return r.m.RespondMsg(msg)
}

func (r natsRequest) Data() []byte           { return r.m.Data }
func (r natsRequest) Headers() micro.Headers { return micro.Headers(r.m.Header) }
func (r natsRequest) Subject() string        { return r.m.Subject }
func (r natsRequest) Reply() string          { return r.m.Reply }

// isMember reports whether node id is in this node's latest Raft
// configuration, as a voter or not.
func (n *clusterNode) isMember(id string) bool {
	f := n.raft.GetConfiguration()
	if f.Error() != nil {
		return true // not known: let the leader decide
	}
	for _, srv := range f.Configuration().Servers {
		if string(srv.ID) == id {
			return true
		}
	}
	return false
}
