package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"maps"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/client"
	"github.com/natlog/natlog/sidecar/protocol"
)

// The client commands: requests to a natlog node or cluster through the Go
// client (package client), with human output by default and JSON (one
// object per line) with --json.

// cliConn holds the flags every client command takes and its client.
type cliConn struct {
	server   string
	prefix   string
	timeout  time.Duration
	json     bool
	creds    string
	user     string
	password string

	nc       *nats.Conn
	cl       *client.Client
	subjects protocol.Subjects
	subject  string // what the command asks, named in its error messages
}

func (c *cliConn) register(fs *flag.FlagSet) {
	fs.StringVar(&c.server, "server", nats.DefaultURL, "NATS server URL(s) of the natlog node (also from NATS_URL)")
	fs.StringVar(&c.prefix, "prefix", protocol.DefaultPrefix, "subject prefix the node serves")
	fs.DurationVar(&c.timeout, "timeout", 5*time.Second, "how long to wait for a reply, retries included (each attempt waits a quarter of it, at least 1s)")
	fs.BoolVar(&c.json, "json", false, "print JSON, one object per line, for scripts")
	fs.StringVar(&c.creds, "creds", "", "NATS credentials file")
	fs.StringVar(&c.user, "user", "", "NATS user")
	fs.StringVar(&c.password, "password", "", "NATS password")
}

// parse parses the command line; want is the number of positional
// arguments (-1: any).
func (c *cliConn) parse(fs *flag.FlagSet, args []string, want int, names string) ([]string, error) {
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

// connect connects to NATS and makes the client, which asks the nodes who
// is in the cluster. subject is what the command asks, for error messages.
func (c *cliConn) connect(subject string) error {
	c.subject = subject
	// Errors are the command's to report (nats.go's default handler
	// prints the asynchronous ones, a permissions violation among them).
	opts := []nats.Option{nats.Name("natlog cli"), nats.Timeout(c.timeout),
		nats.ErrorHandler(func(*nats.Conn, *nats.Subscription, error) {})}
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
	// An attempt lost with a leader that died takes the time of one
	// attempt: several fit in --timeout, so the client retries (an append
	// with its Natlog-Msg-Id) once a new leader is elected.
	attempt := min(c.timeout, max(c.timeout/4, time.Second))
	cl, err := client.Connect(nc, client.WithPrefix(c.prefix), client.WithRequestTimeout(attempt))
	if err != nil {
		nc.Close()
		return c.explain(err)
	}
	c.nc, c.cl = nc, cl
	return nil
}

func (c *cliConn) close() {
	if c.cl != nil {
		c.cl.Close()
	}
	if c.nc != nil {
		c.nc.Close()
	}
}

// context bounds one call of the client, its retries included, by --timeout.
func (c *cliConn) context() (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.Background(), c.timeout)
}

// explain turns an error of the client into a message for people: a node's
// error reply, no node answering, or no reply in time.
func (c *cliConn) explain(err error) error {
	var perr *protocol.Error
	switch {
	case err == nil:
		return nil
	case errors.As(err, &perr):
		return replyError{perr}
	case errors.Is(err, nats.ErrPermissionViolation):
		user := "this NATS user"
		if c.user != "" {
			user = fmt.Sprintf("NATS user %q", c.user)
		}
		subject := c.subject
		if _, s, ok := strings.Cut(err.Error(), "for Publish to "); ok {
			subject = strings.Trim(strings.TrimSpace(s), `"'`)
		}
		return fmt.Errorf("not permitted: %s may not publish to %s (the NATS server's permissions)", user, subject)
	case errors.Is(err, nats.ErrNoResponders):
		return fmt.Errorf("no natlog node answers on %s at %s (is \"natlog serve\" running, with --prefix %s? a cluster without a leader?)", c.subject, c.server, c.prefix)
	case errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		if client.IsIndefinite(err) && strings.HasPrefix(c.subject, c.subjects.Prefix()+".append.") {
			return fmt.Errorf("no reply on %s within %s (the append may have been written)", c.subject, c.timeout)
		}
		return fmt.Errorf("no reply on %s within %s", c.subject, c.timeout)
	}
	return err
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
	var c cliConn
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
	var opts []client.AppendOption
	if *msgID != "" {
		opts = append(opts, client.WithMsgID(*msgID))
	}
	if *expected != "" {
		off, err := strconv.ParseUint(strings.TrimSpace(*expected), 10, 64)
		if err != nil {
			return fmt.Errorf("%w: --expected-offset %q: want an offset", errUsage, *expected)
		}
		opts = append(opts, client.WithExpectedOffset(off))
	}
	if len(values) == 0 && len(opts) > 0 {
		return fmt.Errorf("%w: --msg-id and --expected-offset apply to one request: give the values as arguments", errUsage)
	}
	if err := c.connect(c.subjects.Append(log)); err != nil {
		return err
	}
	defer c.close()
	record := func(v []byte) client.Record {
		r := client.Record{Value: v}
		if len(hdr) > 0 {
			r.Headers = nats.Header(hdr)
		}
		return r
	}
	if len(values) == 1 && *msgID == "" {
		ctx, cancel := c.context()
		defer cancel()
		off, err := c.cl.Append(ctx, log, []byte(values[0]), append(opts, client.WithHeaders(nats.Header(hdr)))...)
		if err != nil {
			return c.explain(err)
		}
		// This client made no other append: its last index is this one's.
		printAppended(stdout, c.json, log, client.AppendResult{First: off, Last: off, Count: 1, Index: c.cl.LastIndex()})
		return nil
	}
	sum := client.AppendResult{}
	send := func(recs []client.Record) error {
		ctx, cancel := c.context()
		defer cancel()
		r, err := c.cl.AppendBatch(ctx, log, recs, opts...)
		if err != nil {
			return c.explain(err)
		}
		if sum.Count == 0 {
			sum.First = r.First
		}
		sum.Last, sum.Count, sum.Duplicate, sum.Index = r.Last, sum.Count+r.Count, r.Duplicate, r.Index
		return nil
	}
	if len(values) > 0 {
		// One request, also for one value with --msg-id: a batch's
		// reply says whether it was a duplicate.
		recs := make([]client.Record, len(values))
		for i, v := range values {
			recs[i] = record([]byte(v))
		}
		if err := send(recs); err != nil {
			return err
		}
		if len(values) == 1 {
			printAppended(stdout, c.json, log, sum)
			return nil
		}
	} else {
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
		rep := protocol.AppendBatchReply{Log: log, First: sum.First, Last: sum.Last, Count: sum.Count, Duplicate: sum.Duplicate, Index: sum.Index}
		fmt.Fprintf(stdout, "%s\n", rep.AppendJSON(nil))
	} else {
		fmt.Fprintf(stdout, "%s: appended %d records at offsets %d-%d%s\n", log, sum.Count, sum.First, sum.Last, dupNote(sum.Duplicate))
	}
	return nil
}

// printAppended prints the outcome of appending one value; with --json as
// the node's reply to a single append.
func printAppended(stdout io.Writer, asJSON bool, log string, r client.AppendResult) {
	if asJSON {
		rep := protocol.AppendReply{Log: log, Offset: r.First, Duplicate: r.Duplicate, Index: r.Index}
		fmt.Fprintf(stdout, "%s\n", rep.AppendJSON(nil))
	} else {
		fmt.Fprintf(stdout, "%s: appended at offset %d%s\n", log, r.First, dupNote(r.Duplicate))
	}
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
func appendStdin(r io.Reader, stderr io.Writer, batch, maxBytes int, record func([]byte) client.Record,
	send func([]client.Record) error, done func() int) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), maxBytes)
	var recs []client.Record
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

func (p printer) record(log string, r client.Record) {
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
		// The msg id every append carries is noise to people; --json
		// shows it.
		hdr := r.Headers
		if hdr.Get(protocol.HeaderMsgID) != "" {
			hdr = maps.Clone(hdr)
			delete(hdr, protocol.HeaderMsgID)
			delete(hdr, protocol.HeaderMsgCount)
		}
		if len(hdr) > 0 {
			b, _ := json.Marshal(hdr)
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

// fetch reads up to count records (count < 0: all) from off, one batch
// request at a time, calling fn for each, until the end of the log. Each
// request waits for its replica to have applied minIndex (if not 0). It
// returns the next offset to read.
func (c *cliConn) fetch(log string, off uint64, count int, minIndex uint64, fn func(client.Record)) (uint64, error) {
	for count != 0 {
		fo := client.FetchOptions{Max: 1000, MinIndex: minIndex}
		if count > 0 {
			fo.Max = min(fo.Max, count)
		}
		ctx, cancel := c.context()
		b, err := c.cl.Fetch(ctx, log, off, fo)
		cancel()
		if err != nil {
			return off, c.explain(err)
		}
		for _, r := range b.Records {
			fn(r)
		}
		if count > 0 {
			count -= len(b.Records)
		}
		off = b.Next
		if len(b.Records) == 0 {
			break // the end of the log
		}
	}
	return off, nil
}

func runRead(args []string, stdout, stderr io.Writer) error {
	var c cliConn
	fs := newFlagSet("read", "LOG OFFSET [--count N]", stderr)
	c.register(fs)
	count := fs.Int("count", 1, "number of records to read (fewer if the log ends first)")
	raw := fs.Bool("raw", false, "print only the values, one per line")
	minIndex := fs.Uint64("min-index", 0, "cluster mode: read from a replica only once it has applied this Raft index (the \"index\" of an append's --json output): read-your-writes")
	pos, err := c.parse(fs, args, 2, "LOG OFFSET")
	if err != nil {
		return err
	}
	log := pos[0]
	off, err := strconv.ParseUint(pos[1], 10, 64)
	if err != nil {
		return fmt.Errorf("%w: OFFSET %q: want a number", errUsage, pos[1])
	}
	if *count < 1 {
		return fmt.Errorf("%w: --count must be at least 1", errUsage)
	}
	if err := c.connect(c.subjects.Read(log)); err != nil {
		return err
	}
	defer c.close()
	p := printer{w: stdout, json: c.json, raw: *raw}
	if *count == 1 && *minIndex == 0 {
		ctx, cancel := c.context()
		defer cancel()
		r, err := c.cl.Read(ctx, log, off)
		if err != nil {
			return c.explain(err)
		}
		p.record(log, r)
		return nil
	}
	n := 0
	next, err := c.fetch(log, off, *count, *minIndex, func(r client.Record) { n++; p.record(log, r) })
	if err != nil {
		return err
	}
	if n < *count && !c.json {
		fmt.Fprintf(stderr, "natlog: %d of %d records: the log ends at offset %d\n", n, *count, next)
	}
	return nil
}

func runTail(args []string, stdout, stderr io.Writer) error {
	var c cliConn
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
	if err := c.connect(c.subjects.Info(log)); err != nil {
		return err
	}
	defer c.close()
	info := func() (protocol.LogInfo, error) {
		ctx, cancel := c.context()
		defer cancel()
		li, err := c.cl.Info(ctx, log)
		return li, c.explain(err)
	}
	li, err := info()
	switch {
	case err != nil && *follow && *from == "" && errors.Is(err, client.ErrUnknownLog):
		// As tail -F waits for a file: the consumer waits for the log
		// to be created and follows it from its first record.
		fmt.Fprintf(stderr, "natlog: log %q does not exist yet; waiting for it\n", log)
		li = protocol.LogInfo{}
	case err != nil:
		return err
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
	if !*follow {
		c.subject = c.subjects.Read(log)
		_, err := c.fetch(log, start, -1, 0, func(r client.Record) { p.record(log, r) })
		return err
	}
	// Follow until SIGINT or SIGTERM: the consumer long-polls and goes on
	// through node failures and elections, so only those signals, or
	// records removed before it read them, end it.
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	next := start
	for {
		err := c.cl.Consume(ctx, log, func(r client.Record) error {
			p.record(log, r)
			next = r.Offset + 1
			return nil
		}, client.FromOffset(next), client.WithPollWait(20*time.Second))
		if ctx.Err() != nil {
			return nil
		}
		if errors.Is(err, client.ErrOffsetOutOfRange) {
			// Retention removed records under us: go on from the oldest.
			if li, ierr := info(); ierr == nil && li.FirstOffset > next {
				fmt.Fprintf(stderr, "natlog: records %d-%d were removed by retention; going on from %d\n", next, li.FirstOffset-1, li.FirstOffset)
				next = li.FirstOffset
				continue
			}
		}
		c.subject = c.subjects.Read(log)
		return c.explain(err)
	}
}
