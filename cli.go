package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/sidecar/protocol"
)

// The client commands: NATS requests to a natlog node, with human output by
// default and JSON (one object per line) with --json.

// client holds the flags every client command takes and its connection.
type client struct {
	server   string
	prefix   string
	timeout  time.Duration
	json     bool
	creds    string
	user     string
	password string

	nc       *nats.Conn
	subjects protocol.Subjects
}

func (c *client) register(fs *flag.FlagSet) {
	fs.StringVar(&c.server, "server", nats.DefaultURL, "NATS server URL(s) of the natlog node (also from NATS_URL)")
	fs.StringVar(&c.prefix, "prefix", protocol.DefaultPrefix, "subject prefix the node serves")
	fs.DurationVar(&c.timeout, "timeout", 5*time.Second, "how long to wait for each reply")
	fs.BoolVar(&c.json, "json", false, "print JSON, one object per line, for scripts")
	fs.StringVar(&c.creds, "creds", "", "NATS credentials file")
	fs.StringVar(&c.user, "user", "", "NATS user")
	fs.StringVar(&c.password, "password", "", "NATS password")
}

// parse parses the command line; want is the number of positional
// arguments (-1: any).
func (c *client) parse(fs *flag.FlagSet, args []string, want int, names string) ([]string, error) {
	pos, err := parseFlags(fs, args, map[string]string{"server": "NATS_URL"})
	if err != nil {
		return nil, err
	}
	if want >= 0 && len(pos) != want {
		return nil, fmt.Errorf("%w: want %s, got %d argument(s)", errUsage, names, len(pos))
	}
	if c.subjects, err = protocol.NewSubjects(c.prefix); err != nil {
		return nil, fmt.Errorf("%w: %v", errUsage, err)
	}
	return pos, nil
}

func (c *client) connect() error {
	opts := []nats.Option{nats.Name("natlog cli"), nats.Timeout(c.timeout)}
	if c.creds != "" {
		opts = append(opts, nats.UserCredentials(c.creds))
	}
	if c.user != "" {
		opts = append(opts, nats.UserInfo(c.user, c.password))
	}
	nc, err := nats.Connect(c.server, opts...)
	if err != nil {
		return fmt.Errorf("cannot connect to NATS at %s: %v (is \"natlog serve\" running? set --server or NATS_URL)", c.server, err)
	}
	c.nc = nc
	return nil
}

func (c *client) close() {
	if c.nc != nil {
		c.nc.Close()
	}
}

// request sends a request and returns the reply, or the error it carries.
func (c *client) request(subject string, data []byte, hdr nats.Header) (*nats.Msg, error) {
	return c.requestWithin(subject, data, hdr, c.timeout)
}

func (c *client) requestWithin(subject string, data []byte, hdr nats.Header, timeout time.Duration) (*nats.Msg, error) {
	// During a cluster's election no node holds the append subjects (no
	// responders) or a deposed leader answers "not leader": retry with
	// backoff within the timeout. A "not leader" whose outcome is
	// indefinite is retried only with a Natlog-Msg-Id (which makes the
	// retry safe).
	deadline := time.Now().Add(timeout)
	backoff := 20 * time.Millisecond
	for {
		m, err := c.nc.RequestMsg(&nats.Msg{Subject: subject, Data: data, Header: hdr}, time.Until(deadline))
		retry := errors.Is(err, nats.ErrNoResponders)
		if err == nil {
			if e := protocol.ReplyError(m.Header, m.Data); e != nil {
				if e.ErrCode != protocol.CodeNotLeader || !(hdr.Get(protocol.HeaderMsgID) != "" || strings.Contains(e.Description, "nothing was written")) {
					return nil, replyError{e}
				}
				retry, err = true, replyError{e}
			}
		}
		if retry && time.Now().Add(backoff).Before(deadline) {
			time.Sleep(backoff)
			backoff = min(2*backoff, 500*time.Millisecond)
			continue
		}
		switch {
		case errors.Is(err, nats.ErrNoResponders):
			return nil, fmt.Errorf("no natlog node answers on %s at %s (is \"natlog serve\" running, with --prefix %s? a cluster without a leader?)", subject, c.server, c.prefix)
		case errors.Is(err, nats.ErrTimeout):
			return nil, fmt.Errorf("no reply on %s within %s", subject, timeout)
		case err != nil:
			var re replyError
			if errors.As(err, &re) {
				return nil, re
			}
			return nil, fmt.Errorf("request on %s: %w", subject, err)
		}
		return m, nil
	}
}

// replyError prints a node's error reply for people.
type replyError struct{ e *protocol.Error }

func (r replyError) Error() string {
	return fmt.Sprintf("%s (status %d, err_code %d)", r.e.Description, r.e.Code, r.e.ErrCode)
}

func (r replyError) Unwrap() error { return r.e }

// headerFlag collects repeated -H KEY=VALUE (or KEY:VALUE) flags.
type headerFlag nats.Header

func (h headerFlag) String() string { return "" }

func (h headerFlag) Set(v string) error {
	i := strings.IndexAny(v, "=:")
	if i <= 0 {
		return fmt.Errorf("want KEY=VALUE, got %q", v)
	}
	nats.Header(h).Add(strings.TrimSpace(v[:i]), v[i+1:])
	return nil
}

func runAppend(args []string, stdout, stderr io.Writer) error {
	var c client
	fs := newFlagSet("append", "LOG [VALUE...]   (no VALUE: one record per line of stdin)", stderr)
	c.register(fs)
	hdr := headerFlag{}
	fs.Var(hdr, "H", "header KEY=VALUE stored with each record (repeatable)")
	msgID := fs.String("msg-id", "", "Natlog-Msg-Id: a retry with the same id is not written twice")
	expected := fs.String("expected-offset", "", "Natlog-Expected-Offset: append only if the log's next offset is this")
	batchSize := fs.Int("batch", 1000, "records per request when reading stdin")
	pos, err := c.parse(fs, args, -1, "LOG [VALUE...]")
	if err != nil {
		return err
	}
	if len(pos) < 1 {
		return fmt.Errorf("%w: want LOG [VALUE...]", errUsage)
	}
	log, values := pos[0], pos[1:]
	if err := protocol.CheckLogName(log); err != nil {
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if err := c.connect(); err != nil {
		return err
	}
	defer c.close()
	reqHdr := nats.Header{}
	if *msgID != "" {
		reqHdr.Set(protocol.HeaderMsgID, *msgID)
	}
	if *expected != "" {
		reqHdr.Set(protocol.HeaderExpectedOffset, *expected)
	}
	if len(values) == 1 {
		h := reqHdr
		for k, vs := range hdr {
			h[k] = append(h[k], vs...)
		}
		m, err := c.request(c.subjects.Append(log), []byte(values[0]), h)
		if err != nil {
			return err
		}
		var r protocol.AppendReply
		if err := json.Unmarshal(m.Data, &r); err != nil {
			return fmt.Errorf("bad append reply %q: %v", m.Data, err)
		}
		if c.json {
			fmt.Fprintf(stdout, "%s\n", m.Data)
		} else {
			fmt.Fprintf(stdout, "%s: appended at offset %d%s\n", log, r.Offset, dupNote(r.Duplicate))
		}
		return nil
	}
	sum := protocol.AppendBatchReply{Log: log}
	send := func(recs []protocol.AppendRecord) error {
		req := protocol.AppendBatchRequest{Records: recs}
		h := nats.Header{protocol.HeaderContentType: {protocol.ContentTypeMsgpack}}
		for k, vs := range reqHdr {
			h[k] = vs
		}
		m, err := c.request(c.subjects.Append(log), req.AppendMsgpack(nil), h)
		if err != nil {
			return err
		}
		var r protocol.AppendBatchReply
		if err := json.Unmarshal(m.Data, &r); err != nil {
			return fmt.Errorf("bad append reply %q: %v", m.Data, err)
		}
		if sum.Count == 0 {
			sum.First = r.First
		}
		sum.Last, sum.Count, sum.Duplicate = r.Last, sum.Count+r.Count, r.Duplicate
		return nil
	}
	record := func(v []byte) protocol.AppendRecord {
		r := protocol.AppendRecord{Value: v}
		if len(hdr) > 0 {
			r.Headers = protocol.Headers(hdr)
		}
		return r
	}
	if len(values) > 1 {
		recs := make([]protocol.AppendRecord, len(values))
		for i, v := range values {
			recs[i] = record([]byte(v))
		}
		if err := send(recs); err != nil {
			return err
		}
	} else {
		if *msgID != "" || *expected != "" {
			return fmt.Errorf("%w: --msg-id and --expected-offset apply to one request: give the values as arguments", errUsage)
		}
		if err := appendStdin(os.Stdin, stderr, *batchSize, int(c.nc.MaxPayload())/2, record, send, func() int { return sum.Count }); err != nil {
			if sum.Count > 0 {
				fmt.Fprintf(stderr, "natlog: %d records were appended (offsets %d-%d) before the error\n", sum.Count, sum.First, sum.Last)
			}
			return err
		}
		if sum.Count == 0 {
			fmt.Fprintf(stderr, "natlog: no records on stdin\n")
			return nil
		}
	}
	if c.json {
		fmt.Fprintf(stdout, "%s\n", sum.AppendJSON(nil))
	} else {
		fmt.Fprintf(stdout, "%s: appended %d records at offsets %d-%d%s\n", log, sum.Count, sum.First, sum.Last, dupNote(sum.Duplicate))
	}
	return nil
}

func dupNote(dup bool) string {
	if dup {
		return " (a duplicate of an earlier append with this --msg-id; nothing written)"
	}
	return ""
}

// appendStdin sends the lines of r as records, in order, in batches of at
// most batch records and about maxBytes, one batch at a time (so the log
// keeps the lines' order). It reports progress on stderr every second
// when stderr is a terminal.
func appendStdin(r io.Reader, stderr io.Writer, batch, maxBytes int, record func([]byte) protocol.AppendRecord,
	send func([]protocol.AppendRecord) error, done func() int) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxBytes)
	var recs []protocol.AppendRecord
	size := 0
	progress := isTerminal(stderr)
	start, last := time.Now(), time.Now()
	flush := func() error {
		if len(recs) == 0 {
			return nil
		}
		err := send(recs)
		recs, size = recs[:0], 0
		if progress && time.Since(last) >= time.Second {
			last = time.Now()
			n := done()
			fmt.Fprintf(stderr, "\rappended %d records (%.0f/s)", n, float64(n)/time.Since(start).Seconds())
		}
		return err
	}
	for sc.Scan() {
		line := append([]byte(nil), sc.Bytes()...)
		if size+len(line)+64 > maxBytes || len(recs) >= batch {
			if err := flush(); err != nil {
				return err
			}
		}
		recs = append(recs, record(line))
		size += len(line) + 64
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("reading stdin: %v", err)
	}
	err := flush()
	if progress && time.Since(start) >= time.Second {
		fmt.Fprintln(stderr)
	}
	return err
}

func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok {
		return false
	}
	st, err := f.Stat()
	return err == nil && st.Mode()&os.ModeCharDevice != 0
}

// recordOut is how read and tail print records: --json prints it as JSON,
// otherwise "OFFSET  TIME  VALUE  [HEADERS]", or the bare value with --raw.
type recordOut struct {
	Log         string           `json:"log"`
	Offset      uint64           `json:"offset"`
	Time        int64            `json:"time"`
	Headers     protocol.Headers `json:"headers,omitempty"`
	Value       *string          `json:"value,omitempty"`
	ValueBase64 []byte           `json:"value_base64,omitempty"`
}

type printer struct {
	w    io.Writer
	json bool
	raw  bool
}

func (p printer) record(log string, r protocol.Record) {
	switch {
	case p.json:
		out := recordOut{Log: log, Offset: r.Offset, Time: r.Time, Headers: r.Headers}
		if utf8.Valid(r.Value) {
			v := string(r.Value)
			out.Value = &v
		} else {
			out.ValueBase64 = r.Value
		}
		b, _ := json.Marshal(out)
		fmt.Fprintf(p.w, "%s\n", b)
	case p.raw:
		fmt.Fprintf(p.w, "%s\n", r.Value)
	default:
		ts := time.Unix(0, r.Time).UTC().Format("2006-01-02T15:04:05.000000Z")
		line := fmt.Sprintf("%d  %s  %s", r.Offset, ts, printable(r.Value))
		if len(r.Headers) > 0 {
			b, _ := json.Marshal(r.Headers)
			line += "  " + string(b)
		}
		fmt.Fprintln(p.w, line)
	}
}

// printable returns v as is if it is text without control characters, and
// quoted otherwise.
func printable(v []byte) string {
	s := string(v)
	if !utf8.ValidString(s) || strings.IndexFunc(s, func(r rune) bool { return unicode.IsControl(r) && r != '\t' }) >= 0 {
		return strconv.Quote(s)
	}
	return s
}

// readFrom reads up to count records (count < 0: all) from off, in batch
// requests, calling fn for each. With wait > 0 it long-polls at the end of
// the log and only returns on error; otherwise it returns at the end. It
// returns the next offset to read.
func (c *client) readFrom(log string, off uint64, count int, wait time.Duration, fn func(protocol.Record)) (uint64, error) {
	hdr := nats.Header{protocol.HeaderContentType: {protocol.ContentTypeMsgpack}}
	for count != 0 {
		req := protocol.ReadRequest{Offset: off, Max: 1000, WaitMs: wait.Milliseconds()}
		if count > 0 {
			req.Max = min(req.Max, count)
		}
		m, err := c.requestWithin(c.subjects.Read(log), req.AppendMsgpack(nil), hdr, c.timeout+wait)
		if err != nil {
			return off, err
		}
		rep, err := protocol.DecodeReadReply(m.Data)
		if err != nil {
			return off, fmt.Errorf("bad read reply: %v", err)
		}
		for _, r := range rep.Records {
			fn(r)
		}
		if count > 0 {
			count -= len(rep.Records)
		}
		off = rep.Next
		if len(rep.Records) == 0 && wait == 0 {
			break // the end of the log
		}
	}
	return off, nil
}

func runRead(args []string, stdout, stderr io.Writer) error {
	var c client
	fs := newFlagSet("read", "LOG OFFSET [--count N]", stderr)
	c.register(fs)
	count := fs.Int("count", 1, "number of records to read (fewer if the log ends first)")
	raw := fs.Bool("raw", false, "print only the values, one per line")
	pos, err := c.parse(fs, args, 2, "LOG OFFSET")
	if err != nil {
		return err
	}
	off, err := strconv.ParseUint(pos[1], 10, 64)
	if err != nil {
		return fmt.Errorf("%w: OFFSET %q: want a number", errUsage, pos[1])
	}
	if *count < 1 {
		return fmt.Errorf("%w: --count must be at least 1", errUsage)
	}
	if err := c.connect(); err != nil {
		return err
	}
	defer c.close()
	p := printer{w: stdout, json: c.json, raw: *raw}
	if *count == 1 {
		m, err := c.request(c.subjects.Read(pos[0]), []byte(pos[1]), nil)
		if err != nil {
			return err
		}
		r := protocol.Record{Value: m.Data}
		r.Offset, _ = strconv.ParseUint(m.Header.Get(protocol.HeaderOffset), 10, 64)
		r.Time, _ = strconv.ParseInt(m.Header.Get(protocol.HeaderTime), 10, 64)
		for k, vs := range m.Header {
			if k != protocol.HeaderOffset && k != protocol.HeaderTime {
				if r.Headers == nil {
					r.Headers = protocol.Headers{}
				}
				r.Headers[k] = vs
			}
		}
		p.record(pos[0], r)
		return nil
	}
	n := 0
	next, err := c.readFrom(pos[0], off, *count, 0, func(r protocol.Record) { n++; p.record(pos[0], r) })
	if err != nil {
		return err
	}
	if n < *count && !c.json {
		fmt.Fprintf(stderr, "natlog: %d of %d records: the log ends at offset %d\n", n, *count, next)
	}
	return nil
}

func runTail(args []string, stdout, stderr io.Writer) error {
	var c client
	fs := newFlagSet("tail", "LOG [-n N] [--from OFFSET] [-f]", stderr)
	c.register(fs)
	n := fs.Int("n", 10, "show the last N records")
	from := fs.String("from", "", "start at this offset instead of the last N records")
	follow := fs.Bool("f", false, "keep waiting for new records and print them as they arrive (Ctrl-C stops)")
	raw := fs.Bool("raw", false, "print only the values, one per line")
	pos, err := c.parse(fs, args, 1, "LOG")
	if err != nil {
		return err
	}
	log := pos[0]
	if err := c.connect(); err != nil {
		return err
	}
	defer c.close()
	m, err := c.request(c.subjects.Info(log), nil, nil)
	if err != nil {
		return err
	}
	var li protocol.LogInfo
	if err := json.Unmarshal(m.Data, &li); err != nil {
		return fmt.Errorf("bad info reply: %v", err)
	}
	start := li.FirstOffset
	if li.NextOffset-li.FirstOffset > uint64(max(*n, 0)) {
		start = li.NextOffset - uint64(max(*n, 0))
	}
	if *from != "" {
		if start, err = strconv.ParseUint(*from, 10, 64); err != nil {
			return fmt.Errorf("%w: --from %q: want an offset", errUsage, *from)
		}
	}
	p := printer{w: stdout, json: c.json, raw: *raw}
	print := func(r protocol.Record) { p.record(log, r) }
	if !*follow {
		_, err := c.readFrom(log, start, -1, 0, print)
		return err
	}
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(stop)
	errc := make(chan error, 1)
	go func() {
		off := start
		for {
			next, err := c.readFrom(log, off, -1, 20*time.Second, print)
			var oe replyError
			if errors.As(err, &oe) && oe.e.ErrCode == protocol.CodeOffsetOutOfRange {
				// Retention removed records under us: go on from the oldest.
				m, ierr := c.request(c.subjects.Info(log), nil, nil)
				if ierr == nil && json.Unmarshal(m.Data, &li) == nil && li.FirstOffset > next {
					fmt.Fprintf(stderr, "natlog: records %d-%d were removed by retention; going on from %d\n", next, li.FirstOffset-1, li.FirstOffset)
					off = li.FirstOffset
					continue
				}
			}
			errc <- err
			return
		}
	}()
	select {
	case <-stop:
		return nil
	case err := <-errc:
		return err
	}
}
