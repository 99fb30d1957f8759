package raftfsm

import (
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
)

// TestDedupSurvivesRetentionAndRestart: retention runs on a log whose
// segments it would remove down to two, while a Natlog-Msg-Id in them is
// still inside the dedup window. A replica that restarts then must answer
// the retry as one that kept running: a duplicate, with the first append's
// offset. (Before, retention removed the id's record and the restarted
// replica wrote the retry again.)
func TestDedupSurvivesRetentionAndRestart(t *testing.T) {
	run := func(restart bool) (Result, uint64) {
		mem := logcore.NewMemFS()
		cfg := fsmConfig("/fsm", mem) // 8 KiB segments
		f := openFSM(t, cfg)
		big := strings.Repeat("x", 3000)
		const sec = int64(1e9)
		now := int64(1_700_000_000) * sec
		op := appendOp("a", "first")
		op.Settings = &LogSettings{RetentionSegments: 2}
		op.MsgID = "id-1"
		f.Apply(entry(t, 1, now, op))
		for i := 2; i < 12; i++ {
			f.Apply(entry(t, uint64(i), now+int64(i)*sec, appendOp("a", big)))
		}
		must(t, f.Log("a").ApplyRetention())
		if restart {
			must(t, f.Close())
			f = openFSM(t, cfg)
		}
		retry := appendOp("a", "first")
		retry.MsgID = "id-1"
		r := results(t, f.Apply(entry(t, 20, now+20*sec, retry)))[0] // 20 s later, window 2 min
		next := f.Log("a").NextOffset()
		f.Close()
		return r, next
	}
	kept, keptNext := run(false)
	restarted, restartedNext := run(true)
	if !kept.Duplicate || kept.First != 0 {
		t.Fatalf("the replica that kept running answered %+v, want a duplicate of offset 0", kept)
	}
	if restarted != kept || restartedNext != keptNext {
		t.Fatalf("replicas diverge: kept running %+v (next %d), restarted %+v (next %d)", kept, keptNext, restarted, restartedNext)
	}
}

// TestDedupOff: a negative window (--dedup-window 0) turns deduplication
// off, configured on the node or carried by the leader's commands: a
// retry with the same id is a new append.
func TestDedupOff(t *testing.T) {
	cases := []struct {
		name       string
		node, lead time.Duration
	}{
		{"node", -1, 0},
		{"leader", 2 * time.Minute, -1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := fsmConfig("/fsm", logcore.NewMemFS())
			cfg.DedupWindow = tc.node
			f := openFSM(t, cfg)
			defer f.Close()
			for i := range 2 {
				op := appendOp("a", "v")
				op.MsgID = "same"
				b, err := EncodeCommand(&Command{Time: int64(i + 1), Ops: []Op{op}, DedupWindow: int64(tc.lead), DedupMax: 10})
				must(t, err)
				r := results(t, f.Apply(&raft.Log{Index: uint64(i + 1), Term: 1, Type: raft.LogCommand, Data: b}))[0]
				if r.Err != nil || r.Duplicate || r.First != uint64(i) {
					t.Fatalf("append %d with the id again: %+v, want a new record at %d", i, r, i)
				}
			}
		})
	}
}
