package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nuid"

	"github.com/natlog/natlog/sidecar/protocol"
)

// Option configures a Client.
type Option func(*options)

type options struct {
	prefix        string
	timeout       time.Duration
	backoffMin    time.Duration
	backoffMax    time.Duration
	producerID    string
	maxPending    int
	maxBatch      int
	refresh       time.Duration
	preferNode    string
	preferHost    string
	asyncTimeout  time.Duration
	logger        *slog.Logger
	natsOpts      []nats.Option
	readFromNodes bool
	retryWindow   time.Duration
}

func defaultOptions() options {
	return options{
		prefix:        protocol.DefaultPrefix,
		timeout:       5 * time.Second,
		backoffMin:    5 * time.Millisecond,
		backoffMax:    500 * time.Millisecond,
		maxPending:    1024,
		maxBatch:      1000,
		refresh:       2 * time.Second,
		asyncTimeout:  time.Minute,
		logger:        slog.New(slog.DiscardHandler),
		readFromNodes: true,
		retryWindow:   DefaultRetryWindow,
	}
}

// DefaultRetryWindow is how long, by default, an append that may have been
// written is retried with its Natlog-Msg-Id (WithRetryWindow): well inside
// the nodes' default dedup window of 2 minutes.
const DefaultRetryWindow = 90 * time.Second

// validate reports options that would make the client misbehave later
// (a ticker or timer of zero, a retry loop without a pause).
func (o *options) validate() error {
	switch {
	case o.maxPending < 1 || o.maxBatch < 1:
		return errors.New("natlog client: max pending and max batch must be positive")
	case o.timeout <= 0 || o.asyncTimeout <= 0:
		return errors.New("natlog client: the request and async timeouts must be positive")
	case o.backoffMin <= 0 || o.backoffMax < o.backoffMin:
		return fmt.Errorf("natlog client: backoff [%v, %v]: the minimum must be positive and not above the maximum", o.backoffMin, o.backoffMax)
	case o.refresh <= 0:
		return fmt.Errorf("natlog client: refresh interval %v must be positive", o.refresh)
	case o.retryWindow <= 0:
		return fmt.Errorf("natlog client: retry window %v must be positive", o.retryWindow)
	}
	return nil
}

// WithPrefix sets the nodes' subject prefix (--prefix; "natlog" by default).
func WithPrefix(p string) Option { return func(o *options) { o.prefix = p } }

// WithRequestTimeout bounds each attempt of a request (5 s by default); the
// context bounds the whole call, retries included.
func WithRequestTimeout(d time.Duration) Option { return func(o *options) { o.timeout = d } }

// WithBackoff sets the bounds of the exponential backoff between retries
// (5 ms to 500 ms by default, with jitter). min must be positive and max
// at least min.
func WithBackoff(min, max time.Duration) Option {
	return func(o *options) { o.backoffMin, o.backoffMax = min, max }
}

// WithProducerID sets a readable prefix of the Natlog-Msg-Id of every
// append: the ids are "<id>-<instance>-<sequence>", where instance is
// random and new for every client (a NUID), so that a process restarted
// with the same id within the nodes' dedup window does not send ids its
// previous run used (the nodes would answer "duplicate" with the old
// record's offset and drop the new one). Without it the ids are
// "<instance>-<sequence>". To retry one append across processes, keep its
// id and use WithMsgID.
func WithProducerID(id string) Option { return func(o *options) { o.producerID = id } }

// WithMaxPending bounds how many records AppendAsync holds, queued or in
// flight, before it blocks (1024 by default).
func WithMaxPending(n int) Option { return func(o *options) { o.maxPending = n } }

// WithMaxBatch bounds how many queued AppendAsync records go into one
// request (1000 by default; the NATS max payload bounds it too).
func WithMaxBatch(n int) Option { return func(o *options) { o.maxBatch = n } }

// WithAsyncTimeout bounds how long AppendAsync retries a batch before it
// fails its futures (one minute by default).
func WithAsyncTimeout(d time.Duration) Option { return func(o *options) { o.asyncTimeout = d } }

// WithRefreshInterval sets how often the client asks the cluster for its
// membership and leader (2 s by default; it must be positive); it also
// asks after a failure.
func WithRefreshInterval(d time.Duration) Option { return func(o *options) { o.refresh = d } }

// WithRetryWindow bounds how long a request with a Natlog-Msg-Id (an
// append) is retried once an attempt may have been written, counted from
// its first attempt (DefaultRetryWindow, 90 s, by default), whatever the
// context's deadline: a retry after the nodes' dedup window (2 minutes by
// default, --dedup-window) could write the record twice. Past it the call
// fails with the indefinite error of its last attempt. Keep it below the
// nodes' dedup window minus the request timeout.
func WithRetryWindow(d time.Duration) Option { return func(o *options) { o.retryWindow = d } }

// WithPreferredNode makes reads go to the node with this id while it is
// a reachable member, leader or not (the sidecar next to the application,
// say); without a preference reads go round-robin to the followers.
func WithPreferredNode(id string) Option { return func(o *options) { o.preferNode = id } }

// WithPreferredHost makes reads go to a member that runs on this host
// (leader or not) while there is one; LocalHost() gives this machine's
// name.
func WithPreferredHost(host string) Option { return func(o *options) { o.preferHost = host } }

// WithoutReadRouting sends reads to the nodes' shared subject, where NATS
// picks a node, instead of routing them to replicas chosen by the client.
func WithoutReadRouting() Option { return func(o *options) { o.readFromNodes = false } }

// WithLogger sets the logger of the client's retries and membership changes.
func WithLogger(l *slog.Logger) Option { return func(o *options) { o.logger = l } }

// WithNATSOptions sets the NATS options Dial connects with (TLS,
// credentials, name, ...).
func WithNATSOptions(opts ...nats.Option) Option {
	return func(o *options) { o.natsOpts = append(o.natsOpts, opts...) }
}

// LocalHost returns this machine's host name, for WithPreferredHost.
func LocalHost() string {
	h, _ := os.Hostname()
	return h
}

// Client talks to a natlog node or cluster over a NATS connection. It is
// safe for concurrent use.
type Client struct {
	nc       *nats.Conn
	ownConn  bool
	opts     options
	subjects protocol.Subjects
	producer string
	seq      atomic.Uint64
	// lastIndex is the highest Raft index of an acknowledged append
	// (LastIndex).
	lastIndex atomic.Uint64

	mu       sync.Mutex
	view     view
	rr       uint64
	refreshC chan struct{}

	window    chan struct{} // AppendAsync slots
	prodMu    sync.Mutex
	producers map[string]*producer

	ctx    context.Context // cancelled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup
	closed atomic.Bool
	// closeMu orders Close against AppendAsync starting a producer
	// goroutine: none is added to wg once Close waits for it.
	closeMu sync.RWMutex

	// Requests waiting for a reply, so that one the NATS server refuses
	// to let this connection publish (a permissions violation, which
	// nats.go reports only to the connection's error handler) fails at
	// once instead of at its timeout. See request.
	reqMu   sync.Mutex
	waiting map[*waitingRequest]struct{}
	// nodeReadsDenied is set when this connection may not publish to a
	// node's own read subject: reads then go to the shared subject.
	nodeReadsDenied atomic.Bool
	// statusDenied is set when this connection may not ask for the
	// status: the refresher stops asking.
	statusDenied atomic.Bool
}

// view is what the client knows of the cluster.
type view struct {
	status  protocol.ClusterStatus
	readers []string // nodes that serve reads, in a stable order
}

// Connect returns a client on nc, which stays the caller's. It asks the
// nodes for the cluster's membership, again while none answers, and fails
// if none has within the request timeout. It adds an error handler to nc
// (calling the one set before it): the NATS server reports a publish the
// connection is not permitted (its user's permissions) only there, and the
// client fails such a request at once. Set the connection's own error
// handler before Connect: one set after it replaces the client's.
func Connect(nc *nats.Conn, opts ...Option) (*Client, error) {
	return newClient(nc, false, opts)
}

// Dial connects to NATS at url (comma-separated URLs; the options of
// WithNATSOptions apply) and returns a client that owns the connection.
func Dial(url string, opts ...Option) (*Client, error) {
	o := defaultOptions()
	for _, f := range opts {
		f(&o)
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	nc, err := nats.Connect(url, append([]nats.Option{nats.Name("natlog client")}, o.natsOpts...)...)
	if err != nil {
		return nil, err
	}
	c, err := newClient(nc, true, opts)
	if err != nil {
		nc.Close()
		return nil, err
	}
	return c, nil
}

func newClient(nc *nats.Conn, own bool, opts []Option) (*Client, error) {
	o := defaultOptions()
	for _, f := range opts {
		f(&o)
	}
	subj, err := protocol.NewSubjects(o.prefix)
	if err != nil {
		return nil, err
	}
	if err := o.validate(); err != nil {
		return nil, err
	}
	// A fresh instance id even for a configured producer id: see
	// WithProducerID.
	pid := nuid.Next()
	if o.producerID != "" {
		pid = o.producerID + "-" + pid
	}
	c := &Client{nc: nc, ownConn: own, opts: o, subjects: subj, producer: pid,
		refreshC: make(chan struct{}, 1), window: make(chan struct{}, o.maxPending),
		producers: map[string]*producer{}}
	// Start the round-robin at a random place: many short-lived clients
	// (one read each, say) would otherwise all pick the same replica.
	c.rr = uint64(jitter(1 << 30))
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.waiting = map[*waitingRequest]struct{}{}
	addClient(c)
	ctx, cancel := context.WithTimeout(c.ctx, o.timeout)
	defer cancel()
	// A node that is starting (or a cluster in an election) answers
	// soon: ask again until the timeout.
	backoff := o.backoffMin
	for attempt := 1; ; attempt++ {
		err := c.refresh(ctx)
		if err == nil {
			break
		}
		if errors.Is(err, nats.ErrPermissionViolation) {
			// This user may not ask for the status: go without the
			// view (reads on the shared subject).
			c.opts.logger.Debug("natlog client: no cluster status", "err", err)
			c.statusDenied.Store(true)
			break
		}
		if retry, _ := outcome(err); !retry || ctx.Err() != nil {
			c.cancel()
			removeClient(c)
			return nil, &Error{Op: "connect", Err: err, Attempts: attempt}
		}
		t := time.NewTimer(backoff)
		select {
		case <-ctx.Done():
			t.Stop()
			c.cancel()
			removeClient(c)
			return nil, &Error{Op: "connect", Err: err, Attempts: attempt}
		case <-t.C:
		}
		backoff = min(2*backoff, o.backoffMax)
	}
	c.wg.Add(1)
	go c.refresher()
	return c, nil
}

// Close stops the client. Appends still queued by AppendAsync fail with
// ErrClosed; call Flush first to wait for them. A connection given to
// Connect stays open.
func (c *Client) Close() error {
	c.closeMu.Lock()
	first := c.closed.CompareAndSwap(false, true)
	c.closeMu.Unlock()
	if !first {
		return nil
	}
	c.cancel()
	c.wg.Wait()
	removeClient(c)
	if c.ownConn {
		c.nc.Close()
	}
	return nil
}

// Conn returns the client's NATS connection.
func (c *Client) Conn() *nats.Conn { return c.nc }

// Status asks a node for the cluster's status (any node; see StatusOf).
func (c *Client) Status(ctx context.Context) (protocol.ClusterStatus, error) {
	var st protocol.ClusterStatus
	m, err := c.do(ctx, "status", "", true, 0, func(int) *nats.Msg { return &nats.Msg{Subject: c.subjects.Status()} })
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(m.Data, &st); err != nil {
		return st, &Error{Op: "status", Err: err}
	}
	return st, nil
}

// StatusOf asks the node id for its view of the cluster.
func (c *Client) StatusOf(ctx context.Context, id string) (protocol.ClusterStatus, error) {
	var st protocol.ClusterStatus
	if !protocol.ValidLogName(id) {
		return st, &Error{Op: "status", Err: fmt.Errorf("bad node id %q", id)}
	}
	m, err := c.do(ctx, "status", "", true, 0, func(int) *nats.Msg { return &nats.Msg{Subject: c.subjects.Node(id).Status()} })
	if err != nil {
		return st, err
	}
	if err := json.Unmarshal(m.Data, &st); err != nil {
		return st, &Error{Op: "status", Err: err}
	}
	return st, nil
}

// Leader returns the id of the leader the client knows of ("" if none).
func (c *Client) Leader() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.view.status.Leader
}

// Nodes returns the ids of the nodes the client routes reads to.
func (c *Client) Nodes() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.view.readers)
}

// refresh asks any node for the status and updates the view.
func (c *Client) refresh(ctx context.Context) error {
	m, err := c.request(ctx, &nats.Msg{Subject: c.subjects.Status()})
	if err != nil {
		return err
	}
	if perr := protocol.ReplyError(m.Header, m.Data); perr != nil {
		return perr
	}
	var st protocol.ClusterStatus
	if err := json.Unmarshal(m.Data, &st); err != nil {
		return err
	}
	// Readers: the members other than the leader that the answering node
	// has heard from lately; if it has heard from none (it just started),
	// all of them (a dead one answers "no responders" and the read goes
	// elsewhere); the leader only when it is alone.
	var readers, unheard, leader []string
	for _, p := range st.Peers {
		switch {
		case !protocol.ValidLogName(p.ID):
		case p.ID == st.Leader:
			leader = append(leader, p.ID)
		case p.State == "unreachable":
			unheard = append(unheard, p.ID)
		default:
			readers = append(readers, p.ID)
		}
	}
	if len(readers) == 0 {
		readers = unheard
	}
	if len(readers) == 0 {
		readers = leader
	}
	slices.Sort(readers)
	c.mu.Lock()
	old := c.view.status.Leader
	c.view = view{status: st, readers: readers}
	c.mu.Unlock()
	if old != st.Leader {
		c.opts.logger.Debug("natlog client: leader", "leader", st.Leader, "readers", readers)
	}
	return nil
}

// invalidate asks the refresher to refresh the view now.
func (c *Client) invalidate() {
	select {
	case c.refreshC <- struct{}{}:
	default:
	}
}

func (c *Client) refresher() {
	defer c.wg.Done()
	t := time.NewTicker(c.opts.refresh)
	defer t.Stop()
	for {
		select {
		case <-c.ctx.Done():
			return
		case <-t.C:
		case <-c.refreshC:
		}
		if c.statusDenied.Load() {
			continue
		}
		ctx, cancel := context.WithTimeout(c.ctx, c.opts.timeout)
		if err := c.refresh(ctx); err != nil && c.ctx.Err() == nil {
			c.opts.logger.Debug("natlog client: refresh", "err", err)
		}
		cancel()
	}
}

// readNode picks the node for a read: the preferred one while it serves
// reads, otherwise the next in round-robin order. avoid is a node that
// just failed. It returns "" if the client should use the shared subject.
func (c *Client) readNode(avoid string) string {
	if !c.opts.readFromNodes || c.nodeReadsDenied.Load() {
		return ""
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	rs := c.view.readers
	if len(rs) == 0 {
		return ""
	}
	if c.opts.preferNode != "" || c.opts.preferHost != "" {
		// A preferred node serves reads whatever its role, the leader
		// included: it is the one next to the application.
		for _, p := range c.view.status.Peers {
			if p.ID != avoid && protocol.ValidLogName(p.ID) && p.State != "unreachable" &&
				(p.ID == c.opts.preferNode || c.opts.preferHost != "" && p.Host == c.opts.preferHost) {
				return p.ID
			}
		}
	}
	for range rs {
		c.rr++
		if id := rs[c.rr%uint64(len(rs))]; id != avoid {
			return id
		}
	}
	return ""
}

// do sends the request build makes for each attempt until one succeeds,
// the error is final, or ctx ends. Retries (no responders, not leader,
// unavailable, a NATS disconnect, and for retryable requests timeouts) wait
// a jittered exponential backoff and refresh the view. retryTimeouts says a
// request may be repeated after an attempt that may have taken effect
// (reads; appends with a msg id). Each attempt may take the request timeout
// plus extra (a long poll's wait).
//
// The error is indefinite if any attempt may have taken effect, whatever
// the later ones ended with. A request with a Natlog-Msg-Id is not retried
// after such an attempt once WithRetryWindow has passed since the first.
func (c *Client) do(ctx context.Context, op, log string, retryTimeouts bool, extra time.Duration, build func(attempt int) *nats.Msg) (*nats.Msg, error) {
	if c.closed.Load() {
		return nil, &Error{Op: op, Log: log, Err: ErrClosed}
	}
	backoff := c.opts.backoffMin
	fellBack := false
	// maybeWritten is sticky: a later attempt's definite failure ("no
	// responders", "nothing was written") says nothing of an earlier
	// attempt that may have been written.
	maybeWritten := false
	var first time.Time // when the first attempt was sent
	fail := func(err error, attempts int) error {
		return &Error{Op: op, Log: log, Err: err, Indefinite: maybeWritten, Attempts: attempts}
	}
	for attempt := 1; ; attempt++ {
		if err := ctx.Err(); err != nil {
			// Done before this attempt was sent: it reached no node.
			return nil, fail(err, attempt-1)
		}
		if first.IsZero() {
			first = time.Now()
		}
		req := build(attempt)
		closedBefore := c.nc.IsClosed()
		actx, cancel := context.WithTimeout(ctx, c.opts.timeout+extra)
		m, err := c.request(actx, req)
		cancel()
		if err != nil && !fellBack && errors.Is(err, nats.ErrPermissionViolation) && c.isNodeRead(req.Subject) {
			// Not permitted to read from a node by its own subject:
			// from now on the shared subject, where NATS picks (the
			// read builders use it once the flag is set).
			if !c.nodeReadsDenied.Swap(true) {
				c.opts.logger.Debug("natlog client: reads on the shared subject", "err", err)
			}
			fellBack = true
			attempt--
			continue
		}
		if err == nil {
			perr := protocol.ReplyError(m.Header, m.Data)
			if perr == nil {
				return m, nil
			}
			err = perr
		}
		retry, indefinite := outcome(err)
		if closedBefore && errors.Is(err, nats.ErrConnectionClosed) {
			// nats.go refused to publish on a connection closed
			// before the attempt: nothing was sent.
			indefinite = false
		}
		maybeWritten = maybeWritten || indefinite
		if ctx.Err() != nil {
			return nil, fail(err, attempt)
		}
		if indefinite && !retryTimeouts {
			retry = false
		}
		if !retry || c.closed.Load() {
			return nil, fail(err, attempt)
		}
		wait := backoff/2 + time.Duration(jitter(int64(backoff/2+1)))
		backoff = min(backoff*2, c.opts.backoffMax)
		if maybeWritten && req.Header.Get(protocol.HeaderMsgID) != "" && time.Since(first)+wait >= c.opts.retryWindow {
			// The nodes forget the id after their dedup window: a
			// retry sent later could write the record twice.
			return nil, fail(err, attempt)
		}
		c.opts.logger.Debug("natlog client: retry", "op", op, "log", log, "attempt", attempt, "err", err)
		c.invalidate()
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, fail(err, attempt)
		case <-c.ctx.Done():
			t.Stop()
			return nil, fail(ErrClosed, attempt)
		case <-t.C:
		}
	}
}

// jitterState is seeded from the clock so that processes differ.
var jitterState = func() *atomic.Uint64 {
	var s atomic.Uint64
	s.Store(uint64(time.Now().UnixNano()))
	return &s
}()

// jitter returns a pseudo-random number in [0, n) (splitmix64): for
// backoff and the read round-robin's start, nothing that needs quality.
func jitter(n int64) int64 {
	x := jitterState.Add(0x9e3779b97f4a7c15)
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	return int64(x % uint64(n))
}

// nextMsgID returns a fresh Natlog-Msg-Id.
func (c *Client) nextMsgID() string {
	return c.producer + "-" + strconv.FormatUint(c.seq.Add(1), 10)
}
