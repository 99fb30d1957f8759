package client

import (
	"context"
	"fmt"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/sidecar/protocol"
)

// TestOutcome: which failed attempts are retried, and which leave the
// outcome open.
func TestOutcome(t *testing.T) {
	for _, tc := range []struct {
		err               error
		retry, indefinite bool
	}{
		{protocol.Errorf(protocol.ErrNotLeader, "this node is not the leader; nothing was written; retry"), true, false},
		{protocol.Errorf(protocol.ErrNotLeader, "leadership lost while committing: the outcome is indefinite"), true, true},
		{protocol.Errorf(protocol.ErrUnavailable, "the node is shutting down; retry"), true, false},
		{protocol.Errorf(protocol.ErrStorage, `log "f": reserve space: no space left on device: nothing was written`), false, false},
		{protocol.Errorf(protocol.ErrStorage, `log "f": fsync: input/output error (this append may have been written)`), false, true},
		{protocol.Errorf(protocol.ErrInternal, "raft: boom"), false, true},
		{protocol.Errorf(protocol.ErrBadRequest, "bad"), false, false},
		{nats.ErrNoResponders, true, false},
		{nats.ErrTimeout, true, true},
		{context.DeadlineExceeded, true, true},
		{fmt.Errorf("wrapped: %w", nats.ErrConnectionReconnecting), true, false},
		// Context and connection errors once the request was sent (do
		// handles the ones before sending).
		{context.Canceled, false, true},
		{nats.ErrDisconnected, true, true},
		{nats.ErrConnectionClosed, false, true},
	} {
		retry, indefinite := outcome(tc.err)
		if retry != tc.retry || indefinite != tc.indefinite {
			t.Errorf("outcome(%v) = retry %v, indefinite %v; want %v, %v", tc.err, retry, indefinite, tc.retry, tc.indefinite)
		}
	}
}
