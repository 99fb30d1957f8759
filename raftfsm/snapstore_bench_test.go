package raftfsm

import (
	"os"
	"path/filepath"
	"testing"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
)

// BenchmarkSnapshot takes a snapshot of an FSM holding 128 MiB of 1 KiB
// records (in 8 MiB segments), as Raft does: Snapshot, Create, Persist,
// Close. "linked" keeps it in a SnapshotStore (hard links and a manifest),
// "copied" in raft's FileSnapshotStore (the stream of every record).
func BenchmarkSnapshot(b *testing.B) {
	root := b.TempDir()
	cfg := fsmConfig(filepath.Join(root, "fsm"), logcore.OSFS{})
	cfg.Log.MaxSegmentBytes = 8 << 20
	cfg.Log.MaxIndexBytes = 12 << 16
	f := openFSM(b, cfg)
	defer f.Close()
	value := make([]byte, 1024)
	const perEntry, entries = 1024, 128
	for i := range entries {
		op := Op{Kind: OpAppend, Log: "a", Settings: &LogSettings{MaxSegmentBytes: 8 << 20}}
		for range perEntry {
			op.Records = append(op.Records, Record{Value: value})
		}
		if r := results(b, f.Apply(entry(b, uint64(i+1), int64(i+1), op))); r[0].Err != nil {
			b.Fatal(r[0].Err)
		}
	}
	info, err := f.Log("a").Info()
	must(b, err)
	for _, kind := range []string{"linked", "copied"} {
		b.Run(kind, func(b *testing.B) {
			var store raft.SnapshotStore
			// Beside the FSM: one file system, as in a node's data dir.
			dir, err := os.MkdirTemp(root, kind)
			must(b, err)
			if kind == "linked" {
				store, err = NewSnapshotStore(dir, 2, nil)
			} else {
				store, err = raft.NewFileSnapshotStoreWithLogger(dir, 2, hclog.NewNullLogger())
			}
			must(b, err)
			b.ResetTimer()
			for i := range b.N {
				snap, err := f.Snapshot()
				must(b, err)
				sink, err := store.Create(raft.SnapshotVersionMax, uint64(entries+i), 1, raft.Configuration{}, 1, nil)
				must(b, err)
				must(b, snap.Persist(sink))
				snap.Release()
			}
			b.ReportMetric(float64(info.Bytes)/(1<<20), "MiB-of-logs")
			b.ReportMetric(float64(info.Segments), "segments")
		})
	}
}
