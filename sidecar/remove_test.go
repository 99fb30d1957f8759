package sidecar

import (
	"testing"
	"time"

	"github.com/natlog/natlog/sidecar/protocol"
)

// `natlog cluster remove` of a node that is not a member is refused (a
// typo must not look like a removal), as a step-down to one is.
func TestClusterRemoveNonMember(t *testing.T) {
	tc := newThreeNodes(t)
	tc.leader()
	nc := tc.client()
	m, err := nc.Request("natlog.cluster.remove", []byte("nosuch"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if e := protocol.ReplyError(m.Header, m.Data); e == nil || e.ErrCode != protocol.CodeBadRequest {
		t.Fatalf("remove of a non-member answered %s (%v), want 400 bad request", m.Data, e)
	}
}

// A create of an existing log with other settings is refused (409 /
// 10022), as on a single node; with the same settings it succeeds.
func TestClusterCreateExistingWithOtherSettings(t *testing.T) {
	tc := newThreeNodes(t)
	tc.leader()
	nc := tc.client()
	create := func(body string) *protocol.Error {
		t.Helper()
		for deadline := time.Now().Add(20 * time.Second); ; {
			m, err := nc.Request("natlog.create.c", []byte(body), 10*time.Second)
			if err == nil {
				e := protocol.ReplyError(m.Header, m.Data)
				if e == nil || e.ErrCode != protocol.CodeNotLeader || time.Now().After(deadline) {
					return e
				}
			} else if time.Now().After(deadline) {
				t.Fatal(err)
			}
		}
	}
	if e := create(`{"max_segment_bytes":8192}`); e != nil {
		t.Fatalf("create: %v", e)
	}
	if e := create(`{"max_segment_bytes":8192}`); e != nil {
		t.Fatalf("create again with the same settings: %v", e)
	}
	if e := create(`{"max_segment_bytes":16384}`); e == nil || e.ErrCode != protocol.CodeLogExists {
		t.Fatalf("create with other settings: %v, want 409 / 10022", e)
	}
}
