package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/internal/testnats"
	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/sidecar/protocol"
)

// TestClusterProcessesKill9: a nats-server process and three natlog serve
// processes in cluster mode. Clients append with Natlog-Msg-Id and retry
// while the leader is killed with kill -9 and later restarted. At the end
// every acknowledged record is on every node exactly once, in the same
// order.
func TestClusterProcessesKill9(t *testing.T) {
	ns := testnats.StartServer(t)
	nodes := map[string]*node{}
	for _, id := range []string{"n1", "n2", "n3"} {
		// Snapshots every 64 entries, checked every 100 ms: the nodes
		// take linked snapshots while appends run and around the kill.
		nodes[id] = startNode(t, "", "--nats-url", ns.URL, "--node-id", id, "--cluster", "e2e",
			"--bootstrap-expect", "3", "--raft-timeout", "300ms", "--announce-interval", "100ms", "--raft-log-level", "off",
			"--raft-snapshot-threshold", "64", "--raft-snapshot-interval", "100ms")
	}
	nc, err := nats.Connect(ns.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	leader := clusterLeader(t, nc, "")

	const writers, perWriter = 4, 100
	var (
		mu    sync.Mutex
		acked []string
		wg    sync.WaitGroup
		errs  = make(chan error, writers)
	)
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				v := fmt.Sprintf("w%d-%d", w, i)
				if err := appendWithRetry(nc, "orders", v); err != nil {
					errs <- err
					return
				}
				mu.Lock()
				acked = append(acked, v)
				mu.Unlock()
			}
		}()
	}
	waitFor(t, 30*time.Second, "appends before the kill", func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) >= 100 })
	nodes[leader].kill()
	clusterLeader(t, nc, leader)
	waitFor(t, 30*time.Second, "appends after the kill", func() bool { mu.Lock(); defer mu.Unlock(); return len(acked) >= 250 })
	nodes[leader].start()
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	// Wait until every member has applied everything, then stop them all
	// and compare their logs on disk.
	waitFor(t, 30*time.Second, "every node caught up", func() bool {
		m, err := nc.Request("natlog.cluster.status", nil, 2*time.Second)
		if err != nil {
			return false
		}
		var st protocol.ClusterStatus
		if json.Unmarshal(m.Data, &st) != nil || len(st.Peers) != 3 {
			return false
		}
		for _, p := range st.Peers {
			if p.LagIndex != 0 || p.State == "unreachable" {
				return false
			}
		}
		return st.AppliedIndex == st.CommitIndex
	})
	// natlog append --json says the append's Raft index; natlog read
	// --min-index reads it back from whichever replica.
	out, errOut, code := runCLI(t, ns.URL, "", "append", "ryw", "mine", "--json")
	var ar protocol.AppendReply
	if code != 0 || json.Unmarshal([]byte(out), &ar) != nil || ar.Index == 0 {
		t.Fatalf("natlog append --json: exit %d, %q, %q: want an index", code, out, errOut)
	}
	for range 3 {
		out, errOut, code = runCLI(t, ns.URL, "", "read", "ryw", fmt.Sprint(ar.Offset), "--min-index", fmt.Sprint(ar.Index), "--raw")
		if code != 0 || out != "mine\n" {
			t.Fatalf("natlog read --min-index %d: exit %d, %q, %q", ar.Index, code, out, errOut)
		}
	}
	// An operator moves the leadership back to the restarted node.
	if out, errOut, code = runCLI(t, ns.URL, "", "cluster", "step-down", leader); code != 0 || out != leader+" leads the cluster\n" {
		t.Fatalf("natlog cluster step-down %s: exit %d, %q, %q", leader, code, out, errOut)
	}
	waitFor(t, 10*time.Second, "the status naming the new leader", func() bool {
		m, err := nc.Request("natlog.cluster.status", nil, time.Second)
		var st protocol.ClusterStatus
		return err == nil && json.Unmarshal(m.Data, &st) == nil && st.Leader == leader
	})
	// Every node keeps a linked snapshot (the restarted one takes its
	// first within a snapshot interval if the kill came before it).
	for id, n := range nodes {
		waitFor(t, 10*time.Second, id+"'s linked snapshot", func() bool {
			links, err := os.ReadDir(filepath.Join(n.dataDir, "raft", "snapshot-links"))
			return err == nil && len(links) > 0
		})
	}
	for _, n := range nodes {
		if code := n.signal(syscall.SIGINT); code != 0 {
			t.Fatalf("exit %d:\n%s", code, n.out)
		}
	}
	slices.Sort(acked)
	var ref []string
	for id, n := range nodes {
		recs := readLogDir(t, filepath.Join(n.dataDir, "fsm", "logs", "orders", "segments"))
		sorted := slices.Clone(recs)
		slices.Sort(sorted)
		if !slices.Equal(sorted, acked) {
			t.Errorf("%s holds %d records, %d were acknowledged: not exactly once (the killed leader was %s)\n%s", id, len(recs), len(acked), leader, n.out)
			continue
		}
		if ref == nil {
			ref = recs
		} else if !slices.Equal(recs, ref) {
			t.Fatalf("%s holds the records in another order", id)
		}
	}
}

// clusterLeader waits for a leader other than not and returns it.
func clusterLeader(t *testing.T, nc *nats.Conn, not string) string {
	t.Helper()
	var leader string
	waitFor(t, 30*time.Second, "a leader", func() bool {
		m, err := nc.Request("natlog.cluster.status", nil, time.Second)
		if err != nil {
			return false
		}
		var st protocol.ClusterStatus
		if json.Unmarshal(m.Data, &st) != nil {
			return false
		}
		leader = st.Leader
		return leader != "" && leader != not
	})
	return leader
}

// appendWithRetry appends value with itself as Natlog-Msg-Id, retrying
// through elections.
func appendWithRetry(nc *nats.Conn, log, value string) error {
	deadline := time.Now().Add(60 * time.Second)
	var last error
	for time.Now().Before(deadline) {
		m, err := nc.RequestMsg(&nats.Msg{Subject: "natlog.append." + log, Data: []byte(value),
			Header: nats.Header{protocol.HeaderMsgID: {value}}}, 2*time.Second)
		if err == nil {
			e := protocol.ReplyError(m.Header, m.Data)
			if e == nil {
				return nil
			}
			if e.ErrCode != protocol.CodeNotLeader && e.ErrCode != protocol.CodeUnavailable {
				return e
			}
			err = e
		} else if !errors.Is(err, nats.ErrNoResponders) && !errors.Is(err, nats.ErrTimeout) {
			return err
		}
		last = err
		time.Sleep(20 * time.Millisecond)
	}
	return fmt.Errorf("append %s: gave up: %v", value, last)
}

// readLogDir reads every record value of the logcore log in dir.
func readLogDir(t *testing.T, dir string) []string {
	t.Helper()
	l, err := logcore.Open(dir, logcore.DefaultConfig())
	if err != nil {
		t.Fatalf("open %s: %v", dir, err)
	}
	defer l.Close()
	var out []string
	for off := l.LowestOffset(); off < l.NextOffset(); off++ {
		rec, err := l.Read(off)
		if err != nil {
			t.Fatalf("%s: read %d: %v", dir, off, err)
		}
		out = append(out, string(rec.Value))
	}
	return out
}
