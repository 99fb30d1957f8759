package sidecar

import (
	"errors"
	"sync"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/sidecar/protocol"
)

// Appends without Natlog-Expected-Offset to a log are committed in rounds
// (those with a Natlog-Msg-Id once they have claimed it, see
// dedup.tryClaim): requests that arrive while a round is being written
// and fsynced queue up, and the next round writes all of them with one
// logcore.AppendBatch (one lock, one fsync) and then answers each. This is
// group commit at the request level: under load every fsync is shared by
// all the appends that arrived during the previous one, and a request costs
// no goroutine wake-up of its own. A lone append is a round of one.
//
// Rounds of one log do not overlap in the log (the next round starts once
// the previous one's AppendBatch returned), but a round's replies are sent
// while the next round is being written. Each request's records stay
// consecutive and atomic, also across a crash: a round is split into
// AppendBatch calls at request boundaries so that none exceeds a segment
// (logcore keeps a batch that fits in a segment whole or not at all).
type appendQueue struct {
	mu      sync.Mutex // guards pending and active
	pending []*pendingAppend
	active  bool // a round is being written
}

// pendingAppend is one request waiting for its round.
type pendingAppend struct {
	c    *call
	recs []logcore.Record
	// msgID and claim, if set: the request's Natlog-Msg-Id, claimed in
	// the log's dedup table; commit records the outcome there.
	msgID string
	claim *dedupEntry
}

// errNotAdmitted frees a claimed msg id whose request was refused.
var errNotAdmitted = errors.New("the node is shutting down")

// enqueue adds a request to the log's queue, starting a round if none is
// being written. The call holds a worker slot and counts as in flight (see
// call.admit) until commit answers it.
func (s *Server) enqueue(e *logEntry, p *pendingAppend) {
	q := &e.queue
	q.mu.Lock()
	q.pending = append(q.pending, p)
	if q.active {
		q.mu.Unlock()
		return
	}
	q.active = true
	round := q.pending
	q.pending = nil
	q.mu.Unlock()
	s.spawn(task{f: func() { s.commit(e, round) }})
}

// commit writes one round, hands the requests that queued meanwhile to a
// new round, and answers this round's requests.
func (s *Server) commit(e *logEntry, round []*pendingAppend) {
	handedOff := false
	answered := 0
	defer func() {
		if r := recover(); r != nil {
			// A bug: answer what is left, and never leave the queue
			// believing a round is active.
			s.logger.Error("natlog: panic committing appends", "log", e.name, "panic", r)
			if !handedOff {
				s.nextRound(e)
			}
			for _, p := range round[answered:] {
				if p.claim != nil {
					e.dedup.finish(p.msgID, p.claim, 0, 0, errors.New("append did not complete"))
					p.claim = nil
				}
				if !p.c.done {
					p.c.fail(protocol.Errorf(protocol.ErrInternal, "internal error: %v", r))
				}
				p.c.release()
				s.inflight.Done()
			}
		}
	}()

	firsts := make([]uint64, len(round))
	errs := make([]*protocol.Error, len(round))
	total := 0
	for _, p := range round {
		total += len(p.recs)
	}
	recs := make([]logcore.Record, 0, total)
	for i := 0; i < len(round); {
		// A chunk of whole requests whose frames fit in a segment.
		j, size := i, int64(0)
		recs = recs[:0]
		for j < len(round) {
			n := int64(0)
			for k := range round[j].recs {
				n += int64(logcore.FrameSize(&round[j].recs[k]))
			}
			if j > i && size+n > e.cfg.MaxSegmentBytes {
				break
			}
			size += n
			recs = append(recs, round[j].recs...)
			j++
		}
		res, perr := s.appendTo(e, recs, appendOpts{})
		off := res.first
		for k := i; k < j; k++ {
			firsts[k], errs[k] = off, perr
			off += uint64(len(round[k].recs))
		}
		i = j
	}

	s.nextRound(e)
	handedOff = true
	for k, p := range round {
		if p.claim != nil {
			var err error
			if errs[k] != nil {
				err = errs[k]
			}
			e.dedup.finish(p.msgID, p.claim, firsts[k], len(p.recs), err)
			p.claim = nil
		}
	}
	for k, p := range round {
		answered = k
		s.replyAppend(p.c, e.name, appendResult{first: firsts[k], count: len(p.recs)}, errs[k])
		p.c.release()
		s.inflight.Done()
	}
	answered = len(round)
}

// nextRound starts a round for the requests queued on e, or marks the
// queue idle if there are none.
func (s *Server) nextRound(e *logEntry) {
	q := &e.queue
	q.mu.Lock()
	if len(q.pending) == 0 {
		q.active = false
		q.mu.Unlock()
		return
	}
	next := q.pending
	q.pending = nil
	q.mu.Unlock()
	s.spawn(task{f: func() { s.commit(e, next) }})
}

// replyAppend answers an append.
func (s *Server) replyAppend(c *call, name string, res appendResult, perr *protocol.Error) {
	if perr != nil {
		c.fail(perr)
		return
	}
	if c.op == opAppend {
		r := protocol.AppendReply{Log: name, Offset: res.first, Duplicate: res.duplicate}
		c.reply(r.AppendJSON(c.buf[:0]), nil)
		return
	}
	r := protocol.AppendBatchReply{Log: name, First: res.first, Last: res.first + uint64(res.count) - 1, Count: res.count, Duplicate: res.duplicate}
	c.reply(r.AppendJSON(c.buf[:0]), nil)
}
