package client_test

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/client"
	"github.com/natlog/natlog/sidecar/protocol"
)

// fakeNode is a connection that plays a natlog node whose every answer the
// test decides: it answers the cluster status (leader f1, mode mode, peers
// f1 and f2 in cluster mode) and nothing else until the test subscribes
// more. For failures a real node cannot be made to produce on cue.
func fakeNode(t *testing.T, url, mode string) *nats.Conn {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	peers := `[{"id":"f1","state":"leader","voter":true}]`
	if mode == "cluster" {
		peers = `[{"id":"f1","state":"leader","voter":true},{"id":"f2","state":"follower","voter":true}]`
	}
	st := []byte(`{"node_id":"f1","leader":"f1","state":"leader","mode":"` + mode + `","peers":` + peers + `}`)
	if _, err := nc.Subscribe("natlog.cluster.status", func(m *nats.Msg) { m.Respond(st) }); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	return nc
}

// handle makes the fake node answer subject with fn, subscribed (and
// flushed to the server) before it returns.
func handle(t *testing.T, node *nats.Conn, subject string, fn nats.MsgHandler) {
	t.Helper()
	if _, err := node.Subscribe(subject, fn); err != nil {
		t.Fatal(err)
	}
	if err := node.Flush(); err != nil {
		t.Fatal(err)
	}
}

// respondError answers m with perr as a node does (Status, Description,
// and the JSON error body).
func respondError(m *nats.Msg, perr *protocol.Error) {
	r := nats.NewMsg(m.Reply)
	r.Header.Set(protocol.HeaderStatus, strconv.Itoa(perr.Code))
	r.Header.Set(protocol.HeaderDescription, perr.Description)
	r.Data = perr.AppendJSON(nil)
	m.RespondMsg(r)
}

// arrivals records when a fake node received each request.
type arrivals struct {
	mu sync.Mutex
	at []time.Time
}

// add records an arrival and returns how many there were, this one included.
func (a *arrivals) add() int {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.at = append(a.at, time.Now())
	return len(a.at)
}

func (a *arrivals) times() []time.Time {
	a.mu.Lock()
	defer a.mu.Unlock()
	return append([]time.Time(nil), a.at...)
}

func (a *arrivals) count() int { return len(a.times()) }

// connect connects a client to the NATS server at url with opts; both are
// closed by the test's cleanup.
func connect(t *testing.T, url string, natsOpts []nats.Option, opts ...client.Option) (*nats.Conn, *client.Client) {
	t.Helper()
	nc, err := nats.Connect(url, natsOpts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	cl, err := client.Connect(nc, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cl.Close() })
	return nc, cl
}
