package sidecar

import (
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/hashicorp/raft"
)

// Leadership handed over again and again while clients append, then every
// node shuts down in time. (With hashicorp/raft's pipelined replication a
// node's Raft shutdown could wait for good for a replication goroutine
// stuck handing its pipeline an RPC: see raftfsm.NATSTransport.)
func TestClusterShutdownAfterLeadershipTransfers(t *testing.T) {
	tc := newThreeNodes(t)
	tc.leader()
	nc := tc.client()
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for w := range 4 {
		wg.Go(func() {
			for i := 0; ; i++ {
				select {
				case <-stop:
					return
				default:
				}
				v := strconv.Itoa(w) + "-" + strconv.Itoa(i)
				if _, err := appendRetry(t, nc, "tr", v, v); err != nil {
					t.Errorf("append %s: %v", v, err)
					return
				}
			}
		})
	}
	transfers := 0
	for deadline := time.Now().Add(20 * time.Second); transfers < 12 && time.Now().Before(deadline); {
		for _, id := range tc.ids() {
			if c := tc.node(id).cluster; c.raft.State() == raft.Leader {
				if c.raft.LeadershipTransfer().Error() == nil {
					transfers++
				}
				break
			}
		}
	}
	close(stop)
	wg.Wait()
	t.Logf("%d leadership transfers", transfers)
	for _, id := range tc.ids() {
		done := make(chan error, 1)
		go func() { done <- tc.shutdown(id) }()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("shutdown %s: %v", id, err)
			}
		case <-time.After(30 * time.Second):
			t.Fatalf("%s did not shut down within 30 s", id)
		}
	}
}
