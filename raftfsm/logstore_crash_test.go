package raftfsm

import (
	"errors"
	"fmt"
	"math/rand"
	"syscall"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
)

// logModel is what Raft believes a log store holds: entries first..last,
// exactly. hist keeps the latest entry ever stored at each index, which is
// what a prefix compaction may legitimately leave below first.
type logModel struct {
	entries     map[uint64]*raft.Log
	hist        map[uint64]*raft.Log
	first, last uint64 // 0, 0 when empty
}

func newLogModel() *logModel {
	return &logModel{entries: map[uint64]*raft.Log{}, hist: map[uint64]*raft.Log{}}
}

func (m *logModel) store(logs []*raft.Log) {
	from := logs[0].Index
	if m.last == 0 || from > m.last+1 || from <= m.first {
		m.deleteFrom(m.first)
		m.first = from
	} else {
		m.deleteFrom(from)
	}
	for _, l := range logs {
		m.entries[l.Index] = l
		m.hist[l.Index] = l
	}
	m.last = logs[len(logs)-1].Index
}

// deleteFrom drops from..last.
func (m *logModel) deleteFrom(from uint64) {
	for i := from; i <= m.last && m.last != 0; i++ {
		delete(m.entries, i)
	}
	if from <= m.first {
		m.first, m.last = 0, 0
	} else if m.last != 0 {
		m.last = from - 1
	}
}

// compact drops first..upTo (upTo < last).
func (m *logModel) compact(upTo uint64) {
	for i := m.first; i <= upTo; i++ {
		delete(m.entries, i)
	}
	m.first = upTo + 1
}

// check compares s with the model: the same last index, every entry of the
// model, and below its first index only entries that were once stored there.
func (m *logModel) check(t *testing.T, s raft.LogStore, when string) {
	t.Helper()
	first, last := indexes(t, s)
	if m.last == 0 {
		if first != 0 || last != 0 {
			t.Fatalf("%s: FirstIndex, LastIndex = %d, %d; want an empty log", when, first, last)
		}
		return
	}
	if last != m.last || first == 0 || first > m.first {
		t.Fatalf("%s: FirstIndex, LastIndex = %d, %d; want <= %d, %d", when, first, last, m.first, m.last)
	}
	for i := first; i <= last; i++ {
		want := m.entries[i]
		if i < m.first {
			want = m.hist[i]
		}
		if want == nil {
			t.Fatalf("%s: the store holds %d, which was never stored", when, i)
		}
		var got raft.Log
		if err := s.GetLog(i, &got); err != nil {
			t.Fatalf("%s: GetLog(%d): %v", when, i, err)
		}
		if d := entryDiff(&got, want); d != "" {
			t.Fatalf("%s: GetLog(%d): %s", when, i, d)
		}
	}
	if first > 1 {
		expectMissing(t, s, first-1)
	}
	expectMissing(t, s, last+1)
}

// TestLogStoreCrash drives a LogStore with what Raft does (appends,
// conflicts, compactions, snapshot installs) on MemFS, simulates a power loss
// at random points between calls, reopens, and checks that everything
// acknowledged is there exactly as the model says, for every way MemFS can
// treat unsynced bytes.
func TestLogStoreCrash(t *testing.T) {
	needTruncateInsideBatch(t)
	opts := []struct {
		name string
		opt  logcore.CrashOptions
	}{
		{"drop unsynced", logcore.CrashOptions{}},
		{"keep a prefix", logcore.CrashOptions{KeepUnsyncedPrefix: true}},
		{"zeroed tail", logcore.CrashOptions{ZeroUnsyncedTail: true}},
		{"prefix then zeroes", logcore.CrashOptions{KeepUnsyncedPrefix: true, ZeroUnsyncedTail: true}},
	}
	seeds := int64(4)
	if testing.Short() {
		seeds = 1
	}
	for _, o := range opts {
		for seed := int64(1); seed <= seeds; seed++ {
			t.Run(fmt.Sprintf("%s/seed%d", o.name, seed), func(t *testing.T) {
				opt := o.opt
				opt.Seed = seed
				crashRun(t, opt, rand.New(rand.NewSource(seed)))
			})
		}
	}
}

func crashRun(t *testing.T, opt logcore.CrashOptions, rng *rand.Rand) {
	fsys := logcore.NewMemFS()
	cfg := testLogConfig(fsys)
	const dir = "/node/raft/log"
	s := openTestLogStore(t, dir, cfg)
	m := newLogModel()
	term := uint64(1)
	batch := func(from uint64) []*raft.Log {
		return testEntries(from, from+uint64(rng.Intn(20)), term)
	}
	crashes := 0
	for step := 0; step < 400; step++ {
		what := ""
		switch p := rng.Intn(100); {
		case p < 55 || m.last == 0:
			what = "append"
			logs := batch(m.last + 1)
			if m.last == 0 {
				logs = batch(1 + uint64(rng.Intn(3)))
			}
			mustStore(t, s, logs)
			m.store(logs)
		case p < 65 && m.last > m.first:
			what = "conflict"
			from := m.first + 1 + uint64(rng.Int63n(int64(m.last-m.first)))
			mustDelete(t, s, from, m.last)
			m.deleteFrom(from)
			term++
			logs := batch(from)
			mustStore(t, s, logs)
			m.store(logs)
		case p < 70 && m.last > m.first:
			what = "overwrite without DeleteRange"
			from := m.first + 1 + uint64(rng.Int63n(int64(m.last-m.first)))
			term++
			logs := batch(from)
			mustStore(t, s, logs)
			m.store(logs)
		case p < 80 && m.last > m.first:
			what = "compaction"
			first, _ := indexes(t, s)
			upTo := m.first + uint64(rng.Int63n(int64(m.last-m.first)))
			mustDelete(t, s, first, upTo)
			m.compact(upTo)
		case p < 83:
			what = "snapshot install (gap)"
			term++
			logs := batch(m.last + 2 + uint64(rng.Intn(100)))
			mustStore(t, s, logs)
			m.store(logs)
		case p < 85:
			what = "delete all"
			first, _ := indexes(t, s)
			mustDelete(t, s, first, m.last)
			m.deleteFrom(m.first)
		default:
			what = "crash"
			crashes++
			fsys.Crash(opt)
			s.Close() // fails: its files are gone; it must not hang
			s = openTestLogStore(t, dir, cfg)
		}
		m.check(t, s, fmt.Sprintf("step %d (%s)", step, what))
	}
	if crashes == 0 {
		t.Fatal("no crash was simulated")
	}
	fsys.Crash(opt)
	s.Close()
	m.check(t, openTestLogStore(t, dir, cfg), "final crash")
}

// TestLogStoreFailedWriteThenCrash: when a write or fsync fails under
// StoreLogs or a conflict truncation, the call fails, the store refuses
// writes until reopened, and after a power loss and reopen every entry that
// was acknowledged before is still there; of the failed batch at most a
// prefix survives (logcore keeps a batch that fits in one segment whole or
// not at all).
func TestLogStoreFailedWriteThenCrash(t *testing.T) {
	cases := []struct {
		name     string
		rule     logcore.Rule
		conflict bool // the failing call replaces a suffix
	}{
		{"fsync of the batch fails", logcore.Rule{Ops: []logcore.Op{logcore.OpSync}, Suffix: ".store",
			Fault: logcore.Fault{Err: syscall.EIO}}, false},
		{"write of the batch fails part way", logcore.Rule{Ops: []logcore.Op{logcore.OpWrite}, Suffix: ".store",
			Fault: logcore.Fault{Err: syscall.ENOSPC, Written: 100}}, false},
		{"fsync after the conflict truncation fails", logcore.Rule{Ops: []logcore.Op{logcore.OpSync}, Suffix: ".store",
			Fault: logcore.Fault{Err: syscall.EIO}}, true},
		{"fsync of the batch after the truncation fails", logcore.Rule{Ops: []logcore.Op{logcore.OpSync}, Suffix: ".store",
			Nth: 2, Fault: logcore.Fault{Err: syscall.EIO}}, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.conflict {
				needTruncateInsideBatch(t)
			}
			mem := logcore.NewMemFS()
			fsys := logcore.NewFaultFS(mem)
			cfg := testLogConfig(fsys)
			const dir = "/raft/log"
			s := openTestLogStore(t, dir, cfg)
			mustStore(t, s, testEntries(1, 30, 1))
			acked, from := uint64(30), uint64(31)
			if c.conflict {
				acked, from = 20, 21
			}
			failing := testEntries(from, 40, 2)
			fsys.SetHook(c.rule.Hook())
			if err := s.StoreLogs(failing); err == nil {
				t.Fatal("StoreLogs succeeded despite the fault")
			}
			fsys.SetHook(nil)
			if err := s.StoreLogs(testEntries(41, 41, 2)); !errors.Is(err, logcore.ErrFailed) {
				t.Fatalf("StoreLogs after a failure = %v, want logcore.ErrFailed", err)
			}
			mem.Crash(logcore.CrashOptions{KeepUnsyncedPrefix: true, Seed: 1})
			s.Close()

			s = openTestLogStore(t, dir, testLogConfig(mem))
			first, last := indexes(t, s)
			if first != 1 || last < acked || last > 40 {
				t.Fatalf("after the crash FirstIndex, LastIndex = %d, %d; want 1, %d..40", first, last, acked)
			}
			expectEntries(t, s, testEntries(1, acked, 1))
			if last > acked {
				// What survives past the acknowledged entries is a
				// prefix of the failed batch, or (when the truncation
				// did not land) of the old term-1 suffix.
				var l raft.Log
				if err := s.GetLog(acked+1, &l); err != nil {
					t.Fatal(err)
				}
				expectEntries(t, s, testEntries(acked+1, last, l.Term))
			}
			// And the store takes appends again.
			mustStore(t, s, testEntries(last+1, last+5, 3))
			expectIndexes(t, s, 1, last+5)
		})
	}
}
