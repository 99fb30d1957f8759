package sidecar

import (
	"encoding/json"
	"errors"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/sidecar/protocol"
)

// The NATS request handlers: they parse and check the request on the
// subscription's goroutine, answer bad requests at once, and run the
// operation with goAsync. See docs/protocol.md.

// jsonMarshal encodes a reply body.
func jsonMarshal(v any) ([]byte, error) { return json.Marshal(v) }

// handleAppend serves <prefix>.append.<log>: the body is one record's
// value (its other headers stored with it), or with Content-Type
// application/msgpack a protocol.AppendBatchRequest.
func (s *Server) handleAppend(c *call) {
	name, err := s.subjects.LogName(protocol.OpAppend, c.req.Subject())
	if err != nil {
		c.fail(err)
		return
	}
	h := nats.Header(c.req.Headers())
	o, perr := parseAppendHeaders(h)
	if perr != nil {
		c.fail(perr)
		return
	}
	var recs []logcore.Record
	if len(h) > 0 && h.Get(protocol.HeaderContentType) == protocol.ContentTypeMsgpack {
		c.op = opAppendBatch
		if recs, perr = s.batchRecords(c.req.Data(), o.msgID); perr != nil {
			c.fail(perr)
			return
		}
	} else {
		c.one[0] = logcore.Record{Value: c.req.Data(), Headers: fromHeaders(h, "")}
		recs = c.one[:]
		// nats.go takes header keys it cannot send (a raw HPUB):
		// refused, or the record could never be read alone.
		perr := checkHeaders(recs[0].Headers)
		if perr == nil {
			perr = s.checkRecord(&recs[0])
		}
		if perr != nil {
			c.fail(perr)
			return
		}
	}
	if s.cluster != nil {
		// Refused before it costs a Raft entry (the FSM, which adds a
		// few headers, refuses what still does not fit, on every
		// replica alike).
		if l := s.cluster.fsm.Log(name); l != nil {
			if perr := fitSegments(name, recs, l.Config().MaxSegmentBytes); perr != nil {
				c.fail(perr)
				return
			}
		}
	}
	if !o.hasExpected && s.logs != nil {
		if e, ok := s.logs.get(name); ok {
			if perr := fitSegments(name, recs, e.cfg.MaxSegmentBytes); perr != nil {
				c.fail(perr)
				return
			}
			p := &pendingAppend{c: c, recs: recs}
			claimed := o.msgID == "" || e.dedup == nil // nothing to claim
			if !claimed {
				// Claim the id here; a duplicate (or an id whose
				// first append is in flight, or a log whose ids are
				// not loaded yet) takes the path below, which waits.
				if d, owner, ok := e.dedup.tryClaim(o.msgID); ok && owner {
					p.msgID, p.claim, claimed = o.msgID, d, true
				}
			}
			if claimed {
				if c.admit() {
					s.enqueue(e, p)
				} else if p.claim != nil {
					e.dedup.finish(p.msgID, p.claim, 0, 0, errNotAdmitted)
				}
				return
			}
		}
	}
	c.goAsync(func() {
		res, perr := s.appendRecords(name, recs, o)
		s.replyAppend(c, name, res, perr)
	})
}

// fitSegments refuses records that do not fit in segments of maxSegment
// bytes of log name.
func fitSegments(name string, recs []logcore.Record, maxSegment int64) *protocol.Error {
	for i := range recs {
		if size := int64(logcore.FrameSize(&recs[i])); size > maxSegment {
			return protocol.Errorf(protocol.ErrPayloadTooLarge, "record of %d bytes on disk does not fit in log %q's segments of %d bytes", size, name, maxSegment)
		}
	}
	return nil
}

// parseAppendHeaders reads an append's conditions from its headers.
func parseAppendHeaders(h nats.Header) (appendOpts, *protocol.Error) {
	var o appendOpts
	if len(h) == 0 {
		return o, nil
	}
	if v, ok := h[protocol.HeaderExpectedOffset]; ok {
		off, err := strconv.ParseUint(strings.TrimSpace(first(v)), 10, 64)
		if err != nil {
			return o, protocol.Errorf(protocol.ErrBadRequest, "bad %s header %q: want a decimal offset", protocol.HeaderExpectedOffset, first(v))
		}
		o.expected, o.hasExpected = off, true
	}
	if v, ok := h[protocol.HeaderMsgID]; ok {
		o.msgID = first(v)
		if len(v) != 1 {
			// Deduplicated by one, stored with all: which one a
			// restart would load is another matter.
			return o, protocol.Errorf(protocol.ErrBadRequest, "%d %s headers: want one", len(v), protocol.HeaderMsgID)
		}
		if o.msgID == "" || len(o.msgID) > maxMsgIDLen {
			return o, protocol.Errorf(protocol.ErrBadRequest, "bad %s header: want 1 to %d bytes", protocol.HeaderMsgID, maxMsgIDLen)
		}
	}
	return o, nil
}

// parseMinIndex reads a read request's Natlog-Min-Index header (0 if it
// has none).
func parseMinIndex(h map[string][]string) (uint64, *protocol.Error) {
	v, ok := h[protocol.HeaderMinIndex]
	if !ok {
		return 0, nil
	}
	idx, err := strconv.ParseUint(strings.TrimSpace(first(v)), 10, 64)
	if err != nil || len(v) != 1 {
		return 0, protocol.Errorf(protocol.ErrBadRequest, "bad %s header %q: want one decimal Raft index", protocol.HeaderMinIndex, strings.Join(v, ", "))
	}
	return idx, nil
}

func first(v []string) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}

// batchRecords decodes a batch append body into records. The request's
// Natlog-Msg-Id, if any, is stored on the batch's first record, with
// Natlog-Msg-Count (the batch's length) if it has more than one, so that
// deduplication survives a restart; any the records carry are dropped.
func (s *Server) batchRecords(body []byte, msgID string) ([]logcore.Record, *protocol.Error) {
	req, err := protocol.DecodeAppendBatch(body)
	if err != nil {
		return nil, protocol.AsError(err)
	}
	recs := make([]logcore.Record, len(req.Records))
	for i, r := range req.Records {
		// A record's own Natlog-Msg-Id is dropped, whether the
		// request has one or not: stored, it would become a dedup id
		// when the log's ids are loaded from its records, and a later
		// append with that id would be taken for a duplicate.
		recs[i] = logcore.Record{Value: r.Value, Headers: fromHeaders(r.Headers, protocol.HeaderMsgID)}
		if msgID != "" && i == 0 {
			recs[i].Headers = append(recs[i].Headers, logcore.Header{Key: protocol.HeaderMsgID, Value: msgID})
			if len(req.Records) > 1 {
				recs[i].Headers = append(recs[i].Headers, logcore.Header{Key: protocol.HeaderMsgCount, Value: strconv.Itoa(len(req.Records))})
			}
			slices.SortStableFunc(recs[i].Headers, func(a, b logcore.Header) int { return strings.Compare(a.Key, b.Key) })
		}
		perr := checkHeaders(recs[i].Headers)
		if perr == nil {
			perr = s.checkRecord(&recs[i])
		}
		if perr != nil {
			perr.Description = "batch record " + strconv.Itoa(i) + ": " + perr.Description
			return nil, perr
		}
	}
	return recs, nil
}

// handleRead serves <prefix>.read.<log>: an offset ("42") reads one record,
// answered with its value as the body and its offset, time and headers as
// NATS headers; a JSON or msgpack protocol.ReadRequest reads a batch,
// answered with a msgpack protocol.ReadReply (JSON with Accept:
// application/json).
func (s *Server) handleRead(c *call) {
	subjects := s.subjects
	if subj := c.req.Subject(); len(subj) > len(s.nodeSubjects.Prefix()) && subj[:len(s.nodeSubjects.Prefix())] == s.nodeSubjects.Prefix() {
		subjects = s.nodeSubjects // <prefix>.node.<id>.read.<log>
	}
	name, err := subjects.LogName(protocol.OpRead, c.req.Subject())
	if err != nil {
		c.fail(err)
		return
	}
	h := nats.Header(c.req.Headers())
	ct := ""
	if len(h) > 0 {
		ct = h.Get(protocol.HeaderContentType)
	}
	req, single, err := protocol.ParseReadBody(c.req.Data(), ct)
	if err != nil {
		c.fail(err)
		return
	}
	minIndex, perr := parseMinIndex(h)
	if perr != nil {
		c.fail(perr)
		return
	}
	req.MinIndex = max(req.MinIndex, minIndex)
	if single {
		c.goAsync(func() {
			rec, perr := s.readOne(s.stopCtx, name, req.Offset, req.MinIndex)
			if perr != nil {
				c.fail(perr)
				return
			}
			hdr := make(nats.Header, 2+len(rec.Headers))
			hdr[protocol.HeaderOffset] = []string{strconv.FormatUint(rec.Offset, 10)}
			hdr[protocol.HeaderTime] = []string{strconv.FormatInt(rec.Time, 10)}
			for _, kv := range rec.Headers {
				hdr[kv.Key] = append(hdr[kv.Key], kv.Value)
			}
			s.reads.Add(1) // before the reply: a client that then asks for the status sees it
			c.reply(rec.Value, hdr)
		})
		return
	}
	c.op = opReadBatch
	asJSON := len(h) > 0 && h.Get(protocol.HeaderAccept) == protocol.ContentTypeJSON
	c.goAsync(func() {
		// The records are read into a pooled buffer, encoded into
		// another, and both go back to the pool once the reply is sent
		// (nats.go copies it into its write buffer before Publish
		// returns): a batch read of 1 MiB allocated 2 MiB before.
		scratch := getBuf()
		defer putBuf(scratch)
		rep, perr := s.readBatch(s.stopCtx, name, req, s.replyBudget(), c.release, scratch)
		if perr != nil {
			c.fail(perr)
			return
		}
		if asJSON {
			// The batch was sized for msgpack; in JSON values are
			// base64 (a third larger) and text may be escaped. Fewer
			// records go until the reply fits; Next says where the
			// reader goes on.
			var b []byte
			for {
				var err error
				if b, err = json.Marshal(&rep); err != nil {
					c.fail(protocol.Errorf(protocol.ErrInternal, "encoding reply: %v", err))
					return
				}
				if len(b) <= s.replyBudget() || len(rep.Records) <= 1 {
					break
				}
				rep.Records = rep.Records[:len(rep.Records)*3/4]
				rep.Next = rep.Records[len(rep.Records)-1].Offset + 1
			}
			s.reads.Add(1)
			c.reply(b, nats.Header{protocol.HeaderContentType: {protocol.ContentTypeJSON}})
			return
		}
		size := protocol.ReadReplyOverhead
		for i := range rep.Records {
			size += protocol.RecordSize(&rep.Records[i])
		}
		out := getBuf()
		defer putBuf(out)
		if cap(*out) < size {
			*out = make([]byte, 0, size)
		}
		*out = rep.AppendMsgpack((*out)[:0])
		s.reads.Add(1)
		c.reply(*out, nats.Header{protocol.HeaderContentType: {protocol.ContentTypeMsgpack}})
	})
}

// replyBudget is the most a batch read reply's body may take: the NATS max
// payload less room for its headers. (JSON replies, which encode values in
// base64, may exceed it; they are for people and small reads.)
func (s *Server) replyBudget() int {
	return int(s.maxPayload) - 1024
}

// handleInfo serves <prefix>.info.<log>.
func (s *Server) handleInfo(c *call) {
	name, err := s.subjects.LogName(protocol.OpInfo, c.req.Subject())
	if err != nil {
		c.fail(err)
		return
	}
	c.goAsync(func() {
		li, perr := s.info(name)
		if perr != nil {
			c.fail(perr)
			return
		}
		c.replyJSON(li)
	})
}

// handleCreate serves <prefix>.create.<log>: the body is a JSON (or, with
// Content-Type msgpack, msgpack) protocol.LogSettings, possibly empty.
func (s *Server) handleCreate(c *call) {
	name, err := s.subjects.LogName(protocol.OpCreate, c.req.Subject())
	if err != nil {
		c.fail(err)
		return
	}
	settings, err := protocol.ParseLogSettings(c.req.Data(), c.msgpackErr)
	if err != nil {
		c.fail(err)
		return
	}
	c.goAsync(func() {
		li, perr := s.create(name, settings)
		if perr != nil {
			c.fail(perr)
			return
		}
		c.replyJSON(li)
	})
}

// handleDelete serves <prefix>.delete.<log>.
func (s *Server) handleDelete(c *call) {
	name, err := s.subjects.LogName(protocol.OpDelete, c.req.Subject())
	if err != nil {
		c.fail(err)
		return
	}
	c.goAsync(func() {
		rep, perr := s.deleteLog(name)
		if perr != nil {
			c.fail(perr)
			return
		}
		c.replyJSON(rep)
	})
}

// handleLogs serves <prefix>.logs.
func (s *Server) handleLogs(c *call) {
	c.goAsync(func() { c.replyJSON(s.listLogs()) })
}

// handleStatus serves <prefix>.cluster.status.
func (s *Server) handleStatus(c *call) {
	c.goAsync(func() { c.replyJSON(s.status()) })
}

// clusterNodeArg reads the node id a cluster admin request carries as its
// body (empty allowed if optional), answering the request with an error
// if it is bad or this node is not in cluster mode.
func (s *Server) clusterNodeArg(c *call, optional bool) (string, bool) {
	id := strings.TrimSpace(string(c.req.Data()))
	if (id != "" || !optional) && !protocol.ValidLogName(id) {
		c.fail(protocol.Errorf(protocol.ErrBadRequest, "bad node id %q: want 1 to 128 characters from [A-Za-z0-9_-]", id))
		return "", false
	}
	if s.cluster == nil {
		c.fail(protocol.Errorf(protocol.ErrBadRequest, "this node is not in cluster mode"))
		return "", false
	}
	return id, true
}

// handleRemove serves <prefix>.cluster.remove: the body is the id of a
// member to remove from the cluster (an operator's decision for a node
// that crashed and will not come back). Any node forwards it to the
// leader. A node that is still running announces itself and is added
// back; stop it first.
func (s *Server) handleRemove(c *call) {
	id, ok := s.clusterNodeArg(c, false)
	if !ok {
		return
	}
	if !s.cluster.isMember(id) {
		// A typo must not look like a removal (step-down refuses alike).
		c.fail(protocol.Errorf(protocol.ErrBadRequest, "remove: %s is not a member of the cluster", id))
		return
	}
	c.goAsync(func() {
		if err := s.cluster.removeMember(id, 10*time.Second); err != nil {
			c.fail(protocol.Errorf(protocol.ErrUnavailable, "remove %s: %v", id, err))
			return
		}
		c.replyJSON(map[string]any{"removed": id})
	})
}

// handleStepDown serves <prefix>.cluster.stepdown: the leader hands its
// leadership to the voter named in the body, or to any other voter if the
// body is empty (maintenance, or moving the leader next to the clients).
// Any node forwards it to the leader. The reply names the new leader.
func (s *Server) handleStepDown(c *call) {
	to, ok := s.clusterNodeArg(c, true)
	if !ok {
		return
	}
	c.goAsync(func() {
		leader, err := s.cluster.stepDown(to, 10*time.Second)
		switch {
		case errors.Is(err, errStepDownTarget):
			c.fail(protocol.Errorf(protocol.ErrBadRequest, "step down: %v", err))
			return
		case err != nil:
			c.fail(protocol.Errorf(protocol.ErrUnavailable, "step down: %v", err))
			return
		}
		c.replyJSON(map[string]any{"leader": leader})
	})
}
