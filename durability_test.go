package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/sidecar/protocol"
)

// Acknowledged appends survive kill -9, and then damage to the tail of the
// last store file (garbage appended; a frame cut short), as a crash in the
// middle of a write leaves it.
func TestDurabilityKill9(t *testing.T) {
	n := startNode(t, "", "--segment-bytes", "256KiB")

	// Several clients append unique values, binary ones included, until
	// told to stop; the node is killed while appends are in flight.
	const clients, enough = 8, 3000
	var mu sync.Mutex
	acked := map[uint64][]byte{}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for c := range clients {
		nc, err := nats.Connect(n.natsURL)
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		r := rand.New(rand.NewPCG(uint64(c), 7))
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				v := fmt.Appendf(nil, "c%d-%d:", c, i)
				for range r.IntN(300) {
					v = append(v, byte(r.Uint32()))
				}
				m, err := nc.Request("natlog.append.durable", v, 5*time.Second)
				if err != nil {
					return // the node is gone: this one is not acknowledged
				}
				var rep protocol.AppendReply
				if protocol.ReplyError(m.Header, m.Data) != nil || json.Unmarshal(m.Data, &rep) != nil {
					t.Errorf("append: %s", m.Data)
					return
				}
				mu.Lock()
				if _, dup := acked[rep.Offset]; dup {
					t.Errorf("offset %d acknowledged twice", rep.Offset)
				}
				acked[rep.Offset] = v
				mu.Unlock()
			}
		})
	}
	waitFor(t, 60*time.Second, fmt.Sprintf("%d acknowledged appends", enough), func() bool {
		mu.Lock()
		defer mu.Unlock()
		return len(acked) >= enough
	})
	n.kill() // kill -9, appends in flight
	close(stop)
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("%d appends acknowledged before kill -9", len(acked))

	n.start()
	next := checkAcked(t, n, acked)

	segs := filepath.Join(n.dataDir, "logs", "durable", "segments")
	store := lastStore(t, segs)
	steps := []struct {
		name   string
		damage func(b []byte) []byte
	}{
		{"garbage after the last frame", func(b []byte) []byte {
			return append(b, bytes.Repeat([]byte{0xde, 0xad, 0xbe, 0xef}, 100)...)
		}},
		{"a frame cut short", func(b []byte) []byte {
			// A copy of the last frame, with a higher offset, torn in the
			// middle of its payload: an append that never completed.
			last := lastFrame(t, b)
			rec, _, err := logcore.DecodeFrame(last)
			if err != nil {
				t.Fatal(err)
			}
			rec.Offset++
			f := logcore.AppendFrame(nil, &rec)
			return append(b, f[:len(f)/2]...)
		}},
		{"zeros after the last frame", func(b []byte) []byte {
			return append(b, make([]byte, 4096)...)
		}},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			n.signal(syscall.SIGKILL)
			b, err := os.ReadFile(store)
			if err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(store, st.damage(b), 0o644); err != nil {
				t.Fatal(err)
			}
			n.start()
			if got := checkAcked(t, n, acked); got != next {
				t.Fatalf("the log ends at %d after the damage, %d before", got, next)
			}
			// Appends go on where the log ended.
			out := n.mustCLI("", "append", "durable", "after "+st.name, "--json")
			if want := fmt.Sprintf(`{"log":"durable","offset":%d}`+"\n", next); out != want {
				t.Fatalf("append after recovery: %q, want %q", out, want)
			}
			next++
		})
	}
}

// checkAcked reads the whole log and checks every acknowledged record byte
// for byte; it returns the log's end offset.
func checkAcked(t *testing.T, n *node, acked map[uint64][]byte) uint64 {
	t.Helper()
	nc, err := nats.Connect(n.natsURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	got := map[uint64][]byte{}
	var off, end uint64
	for {
		req := protocol.ReadRequest{Offset: off, Max: 1000}
		m, err := nc.RequestMsg(&nats.Msg{Subject: "natlog.read.durable", Data: req.AppendMsgpack(nil),
			Header: nats.Header{protocol.HeaderContentType: {protocol.ContentTypeMsgpack}}}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		if e := protocol.ReplyError(m.Header, m.Data); e != nil {
			t.Fatalf("read from %d: %v", off, e)
		}
		rep, err := protocol.DecodeReadReply(m.Data)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range rep.Records {
			got[r.Offset] = bytes.Clone(r.Value)
		}
		off, end = rep.Next, rep.End
		if len(rep.Records) == 0 {
			break
		}
	}
	var missing []uint64
	for o, v := range acked {
		if g, ok := got[o]; !ok || !bytes.Equal(g, v) {
			missing = append(missing, o)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		t.Fatalf("%d acknowledged records lost or changed, e.g. offset %d (log end %d)", len(missing), missing[0], end)
	}
	return end
}

// lastStore returns the path of the newest store file in dir.
func lastStore(t *testing.T, dir string) string {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var stores []string
	for _, e := range ents {
		if strings.HasSuffix(e.Name(), ".store") {
			stores = append(stores, e.Name())
		}
	}
	if len(stores) < 2 {
		t.Fatalf("want several segments, have %v", stores)
	}
	slices.Sort(stores)
	return filepath.Join(dir, stores[len(stores)-1])
}

// lastFrame returns the bytes of the last whole frame of a store.
func lastFrame(t *testing.T, b []byte) []byte {
	t.Helper()
	var last []byte
	for pos := 0; pos < len(b); {
		_, size, err := logcore.DecodeFrame(b[pos:])
		if err != nil {
			break
		}
		last = b[pos : pos+size]
		pos += size
	}
	if last == nil {
		t.Fatal("no frame in the last store")
	}
	return last
}
