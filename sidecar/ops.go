package sidecar

import (
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/raftfsm"
	"github.com/natlog/natlog/sidecar/protocol"
)

// The node's operations, independent of the transport (NATS or HTTP) that
// asked for them. Each returns a *protocol.Error on failure.

// appendOpts are an append's conditions, from its request headers.
type appendOpts struct {
	expected    uint64 // Natlog-Expected-Offset, if hasExpected
	hasExpected bool
	msgID       string // Natlog-Msg-Id, or ""
}

// appendResult is where an append's records went.
type appendResult struct {
	first     uint64
	count     int
	duplicate bool // a retry of an earlier append: nothing was written
	// index is the Raft index of the entry that applied the append
	// (cluster mode; 0 on a standalone node).
	index uint64
}

// maxMsgIDLen bounds a Natlog-Msg-Id.
const maxMsgIDLen = 1024

// appendRecords appends recs (one or more, atomically) to the log name,
// creating the log if needed.
func (s *Server) appendRecords(name string, recs []logcore.Record, o appendOpts) (appendResult, *protocol.Error) {
	if s.cluster != nil {
		return s.cluster.append(name, recs, o)
	}
	if o.hasExpected && o.expected != 0 {
		// Refused without creating the log as a side effect.
		if _, ok := s.logs.get(name); !ok {
			return appendResult{}, protocol.Errorf(protocol.ErrExpectedOffset,
				"expected offset %d but log %q does not exist (its first append gets offset 0)", o.expected, name)
		}
	}
	e, err := s.logs.getOrCreate(name)
	if err != nil {
		return appendResult{}, protocol.AsError(err)
	}
	if o.msgID == "" || e.dedup == nil {
		return s.appendTo(e, recs, o)
	}
	for {
		d, owner := e.dedup.claim(o.msgID)
		if !owner {
			if d.done != nil {
				<-d.done // the first append with this id is in flight
			}
			if d.failed {
				continue // it failed: try to be the one that writes
			}
			return appendResult{first: d.first, count: d.count, duplicate: true}, nil
		}
		return s.appendClaimed(e, recs, o, d)
	}
}

// appendClaimed appends for the owner of a dedup claim and records the
// outcome, also if the append panics (so that later appends with the id
// never wait for it forever).
func (s *Server) appendClaimed(e *logEntry, recs []logcore.Record, o appendOpts, d *dedupEntry) (res appendResult, perr *protocol.Error) {
	finished := false
	defer func() {
		if !finished {
			e.dedup.finish(o.msgID, d, 0, 0, errors.New("append did not complete"))
		}
	}()
	res, perr = s.appendTo(e, recs, o)
	var ferr error
	if perr != nil {
		ferr = perr
	}
	e.dedup.finish(o.msgID, d, res.first, res.count, ferr)
	finished = true
	return res, perr
}

// appendTo appends to an open log. Unconditional appends run concurrently
// (logcore shares one fsync among them); a conditional one runs alone.
func (s *Server) appendTo(e *logEntry, recs []logcore.Record, o appendOpts) (appendResult, *protocol.Error) {
	if o.hasExpected {
		e.appendMu.Lock()
		defer e.appendMu.Unlock()
		if next := e.log.NextOffset(); next != o.expected {
			if e.deleted.Load() {
				return appendResult{}, protocol.Errorf(protocol.ErrUnavailable, "log %q was deleted while appending; retry", e.name)
			}
			return appendResult{}, protocol.Errorf(protocol.ErrExpectedOffset,
				"expected offset %d but log %q's next offset is %d", o.expected, e.name, next)
		}
	} else {
		e.appendMu.RLock()
		defer e.appendMu.RUnlock()
	}
	var first uint64
	var err error
	if len(recs) == 1 {
		first, err = e.log.Append(recs[0])
	} else {
		first, err = e.log.AppendBatch(recs)
	}
	if err != nil {
		if e.deleted.Load() {
			return appendResult{}, protocol.Errorf(protocol.ErrUnavailable, "log %q was deleted while appending; retry", e.name)
		}
		s.logger.Error("natlog: append failed", "log", e.name, "err", err)
		perr := e.storageError(err)
		if perr.ErrCode == protocol.CodeStorage {
			// logcore: ErrFailed leaves the outcome open and the log
			// refusing appends; any other error wrote nothing (a full
			// disk found before the write, say) and the log goes on.
			if errors.Is(err, logcore.ErrFailed) {
				perr = protocol.Errorf(protocol.ErrStorage, "log %q: %v (this append may have been written; the log takes no more appends until the node restarts)", e.name, err)
			} else {
				perr = protocol.Errorf(protocol.ErrStorage, "log %q: %v: nothing was written", e.name, err)
			}
		}
		return appendResult{}, perr
	}
	return appendResult{first: first, count: len(recs)}, nil
}

// checkRecord returns ErrPayloadTooLarge if rec exceeds the record limit.
func (s *Server) checkRecord(rec *logcore.Record) *protocol.Error {
	n := int64(len(rec.Value))
	for _, h := range rec.Headers {
		n += int64(len(h.Key) + len(h.Value) + 4)
	}
	if n > s.maxRecord {
		return protocol.Errorf(protocol.ErrPayloadTooLarge, "record of %d bytes exceeds this node's limit of %d bytes", n, s.maxRecord)
	}
	return nil
}

// checkHeaders returns ErrMalformedBody unless every header can travel as
// a NATS header (as it must, to come back on a single-record read).
func checkHeaders(hs []logcore.Header) *protocol.Error {
	for _, h := range hs {
		if !protocol.ValidHeaderKey(h.Key) {
			return protocol.Errorf(protocol.ErrMalformedBody, "header key %q is not a valid NATS header key", h.Key)
		}
		if !protocol.ValidHeaderValue(h.Value) {
			return protocol.Errorf(protocol.ErrMalformedBody, "header %q: value contains CR or LF", h.Key)
		}
	}
	return nil
}

// readable is a log as reads see it: a standalone node's *logEntry, or a
// replica's fsmLog.
type readable interface {
	reader() *logcore.Log
	storageError(error) *protocol.Error
}

func (e *logEntry) reader() *logcore.Log { return e.log }

// lookupRead returns the log name for reading.
func (s *Server) lookupRead(name string) (readable, *protocol.Error) {
	if s.cluster != nil {
		fl, perr := s.cluster.lookup(name)
		if perr != nil {
			return nil, perr
		}
		return fl, nil
	}
	e, perr := s.logs.lookup(name)
	if perr != nil {
		return nil, perr
	}
	return e, nil
}

// readOne returns the record at off, once this replica has applied the
// Raft log up to minIndex (cluster mode; see catchUp), waiting up to the
// node's max read wait.
func (s *Server) readOne(ctx context.Context, name string, off, minIndex uint64) (logcore.Record, *protocol.Error) {
	if minIndex != 0 && s.cluster != nil {
		if perr := s.cluster.catchUp(ctx, name, nil, minIndex, false, s.cfg.MaxReadWait); perr != nil {
			return logcore.Record{}, perr
		}
	}
	e, perr := s.lookupRead(name)
	if perr != nil {
		return logcore.Record{}, perr
	}
	rec, err := e.reader().Read(off)
	if err != nil {
		return logcore.Record{}, e.storageError(err)
	}
	rec.Headers = stripInternal(rec.Headers)
	return rec, nil
}

// readBatch reads records from req.Offset, waiting up to req.WaitMs (capped
// by the config) if there are none yet. The reply fits in budget bytes of
// msgpack. release, if not nil, is called before waiting (to give back the
// worker slot the caller holds).
//
// The records alias *scratch, which the read may replace with a larger
// buffer; the caller owns it again once done with the reply.
func (s *Server) readBatch(ctx context.Context, name string, req protocol.ReadRequest, budget int, release func(), scratch *[]byte) (protocol.ReadReply, *protocol.Error) {
	if req.MinOffset != nil || req.MinIndex != 0 || req.Linearizable {
		if s.cluster == nil {
			// A single node has applied everything it acknowledged
			// (and gives out no Raft indexes).
		} else if perr := s.cluster.catchUp(ctx, name, req.MinOffset, req.MinIndex, req.Linearizable, s.cfg.MaxReadWait); perr != nil {
			return protocol.ReadReply{}, perr
		}
	}
	re, perr := s.lookupRead(name)
	if perr != nil {
		return protocol.ReadReply{}, perr
	}
	log := re.reader()
	if req.StartTime != nil {
		off, err := log.OffsetForTime(*req.StartTime)
		if err != nil {
			return protocol.ReadReply{}, re.storageError(err)
		}
		req.Offset = off
	}
	max := req.Max
	if max == 0 {
		max = s.cfg.DefaultReadMax
	}
	max = min(max, s.cfg.MaxReadRecords)
	maxBytes := budget - protocol.ReadReplyOverhead
	if req.MaxBytes > 0 {
		maxBytes = min(maxBytes, req.MaxBytes)
	}
	recs, buf, err := log.ReadBatchInto((*scratch)[:0], req.Offset, max, maxBytes)
	*scratch = buf
	if err == nil && len(recs) == 0 && req.WaitMs > 0 && s.tryWaiter() {
		if release != nil {
			release()
		}
		wait := min(time.Duration(req.WaitMs)*time.Millisecond, s.cfg.MaxReadWait)
		wctx, cancel := context.WithTimeout(ctx, wait)
		werr := log.Wait(wctx, req.Offset)
		cancel()
		s.doneWaiter()
		if werr == nil {
			recs, buf, err = log.ReadBatchInto((*scratch)[:0], req.Offset, max, maxBytes)
			*scratch = buf
		} else if errors.Is(werr, logcore.ErrClosed) {
			// The log closed: deleted, or the node is stopping. (Not a
			// check of wctx.Err(): cancel above has set it already.)
			err = werr
		}
	}
	if err != nil {
		return protocol.ReadReply{}, re.storageError(err)
	}
	rep := protocol.ReadReply{
		Log:     name,
		Records: make([]protocol.Record, 0, len(recs)),
		Next:    req.Offset,
		Lowest:  log.LowestOffset(),
		End:     log.NextOffset(),
	}
	if s.cluster != nil {
		// Taken after the read: the history the reply comes from goes
		// at least this far (a record of an entry still being applied
		// may be in it too, beyond it: a reader that goes on from it
		// also sends min_offset, as the client's consumer does).
		rep.Index = s.cluster.fsm.AppliedIndex()
	}
	size := protocol.ReadReplyOverhead
	for i := range recs {
		r := protocol.Record{Offset: recs[i].Offset, Time: recs[i].Time, Value: recs[i].Value, Headers: toHeaders(recs[i].Headers)}
		size += protocol.RecordSize(&r)
		if size > budget {
			if i == 0 {
				return protocol.ReadReply{}, protocol.Errorf(protocol.ErrPayloadTooLarge,
					"record %d does not fit in a batch reply of at most %d bytes; read it alone", r.Offset, budget)
			}
			break
		}
		rep.Records = append(rep.Records, r)
		rep.Next = r.Offset + 1
	}
	return rep, nil
}

// tryWaiter takes a long-poll slot if one is free.
func (s *Server) tryWaiter() bool {
	select {
	case s.waiters <- struct{}{}:
		return true
	default:
		return false
	}
}

func (s *Server) doneWaiter() { <-s.waiters }

// stripInternal leaves out the headers the replicated FSM keeps for itself
// (raftfsm.RaftIndexHeader, on the last record of each applied append).
func stripInternal(hs []logcore.Header) []logcore.Header {
	for i, h := range hs {
		if h.Key == raftfsm.RaftIndexHeader {
			out := append(hs[:i:i], hs[i+1:]...)
			return stripInternal(out)
		}
	}
	return hs
}

// toHeaders converts stored headers to the wire form.
func toHeaders(hs []logcore.Header) protocol.Headers {
	hs = stripInternal(hs)
	if len(hs) == 0 {
		return nil
	}
	h := make(protocol.Headers, len(hs))
	for _, kv := range hs {
		h[kv.Key] = append(h[kv.Key], kv.Value)
	}
	return h
}

// fromHeaders converts wire headers to stored ones, sorted by key (values
// in order) so that the stored form is deterministic, leaving out
// natlog's reserved headers (and skip, if not empty).
func fromHeaders(h map[string][]string, skip string) []logcore.Header {
	if len(h) == 0 {
		return nil
	}
	keys := make([]string, 0, len(h))
	n := 0
	for k, vs := range h {
		if protocol.Reserved(k) || k == skip || k == "" {
			continue
		}
		keys = append(keys, k)
		n += len(vs)
	}
	if n == 0 {
		return nil
	}
	slices.Sort(keys)
	out := make([]logcore.Header, 0, n)
	for _, k := range keys {
		for _, v := range h[k] {
			out = append(out, logcore.Header{Key: k, Value: v})
		}
	}
	return out
}

// info describes the log name.
func (s *Server) info(name string) (protocol.LogInfo, *protocol.Error) {
	if s.cluster != nil {
		return s.cluster.info(name)
	}
	e, perr := s.logs.lookup(name)
	if perr != nil {
		return protocol.LogInfo{}, perr
	}
	return e.info()
}

// listLogs describes every log.
func (s *Server) listLogs() protocol.LogsReply {
	if s.cluster != nil {
		return s.cluster.listLogs()
	}
	rep := protocol.LogsReply{Logs: []protocol.LogInfo{}}
	for _, e := range s.logs.list() {
		if li, err := e.info(); err == nil {
			rep.Logs = append(rep.Logs, li)
		}
	}
	for name, err := range s.logs.brokenLogs() {
		rep.Logs = append(rep.Logs, protocol.LogInfo{Log: name, Error: brokenError(name, err).Description})
	}
	slices.SortFunc(rep.Logs, func(a, b protocol.LogInfo) int { return strings.Compare(a.Log, b.Log) })
	return rep
}

// status describes the cluster: one node, the leader of itself.
func (s *Server) status() protocol.ClusterStatus {
	if s.cluster != nil {
		cs := s.cluster.status()
		cs.MaxRecordBytes = s.maxRecord
		cs.Prefix = s.subjects.Prefix()
		cs.Version = s.cfg.Version
		cs.StartedAt = s.started.UnixNano()
		return cs
	}
	return protocol.ClusterStatus{
		NodeID: s.nodeID,
		Leader: s.nodeID,
		State:  "leader",
		Mode:   "single",
		Peers: []protocol.Peer{{ID: s.nodeID, Address: s.natsURL, State: "leader", Voter: true,
			Host: hostname, Reads: s.reads.Load()}},
		Logs:           len(s.logs.list()),
		MaxRecordBytes: s.maxRecord,
		Prefix:         s.subjects.Prefix(),
		Version:        s.cfg.Version,
		StartedAt:      s.started.UnixNano(),
	}
}

// create creates the log name with its own settings (idempotently).
func (s *Server) create(name string, settings protocol.LogSettings) (protocol.LogInfo, *protocol.Error) {
	if s.cluster != nil {
		return s.cluster.create(name, settings)
	}
	e, _, err := s.logs.create(name, settings, true)
	if err != nil {
		return protocol.LogInfo{}, protocol.AsError(err)
	}
	return e.info()
}

// deleteLog deletes the log name and its records.
func (s *Server) deleteLog(name string) (protocol.DeleteReply, *protocol.Error) {
	if s.cluster != nil {
		return s.cluster.deleteLog(name)
	}
	if err := s.logs.delete(name); err != nil {
		return protocol.DeleteReply{}, protocol.AsError(err)
	}
	return protocol.DeleteReply{Log: name, Deleted: true}, nil
}

// bufPool holds the buffers of batch reads (records read from a log, and
// replies encoded), so that large reads do not allocate (and zero, and
// collect) a megabyte or two each.
var bufPool sync.Pool

// maxPooledBuf is the largest buffer kept in bufPool: larger ones (a NATS
// max payload raised far above the default 1 MiB) are left to the GC.
const maxPooledBuf = 8 << 20

func getBuf() *[]byte {
	if b, ok := bufPool.Get().(*[]byte); ok {
		return b
	}
	return new([]byte)
}

func putBuf(b *[]byte) {
	if cap(*b) > maxPooledBuf {
		return
	}
	*b = (*b)[:0]
	bufPool.Put(b)
}
