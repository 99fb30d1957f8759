package client_test

import (
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/anishathalye/porcupine"

	"github.com/natlog/natlog/client"
	"github.com/natlog/natlog/internal/testnats"
	"github.com/natlog/natlog/sidecar"
	"github.com/natlog/natlog/sidecar/protocol"
)

// The linearizability check: clients append and read one log of a 3-node
// cluster (linearizable reads, which followers serve after asking the
// leader) while the leader is stopped and restarted twice, and
// porcupine checks that the history has a linearization against a
// sequential log: an acknowledged append got the next offset, a read of
// an offset saw what the log held there (or nothing past its end), and the
// final read of the whole log is one of the states the history allows.
// Appends whose outcome the client could not learn (IsIndefinite) may or
// may not have happened, as if still in flight at the end.

const linValueWidth = 8 // "w1-00042": fixed width, so a state indexes by offset

type linInput struct {
	op    string // "append", "read", "all"
	value string // append
	off   uint64 // read
}

type linOutput struct {
	unknown bool   // append: indefinite
	off     uint64 // append: offset given
	found   bool   // read: a record at off
	value   string // read: its value; all: the whole log
}

// linModel is a log of fixed-width values: state is their concatenation.
var linModel = porcupine.NondeterministicModel{
	Init: func() []any { return []any{""} },
	Step: func(st, in, out any) []any {
		s, i, o := st.(string), in.(linInput), out.(linOutput)
		n := uint64(len(s) / linValueWidth)
		switch i.op {
		case "append":
			if o.unknown {
				return []any{s, s + i.value}
			}
			if o.off == n {
				return []any{s + i.value}
			}
		case "read":
			if !o.found && i.off >= n || o.found && i.off < n && s[i.off*linValueWidth:(i.off+1)*linValueWidth] == o.value {
				return []any{s}
			}
		case "all":
			if s == o.value {
				return []any{s}
			}
		}
		return nil
	},
	DescribeOperation: func(in, out any) string {
		i, o := in.(linInput), out.(linOutput)
		switch i.op {
		case "append":
			if o.unknown {
				return fmt.Sprintf("append(%s) -> ?", i.value)
			}
			return fmt.Sprintf("append(%s) -> %d", i.value, o.off)
		case "read":
			if !o.found {
				return fmt.Sprintf("read(%d) -> none", i.off)
			}
			return fmt.Sprintf("read(%d) -> %s", i.off, o.value)
		}
		return fmt.Sprintf("all -> %d records", len(o.value)/linValueWidth)
	},
}

func TestLinearizableUnderLeaderFailures(t *testing.T) {
	if testing.Short() {
		t.Skip("a cluster with failures: not in -short")
	}
	c := newCluster(t, 3)
	admin := c.client()
	c.leader(admin)
	var workers []*client.Client
	for range 4 {
		workers = append(workers, c.client(client.WithRequestTimeout(2*time.Second)))
	}
	// The nemesis: stop the leader with operations in flight, wait for a
	// new one, bring the old one back; twice.
	checkLinearizable(t, admin, workers, func(waitOps func(int)) {
		for range 2 {
			waitOps(400)
			old := c.leader(admin)
			c.stop(old)
			eventually(t, 30*time.Second, "a new leader", func() bool {
				l := c.leader(admin)
				return l != "" && l != old
			})
			c.start(old, 3)
		}
		waitOps(400)
	})
}

// TestLinearizableUnderPartitions: the same check across network
// partitions. Every node has its own nats-server, the servers' routes run
// through links (testnats.Routed), and the workers are spread over the
// servers; the nemesis cuts the leader's server off from the others while
// operations are in flight on both sides, waits for the majority to elect
// a leader and to go on, and heals the partition; twice.
func TestLinearizableUnderPartitions(t *testing.T) {
	if testing.Short() {
		t.Skip("a cluster with failures: not in -short")
	}
	rn := testnats.NewRouted(t, 3)
	srv := map[string]int{"n1": 0, "n2": 1, "n3": 2}
	c := newCluster(t, 3, func(cfg *sidecar.Config) { cfg.NATSURL = rn.URL(srv[cfg.NodeID]) })
	var admins, workers []*client.Client
	for i := range 3 {
		admins = append(admins, c.clientAt(rn.URL(i)))
	}
	for w := range 4 {
		workers = append(workers, c.clientAt(rn.URL(w%3), client.WithRequestTimeout(2*time.Second)))
	}
	c.leader(admins[0])
	checkLinearizable(t, admins[0], workers, func(waitOps func(int)) {
		for range 2 {
			waitOps(400)
			old := c.leader(admins[0])
			rn.Isolate(srv[old])
			var rest []string
			for _, id := range c.ids() {
				if id != old {
					rest = append(rest, id)
				}
			}
			admin := admins[srv[rest[0]]]
			eventually(t, 30*time.Second, "a leader on the majority's side", func() bool {
				for _, id := range rest {
					ctx, cancel := context.WithTimeout(context.Background(), time.Second)
					st, err := admin.StatusOf(ctx, id)
					cancel()
					if err != nil || st.Leader == "" || st.Leader == old {
						return false
					}
				}
				return true
			})
			waitOps(200)
			rn.Heal()
			c.leader(admins[0])
		}
		waitOps(400)
	})
}

// checkLinearizable runs workers that append to and linearizably read
// one log while nemesis runs (it may wait for the history to grow by n
// operations with waitOps(n)), then reads the whole log through admin and
// checks the history with porcupine.
func checkLinearizable(t *testing.T, admin *client.Client, workers []*client.Client, nemesis func(waitOps func(n int))) {
	t.Helper()
	ctx := ctxT(t, 3*time.Minute)
	const logName = "lin"
	if _, err := admin.Create(ctx, logName, protocol.LogSettings{}); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	now := func() int64 { return int64(time.Since(start)) }
	var (
		mu      sync.Mutex
		history []porcupine.Operation
		end     atomic.Uint64 // highest offset acknowledged + 1, to aim reads
		stop    atomic.Bool
	)
	record := func(op porcupine.Operation) {
		mu.Lock()
		history = append(history, op)
		mu.Unlock()
	}

	var wg sync.WaitGroup
	for w, cl := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 7))
			for seq := 0; !stop.Load() && seq < 100000; seq++ {
				if rng.IntN(2) == 0 {
					v := fmt.Sprintf("w%d-%05d", w, seq)
					call := now()
					octx, cancel := context.WithTimeout(ctx, 20*time.Second)
					off, err := cl.Append(octx, logName, []byte(v))
					cancel()
					ret := now()
					switch {
					case err == nil:
						record(porcupine.Operation{ClientId: w, Input: linInput{op: "append", value: v}, Call: call, Output: linOutput{off: off}, Return: ret})
						for e := end.Load(); e < off+1 && !end.CompareAndSwap(e, off+1); e = end.Load() {
						}
					case client.IsIndefinite(err):
						// Maybe written: pending until the end.
						record(porcupine.Operation{ClientId: w, Input: linInput{op: "append", value: v}, Call: call, Output: linOutput{unknown: true}, Return: math.MaxInt64})
					}
					// A definite failure wrote nothing: not an operation.
					continue
				}
				off := uint64(rng.IntN(int(end.Load()) + 3))
				call := now()
				octx, cancel := context.WithTimeout(ctx, 5*time.Second)
				b, err := cl.Fetch(octx, logName, off, client.FetchOptions{Max: 1, Linearizable: true})
				cancel()
				ret := now()
				switch {
				case err == nil && len(b.Records) > 0:
					if b.Records[0].Offset != off {
						t.Errorf("read of %d returned offset %d", off, b.Records[0].Offset)
					}
					record(porcupine.Operation{ClientId: w, Input: linInput{op: "read", off: off}, Call: call, Output: linOutput{found: true, value: string(b.Records[0].Value)}, Return: ret})
				case err == nil || errors.Is(err, client.ErrOffsetOutOfRange):
					record(porcupine.Operation{ClientId: w, Input: linInput{op: "read", off: off}, Call: call, Output: linOutput{}, Return: ret})
				}
				// A failed read changed nothing: left out.
			}
		}()
	}

	nemesis(func(n int) { waitOps(t, &mu, &history, n) })
	stop.Store(true)
	wg.Wait()

	// The final state, read linearizably in full.
	call := now()
	var all strings.Builder
	for off := uint64(0); ; {
		b, err := admin.Fetch(ctx, logName, off, client.FetchOptions{Linearizable: true})
		if err != nil {
			t.Fatalf("final read from %d: %v", off, err)
		}
		if len(b.Records) == 0 {
			break
		}
		for _, r := range b.Records {
			all.Write(r.Value)
		}
		off = b.Next
	}
	history = append(history, porcupine.Operation{ClientId: len(workers), Input: linInput{op: "all"}, Call: call, Output: linOutput{value: all.String()}, Return: now()})

	var appends, reads, unknown int
	for _, op := range history {
		switch in := op.Input.(linInput); {
		case in.op == "append" && op.Output.(linOutput).unknown:
			unknown++
		case in.op == "append":
			appends++
		case in.op == "read":
			reads++
		}
	}
	t.Logf("history: %d acknowledged appends, %d indefinite, %d linearizable reads; final log %d records",
		appends, unknown, reads, all.Len()/linValueWidth)
	if appends < 50 || reads < 50 {
		t.Fatalf("too little history to check: %d appends, %d reads", appends, reads)
	}
	res, info := porcupine.CheckOperationsVerbose(linModel.ToModel(), history, time.Minute)
	switch res {
	case porcupine.Ok:
	case porcupine.Illegal:
		path := filepath.Join(t.TempDir(), "linearizability.html")
		if f, err := os.Create(path); err == nil {
			porcupine.Visualize(linModel.ToModel(), info, f)
			f.Close()
		}
		t.Fatalf("the history is not linearizable (visualization: %s)", path)
	default:
		t.Fatalf("porcupine could not decide within its time limit: %v", res)
	}
}

// waitOps waits until the history has grown by n operations.
func waitOps(t *testing.T, mu *sync.Mutex, history *[]porcupine.Operation, n int) {
	t.Helper()
	mu.Lock()
	target := len(*history) + n
	mu.Unlock()
	eventually(t, 60*time.Second, fmt.Sprintf("%d more operations", n), func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(*history) >= target
	})
}
