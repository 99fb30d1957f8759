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
// (by another goroutine) while the next round is being written. Each request's records stay
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

// commit writes rounds of e's queue, starting with round, until the queue
// is empty. A round whose successor is already waiting is answered on
// another goroutine while this one writes the successor, so that the disk
// does not wait for the replies: answering a round of a hundred requests
// takes about as long as a write and fsync of the next.
func (s *Server) commit(e *logEntry, round []*pendingAppend) {
	for round != nil {
		firsts, errs, ok := s.writeRound(e, round)
		if !ok {
			return // panicked: writeRound answered and handed off
		}
		next := s.takeRound(e)
		if next == nil {
			s.answerRound(e, round, firsts, errs)
			return
		}
		done := round
		s.spawn(task{f: func() { s.answerRound(e, done, firsts, errs) }})
		round = next
	}
}

// writeRound appends a round's records: the first offset (or error) of
// each request. On a panic (a bug) it answers the round, hands the queue
// on, and reports !ok.
func (s *Server) writeRound(e *logEntry, round []*pendingAppend) (firsts []uint64, errs []*protocol.Error, ok bool) {
	defer func() {
		if r := recover(); r != nil {
			s.logger.Error("natlog: panic committing appends", "log", e.name, "panic", r)
			s.nextRound(e)
			s.failRound(e, round, r)
			ok = false
		}
	}()
	firsts = make([]uint64, len(round))
	errs = make([]*protocol.Error, len(round))
	total := 0
	for _, p := range round {
		total += len(p.recs)
	}
	recs := make([]logcore.Record, 0, total)
	// logcore keeps a batch whole across a crash if it fits in one
	// segment: in bytes, and in records (the index's capacity).
	maxRecs := e.cfg.MaxSegmentRecords()
	for i := 0; i < len(round); {
		// A chunk of whole requests that fits in a segment.
		j, size := i, int64(0)
		recs = recs[:0]
		for j < len(round) {
			n := int64(0)
			for k := range round[j].recs {
				n += int64(logcore.FrameSize(&round[j].recs[k]))
			}
			if j > i && (size+n > e.cfg.MaxSegmentBytes || len(recs)+len(round[j].recs) > maxRecs) {
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
	return firsts, errs, true
}

// answerRound records the round's msg ids in the dedup table and answers
// each request.
func (s *Server) answerRound(e *logEntry, round []*pendingAppend, firsts []uint64, errs []*protocol.Error) {
	answered := 0
	defer func() {
		if r := recover(); r != nil {
			s.logger.Error("natlog: panic answering appends", "log", e.name, "panic", r)
			s.failRound(e, round[answered:], r)
		}
	}()
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

// failRound answers requests a panic left unanswered.
func (s *Server) failRound(e *logEntry, round []*pendingAppend, r any) {
	for _, p := range round {
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

// takeRound takes the requests queued on e as the next round, or marks
// the queue idle and returns nil if there are none.
func (s *Server) takeRound(e *logEntry) []*pendingAppend {
	q := &e.queue
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) == 0 {
		q.active = false
		return nil
	}
	next := q.pending
	q.pending = nil
	return next
}

// nextRound starts a round for the requests queued on e on a new
// goroutine, or marks the queue idle if there are none.
func (s *Server) nextRound(e *logEntry) {
	if next := s.takeRound(e); next != nil {
		s.spawn(task{f: func() { s.commit(e, next) }})
	}
}

// replyAppend answers an append.
func (s *Server) replyAppend(c *call, name string, res appendResult, perr *protocol.Error) {
	if perr != nil {
		c.fail(perr)
		return
	}
	if c.op == opAppend {
		r := protocol.AppendReply{Log: name, Offset: res.first, Duplicate: res.duplicate, Index: res.index}
		c.reply(r.AppendJSON(c.buf[:0]), nil)
		return
	}
	r := protocol.AppendBatchReply{Log: name, First: res.first, Last: res.first + uint64(res.count) - 1, Count: res.count, Duplicate: res.duplicate, Index: res.index}
	c.reply(r.AppendJSON(c.buf[:0]), nil)
}
