package testnats

import (
	"io"
	"net"
	"net/url"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// link is a TCP proxy on loopback that carries the NATS route between two
// servers of a test's NATS cluster. Cutting it closes the route's
// connections and refuses new ones until it is healed: a network
// partition between the two servers (the servers themselves keep
// running, and keep serving the clients connected to them).
type link struct {
	l      net.Listener
	target string

	mu    sync.Mutex
	up    bool
	conns map[net.Conn]struct{}
	wg    sync.WaitGroup
}

func newLink(t testing.TB, target string) *link {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	k := &link{l: l, target: target, up: true, conns: map[net.Conn]struct{}{}}
	k.wg.Add(1)
	go k.serve()
	return k
}

func (k *link) addr() string { return k.l.Addr().String() }

func (k *link) serve() {
	defer k.wg.Done()
	for {
		c, err := k.l.Accept()
		if err != nil {
			return // closed
		}
		k.mu.Lock()
		up := k.up
		k.mu.Unlock()
		if !up {
			c.Close()
			continue
		}
		d, err := net.DialTimeout("tcp", k.target, time.Second)
		if err != nil {
			c.Close()
			continue
		}
		k.mu.Lock()
		if !k.up {
			k.mu.Unlock()
			c.Close()
			d.Close()
			continue
		}
		k.conns[c], k.conns[d] = struct{}{}, struct{}{}
		k.wg.Add(2)
		k.mu.Unlock()
		go k.pipe(c, d)
		go k.pipe(d, c)
	}
}

// pipe copies from src to dst until either side fails, then closes both.
func (k *link) pipe(dst, src net.Conn) {
	defer k.wg.Done()
	io.Copy(dst, src)
	dst.Close()
	src.Close()
	k.mu.Lock()
	delete(k.conns, dst)
	delete(k.conns, src)
	k.mu.Unlock()
}

// cut drops every connection on the link and refuses new ones.
func (k *link) cut() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.up = false
	for c := range k.conns {
		c.Close()
	}
}

// heal lets connections through again (the servers redial their routes).
func (k *link) heal() {
	k.mu.Lock()
	k.up = true
	k.mu.Unlock()
}

func (k *link) close() {
	k.l.Close()
	k.cut()
	k.wg.Wait()
}

// Routed is a NATS cluster of in-process nats-servers whose routes
// run through links, so that a test can partition the network between
// them. Server i solicits a route to every server j > i through
// links[i][j].
type Routed struct {
	servers []*server.Server
	links   map[[2]int]*link
}

// NewRouted starts n servers, stopped when the test ends.
func NewRouted(t testing.TB, n int) *Routed {
	t.Helper()
	rn := &Routed{servers: make([]*server.Server, n), links: map[[2]int]*link{}}
	t.Cleanup(func() {
		for _, k := range rn.links {
			k.close()
		}
		for _, s := range rn.servers {
			if s != nil {
				s.Shutdown()
				s.WaitForShutdown()
			}
		}
	})
	// Start the last server first: each server's routes go to servers
	// already listening.
	for i := n - 1; i >= 0; i-- {
		var routes []*url.URL
		for j := i + 1; j < n; j++ {
			k := newLink(t, rn.servers[j].ClusterAddr().String())
			rn.links[[2]int{i, j}] = k
			routes = append(routes, &url.URL{Scheme: "nats-route", Host: k.addr()})
		}
		s, err := server.NewServer(&server.Options{
			Host: "127.0.0.1", Port: server.RANDOM_PORT, NoLog: true, NoSigs: true,
			Cluster: server.ClusterOpts{
				Name: "natlog-partition", Host: "127.0.0.1", Port: server.RANDOM_PORT,
				// Servers gossip the addresses of the routes they know,
				// and a server dials the gossiped address directly: that
				// would route around the links. Advertise an address
				// nothing listens on (a dial fails at once, and implicit
				// routes are not retried); the links are explicit routes,
				// which servers redial forever.
				Advertise: "127.0.0.1:1",
				// Clients stay on their server (no failover to another).
				NoAdvertise: true,
			},
			Routes: routes,
		})
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatalf("nats-server %d not ready", i)
		}
		rn.servers[i] = s
	}
	return rn
}

// URL is server i's client URL.
func (rn *Routed) URL(i int) string { return rn.servers[i].ClientURL() }

// Isolate cuts every link of server i: a partition between it and the
// others (which stay connected to each other).
func (rn *Routed) Isolate(i int) {
	for p, k := range rn.links {
		if p[0] == i || p[1] == i {
			k.cut()
		}
	}
}

// Heal heals every link; the servers redial their routes within about a
// second.
func (rn *Routed) Heal() {
	for _, k := range rn.links {
		k.heal()
	}
}
