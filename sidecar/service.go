package sidecar

import (
	"errors"
	"fmt"
	"runtime/debug"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/sidecar/protocol"
)

// queueGroup is the queue group of every natlog endpoint: with several
// nodes (or, during a leadership change, two leaders) each request reaches
// one of them.
const queueGroup = "natlog"

// Pending limits of the endpoint subscriptions: requests wait there when
// MaxInflight are being served. Beyond these, nats.go drops requests as a
// slow consumer (their senders time out).
const (
	pendingMsgs  = 1 << 20
	pendingBytes = 256 << 20
)

// addService registers the node as the NATS micro service "natlog", one
// endpoint per operation.
func (s *Server) addService() error {
	version := s.cfg.Version
	svc, err := micro.AddService(s.nc, micro.Config{
		Name:        "natlog",
		Version:     version,
		Description: "natlog: a durable commit log over NATS request-reply",
		QueueGroup:  queueGroup,
		Metadata: map[string]string{
			"node_id": s.nodeID,
			"prefix":  s.subjects.Prefix(),
		},
	})
	if err != nil {
		return fmt.Errorf("register micro service: %w", err)
	}
	endpoints := []struct {
		name    string
		subject string
		op      op
		h       func(*call)
	}{
		{"append", s.subjects.Wildcard(protocol.OpAppend), opAppend, s.handleAppend},
		{"read", s.subjects.Wildcard(protocol.OpRead), opRead, s.handleRead},
		{"info", s.subjects.Wildcard(protocol.OpInfo), opInfo, s.handleInfo},
		{"create", s.subjects.Wildcard(protocol.OpCreate), opCreate, s.handleCreate},
		{"delete", s.subjects.Wildcard(protocol.OpDelete), opDelete, s.handleDelete},
		{"logs", s.subjects.Logs(), opLogs, s.handleLogs},
		{"status", s.subjects.Status(), opStatus, s.handleStatus},
		{"remove", s.subjects.Prefix() + ".cluster.remove", opRemove, s.handleRemove},
		{"stepdown", s.subjects.Prefix() + ".cluster.stepdown", opStepDown, s.handleStepDown},
		{"node_read", s.nodeSubjects.Wildcard(protocol.OpRead), opRead, s.handleRead},
		{"node_status", s.nodeSubjects.Status(), opStatus, s.handleStatus},
	}
	for _, ep := range endpoints {
		if s.cluster != nil && (ep.op == opAppend || ep.op == opCreate || ep.op == opDelete) {
			continue // the leader subscribes these while it leads
		}
		if s.cluster == nil && (ep.op == opRemove || ep.op == opStepDown) {
			continue // a standalone node has no members
		}
		err := svc.AddEndpoint(ep.name, s.handler(ep.op, ep.h),
			micro.WithEndpointSubject(ep.subject),
			micro.WithEndpointQueueGroup(queueGroup),
			micro.WithEndpointPendingLimits(pendingMsgs, pendingBytes))
		if err != nil {
			svc.Stop()
			return fmt.Errorf("register endpoint %s: %w", ep.name, err)
		}
	}
	s.svc = svc
	return nil
}

// call is one NATS request being served. Its handler runs on the
// endpoint's subscription goroutine and either answers at once (a bad
// request, mostly) or hands the work to a goroutine with goAsync; after
// that only that goroutine touches the call.
type call struct {
	s          *Server
	op         op
	req        micro.Request
	start      time.Time
	msgpackErr bool // the request was msgpack: so is the error body
	async      bool
	slot       bool // holds a worker slot (s.sem)
	done       bool // answered

	one [1]logcore.Record // a single append's record, without an allocation
	buf [96]byte          // room for a small reply
}

// handler wraps h as a micro handler.
func (s *Server) handler(o op, h func(*call)) micro.Handler {
	return micro.HandlerFunc(func(req micro.Request) {
		c := &call{s: s, op: o, req: req, start: time.Now()}
		if hd := req.Headers(); len(hd) > 0 {
			c.msgpackErr = hd.Get(protocol.HeaderContentType) == protocol.ContentTypeMsgpack
		}
		defer c.recover()
		h(c)
	})
}

// admit takes one of the MaxInflight worker slots (waiting for one: until
// then the subscription's goroutine waits, and new requests queue in the
// subscription) and counts the call as in flight. After it the call is
// answered off the subscription's goroutine, and whoever answers it calls
// release and s.inflight.Done. It answers ErrUnavailable and returns false
// if the node is shutting down.
func (c *call) admit() bool {
	s := c.s
	s.sem <- struct{}{}
	s.closeMu.RLock()
	if s.closing {
		s.closeMu.RUnlock()
		<-s.sem
		c.fail(protocol.Errorf(protocol.ErrUnavailable, "the node is shutting down"))
		return false
	}
	s.inflight.Add(1)
	s.closeMu.RUnlock()
	c.async, c.slot = true, true
	return true
}

// goAsync runs f on a worker goroutine, once admitted.
func (c *call) goAsync(f func()) {
	if !c.admit() {
		return
	}
	c.s.spawn(task{c: c, f: f})
}

// spawn runs t on an idle worker goroutine, or on a new one if none is
// idle. Workers are reused so that their stacks, once grown, stay grown.
func (s *Server) spawn(t task) {
	select {
	case s.work <- t:
	default:
		go s.worker(t)
	}
}

// task is work for a worker: a request's (c not nil: it is accounted and
// answered if f panics) or the node's own (c nil).
type task struct {
	c *call
	f func()
}

// workerIdle is how long a worker goroutine waits for more work before it
// exits. Reusing workers saves starting a goroutine (and growing its
// stack) per request.
const workerIdle = 5 * time.Second

// worker runs t, then the tasks goAsync hands it, until it has been idle
// for workerIdle or the node has stopped.
func (s *Server) worker(t task) {
	idle := time.NewTimer(workerIdle)
	defer idle.Stop()
	for {
		s.runTask(t)
		idle.Reset(workerIdle)
		select {
		case t = <-s.work:
		case <-idle.C:
			return
		case <-s.workersDone:
			return
		}
	}
}

func (s *Server) runTask(t task) {
	if t.c == nil {
		t.f()
		return
	}
	defer s.inflight.Done()
	defer t.c.release()
	defer t.c.recover()
	t.f()
}

// release gives back the call's worker slot (before a long wait, or at the
// end).
func (c *call) release() {
	if c.slot {
		c.slot = false
		<-c.s.sem
	}
}

// recover turns a panic in a handler into an ErrInternal reply.
func (c *call) recover() {
	if r := recover(); r != nil {
		c.s.logger.Error("natlog: panic serving a request", "subject", c.req.Subject(), "panic", r, "stack", string(debug.Stack()))
		if !c.done {
			c.fail(protocol.Errorf(protocol.ErrInternal, "internal error: %v", r))
		}
	}
}

// reply answers with body and optional headers.
func (c *call) reply(body []byte, hdr nats.Header) {
	c.done = true
	c.s.metrics.observe(c.op, nil, time.Since(c.start))
	reply := c.req.Reply()
	if reply == "" {
		return
	}
	var err error
	switch {
	case c.async && hdr == nil:
		err = c.s.nc.Publish(reply, body)
	case c.async:
		err = c.s.nc.PublishMsg(&nats.Msg{Subject: reply, Data: body, Header: hdr})
	case hdr != nil:
		err = c.req.Respond(body, micro.WithHeaders(micro.Headers(hdr)))
	default:
		err = c.req.Respond(body)
	}
	if err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		// Errors are replies, never silence: say why the reply could
		// not be sent (bad headers, too large).
		c.s.logger.Warn("natlog: sending reply", "subject", c.req.Subject(), "err", err)
		c.async = true // send the error reply directly
		c.fail(protocol.Errorf(protocol.ErrInternal, "the reply could not be sent: %v", err))
	}
}

// replyJSON answers with v in JSON.
func (c *call) replyJSON(v any) {
	b, err := jsonMarshal(v)
	if err != nil {
		c.fail(protocol.Errorf(protocol.ErrInternal, "encoding reply: %v", err))
		return
	}
	c.reply(b, nil)
}

// fail answers with an error reply: Status and Description headers (and
// the micro framework's error headers), and the typed error body in JSON,
// or msgpack if the request was msgpack.
func (c *call) fail(err error) {
	c.done = true
	e := protocol.AsError(err)
	c.s.metrics.observe(c.op, e, time.Since(c.start))
	reply := c.req.Reply()
	if reply == "" {
		return
	}
	// The body says what the header says: a description that quotes a
	// huge request (an unknown field's name, say) would make a reply over
	// the max payload, which NATS refuses, and the client would wait in
	// vain.
	desc := headerSafe(e.Description)
	short := *e
	short.Description = desc
	ct, body := protocol.ContentTypeJSON, short.AppendJSON(nil)
	if c.msgpackErr {
		ct, body = protocol.ContentTypeMsgpack, short.AppendMsgpack(nil)
	}
	code := strconv.Itoa(e.Code)
	hdr := nats.Header{
		protocol.HeaderStatus:      {code},
		protocol.HeaderDescription: {desc},
		protocol.HeaderContentType: {ct},
	}
	var serr error
	if c.async {
		hdr[protocol.HeaderServiceError] = []string{desc}
		hdr[protocol.HeaderServiceErrorCode] = []string{code}
		serr = c.s.nc.PublishMsg(&nats.Msg{Subject: reply, Data: body, Header: hdr})
	} else {
		// Through micro, so that its stats count the error.
		serr = c.req.Error(code, desc, body, micro.WithHeaders(micro.Headers(hdr)))
	}
	if serr != nil {
		c.s.logger.Debug("natlog: sending error reply", "subject", c.req.Subject(), "err", serr)
	}
}

// headerSafe makes s usable as a NATS header value: one line, bounded.
func headerSafe(s string) string {
	if len(s) > 1024 {
		n := 1024
		for n > 0 && !utf8.RuneStart(s[n]) {
			n-- // not inside a character
		}
		s = s[:n] + "..."
	}
	if strings.ContainsAny(s, "\r\n") {
		s = strings.NewReplacer("\r", " ", "\n", " ").Replace(s)
	}
	if s == "" {
		s = "error"
	}
	return s
}
