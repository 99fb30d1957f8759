package raftfsm

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
)

// TestFSMReplayAfterRetentionAndCrash: retention removed every sealed
// segment of a log, then a crash lost the records of its active segment
// (the FSM's logs do not fsync: Raft's log holds them). Raft's replay of
// the entries since the last snapshot must not append again what the
// removed segments held. (Before, the log came back empty, which says
// nothing of which ops it holds, and the replay appended the log's whole
// history after its end: a replica that diverged from the others; seen
// with `natlog serve` and kill -9.)
func TestFSMReplayAfterRetentionAndCrash(t *testing.T) {
	mem := logcore.NewMemFS()
	cfg := fsmConfig("/fsm", mem) // 8 KiB segments
	f := openFSM(t, cfg)
	big := strings.Repeat("x", 3000)
	// Ten minutes apart: the dedup window keeps no segment back.
	at := func(i int) int64 { return int64(1_700_000_000)*1e9 + int64(i)*int64(10*time.Minute) }
	var entries []*raft.Log
	for i := 1; i <= 9; i++ {
		op := appendOp("a", fmt.Sprintf("%d-%s", i, big))
		if i == 1 {
			op.Settings = &LogSettings{RetentionSegments: 1}
		}
		entries = append(entries, entry(t, uint64(i), at(i), op))
	}
	entries = append(entries, entry(t, 10, at(10), appendOp("a", "later")))
	for _, e := range entries {
		f.Apply(e)
	}
	l := f.Log("a")
	must(t, l.ApplyRetention())
	want := values(t, f, "a")
	wantNext := l.NextOffset()
	if l.LowestOffset() == 0 {
		t.Fatal("retention kept the first segment; the test needs it removed")
	}
	mem.Crash(logcore.CrashOptions{})
	for round := range 2 {
		f = openFSM(t, cfg)
		for _, e := range entries { // no snapshot: Raft replays them all
			f.Apply(e)
		}
		if err := f.FailedErr("a"); err != nil {
			t.Fatalf("round %d: log failed: %v", round, err)
		}
		if got, next := values(t, f, "a"), f.Log("a").NextOffset(); next != wantNext || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("round %d after crash and replay: next offset %d, want %d; %d records, want %d", round, next, wantNext, len(got), len(want))
		}
		must(t, f.Close())
	}
}
