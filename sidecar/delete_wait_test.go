package sidecar

import (
	"testing"
	"time"

	"github.com/natlog/natlog/sidecar/protocol"
)

// A read waiting at the end of a log that is deleted answers 404 / 10010
// (unknown log) at once, as docs/protocol.md says, not an empty batch.
// (Before, the wait's own cancel hid the close: it answered success with
// no records.)
func TestReadWaitingOnDeletedLog(t *testing.T) {
	s := startNode(t, testConfig(t))
	nc := connectTo(t, s)
	wantOK(t, request(t, nc, "natlog.append.d", []byte("x"), nil))
	type reply struct {
		e   *protocol.Error
		err error
	}
	done := make(chan reply, 1)
	go func() {
		m, err := nc.Request("natlog.read.d", []byte(`{"offset":1,"wait_ms":20000}`), 30*time.Second)
		if err != nil {
			done <- reply{err: err}
			return
		}
		done <- reply{e: protocol.ReplyError(m.Header, m.Data)}
	}()
	eventually(t, 10*time.Second, "a read waiting", func() bool { return len(s.waiters) > 0 })
	wantOK(t, request(t, nc, "natlog.delete.d", nil, nil))
	select {
	case r := <-done:
		if r.err != nil || r.e == nil || r.e.ErrCode != protocol.CodeUnknownLog {
			t.Fatalf("waiting read after the delete: %v, %v; want 404 / 10010", r.e, r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the waiting read was not answered when its log was deleted")
	}
}
