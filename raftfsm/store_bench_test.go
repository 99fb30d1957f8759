package raftfsm

import (
	"bytes"
	"runtime"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
)

// benchStores are the log stores the benchmarks compare in one run: ours on
// the real file system with the default, durable policy; ours without
// fsyncs (what the encoding and logcore cost on their own); and raft's
// InmemStore.
func benchStores() []struct {
	name string
	open func(b *testing.B) raft.LogStore
} {
	ours := func(sync logcore.SyncPolicy) func(b *testing.B) raft.LogStore {
		return func(b *testing.B) raft.LogStore {
			cfg := logcore.DefaultConfig()
			cfg.Sync = sync
			return openTestLogStore(b, b.TempDir(), cfg)
		}
	}
	return []struct {
		name string
		open func(b *testing.B) raft.LogStore
	}{
		{"natlog", ours(logcore.SyncAlways)},
		{"natlog-nosync-unsafe", ours(logcore.SyncNeverUnsafe)},
		{"inmem", func(*testing.B) raft.LogStore { return raft.NewInmemStore() }},
	}
}

// benchData is the payload of every benchmark entry: 100 bytes, the record
// size natlog's other benchmarks use.
var benchData = bytes.Repeat([]byte{'d'}, 100)

// BenchmarkLogStore drives each store the way Raft does: StoreLogs of one
// entry (one Apply at a time) and of 100 (a busy leader's batch, or a
// follower's AppendEntries), and GetLog (replication reads). It reports
// entries/s.
func BenchmarkLogStore(b *testing.B) {
	for _, st := range benchStores() {
		b.Run(st.name, func(b *testing.B) {
			for _, n := range []int{1, 100} {
				b.Run("StoreLogs-"+strconv.Itoa(n), func(b *testing.B) { benchStoreLogs(b, st.open(b), n) })
			}
			b.Run("GetLog", func(b *testing.B) { benchGetLog(b, st.open(b)) })
		})
	}
}

func benchStoreLogs(b *testing.B, s raft.LogStore, n int) {
	next := uint64(1)
	now := time.Now()
	b.SetBytes(int64(n * len(benchData)))
	for b.Loop() {
		// New entries each time: InmemStore keeps the pointers.
		logs := make([]*raft.Log, n)
		for i := range logs {
			logs[i] = &raft.Log{Index: next, Term: 1, Type: raft.LogCommand, Data: benchData, AppendedAt: now}
			next++
		}
		if err := s.StoreLogs(logs); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(next-1)/b.Elapsed().Seconds(), "entries/s")
}

func benchGetLog(b *testing.B, s raft.LogStore) {
	const stored = 10000
	now := time.Now()
	for from := uint64(1); from <= stored; from += 100 {
		logs := make([]*raft.Log, 100)
		for i := range logs {
			logs[i] = &raft.Log{Index: from + uint64(i), Term: 1, Type: raft.LogCommand, Data: benchData, AppendedAt: now}
		}
		if err := s.StoreLogs(logs); err != nil {
			b.Fatal(err)
		}
	}
	var l raft.Log
	i := uint64(0)
	for b.Loop() {
		if err := s.GetLog(i%stored+1, &l); err != nil {
			b.Fatal(err)
		}
		i++
	}
	b.ReportMetric(float64(i)/b.Elapsed().Seconds(), "entries/s")
}

// BenchmarkStableStore measures what an election costs: SetUint64 (term)
// and Get (vote), ours against raft's InmemStore.
func BenchmarkStableStore(b *testing.B) {
	for _, st := range []struct {
		name string
		open func(b *testing.B) raft.StableStore
	}{
		{"natlog", func(b *testing.B) raft.StableStore { return openTestStable(b, b.TempDir()+"/stable", nil) }},
		{"inmem", func(*testing.B) raft.StableStore { return raft.NewInmemStore() }},
	} {
		b.Run(st.name+"/SetUint64", func(b *testing.B) {
			s := st.open(b)
			v := uint64(0)
			for b.Loop() {
				v++
				if err := s.SetUint64(keyCurrentTerm, v); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(st.name+"/Get", func(b *testing.B) {
			s := st.open(b)
			if err := s.Set(keyLastVoteCand, []byte("node-1")); err != nil {
				b.Fatal(err)
			}
			for b.Loop() {
				if _, err := s.Get(keyLastVoteCand); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkRaftSingleNode applies commands of 100 bytes to a real
// single-node Raft on our LogStore (durable, default logcore config) and
// StableStore, one at a time and from 256 goroutines (Raft batches what
// arrives while it stores, so this is what group commit gives), and reports
// entries/s: the figure to hold against raft-wal's in DESIGN.md.
func BenchmarkRaftSingleNode(b *testing.B) {
	for _, appliers := range []int{1, 256} {
		b.Run("appliers-"+strconv.Itoa(appliers), func(b *testing.B) {
			n := startRaftNodeWith(b, b.TempDir(), "n1", []raft.Server{{ID: "n1", Address: "n1"}}, true, logcore.DefaultConfig())
			waitLeader(b, n)
			var applied atomic.Int64
			b.SetParallelism(max(1, appliers/runtime.GOMAXPROCS(0)))
			b.ResetTimer()
			start := time.Now()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if err := n.raft.Apply(benchData, 10*time.Second).Error(); err != nil {
						b.Error(err)
						return
					}
					applied.Add(1)
				}
			})
			b.ReportMetric(float64(applied.Load())/time.Since(start).Seconds(), "entries/s")
		})
	}
}
