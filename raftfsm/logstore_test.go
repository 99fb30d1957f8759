package raftfsm

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
)

// logStoreImpl is one implementation the LogStore contract suite runs on.
type logStoreImpl struct {
	name string
	open func(t *testing.T) raft.LogStore
}

// logStoreImpls are our LogStore on the real file system and on MemFS, and
// raft's own InmemStore, which defines the behaviour Raft is tested with.
func logStoreImpls() []logStoreImpl {
	return []logStoreImpl{
		{"inmem", func(t *testing.T) raft.LogStore { return raft.NewInmemStore() }},
		{"logcore-osfs", func(t *testing.T) raft.LogStore {
			return openTestLogStore(t, t.TempDir(), testLogConfig(logcore.OSFS{}))
		}},
		{"logcore-memfs", func(t *testing.T) raft.LogStore {
			return openTestLogStore(t, "/raft/log", testLogConfig(logcore.NewMemFS()))
		}},
	}
}

// TestLogStoreContract runs the same specification against every
// implementation: what hashicorp/raft relies on, in the order Raft uses it.
func TestLogStoreContract(t *testing.T) {
	cases := []struct {
		name string
		run  func(t *testing.T, s raft.LogStore)
	}{
		// Cases that delete a suffix start with needTruncateInsideBatch,
		// which skips them on our store while logcore cannot do it.
		{"empty store has indexes 0 and no entries", func(t *testing.T, s raft.LogStore) {
			expectIndexes(t, s, 0, 0)
			expectMissing(t, s, 0, 1, 2, 1000)
		}},
		{"store one entry and get it back", func(t *testing.T, s raft.LogStore) {
			want := testEntry(1, 1)
			if err := s.StoreLog(want); err != nil {
				t.Fatal(err)
			}
			expectIndexes(t, s, 1, 1)
			expectEntries(t, s, []*raft.Log{want})
			expectMissing(t, s, 0, 2)
		}},
		{"every field round-trips", func(t *testing.T, s raft.LogStore) {
			logs := []*raft.Log{
				{Index: 1, Term: 1, Type: raft.LogConfiguration, Data: []byte{0, 1, 2}},
				{Index: 2, Term: 1, Type: raft.LogNoop},
				{Index: 3, Term: 2, Type: raft.LogBarrier, AppendedAt: time.Unix(0, 1)},
				{Index: 4, Term: 1<<64 - 1, Type: raft.LogCommand, Data: make([]byte, 5000),
					Extensions: []byte("chunking"), AppendedAt: time.Date(2262, 4, 11, 23, 47, 16, 854775807, time.UTC)},
				{Index: 5, Term: 3, Type: raft.LogType(200), Data: []byte("future type")},
				{Index: 6, Term: 3, Type: raft.LogCommand, Data: []byte("old time"),
					AppendedAt: time.Date(1, 1, 1, 0, 0, 0, 1, time.UTC)},
			}
			mustStore(t, s, logs)
			expectIndexes(t, s, 1, 6)
			expectEntries(t, s, logs)
		}},
		{"a batch and then single entries", func(t *testing.T, s raft.LogStore) {
			mustStore(t, s, testEntries(1, 100, 1))
			for i := uint64(101); i <= 110; i++ {
				if err := s.StoreLog(testEntry(i, 2)); err != nil {
					t.Fatal(err)
				}
			}
			expectIndexes(t, s, 1, 110)
			expectEntries(t, s, testEntries(1, 100, 1))
			expectEntries(t, s, testEntries(101, 110, 2))
			expectMissing(t, s, 0, 111, 1<<63)
		}},
		{"a log that starts after index 1", func(t *testing.T, s raft.LogStore) {
			// What a node holds after it installed a snapshot into an
			// empty log (raft.InmemStore: lowIndex is the first stored).
			mustStore(t, s, testEntries(1001, 1010, 4))
			expectIndexes(t, s, 1001, 1010)
			expectEntries(t, s, testEntries(1001, 1010, 4))
			expectMissing(t, s, 1, 1000, 1011)
		}},
		{"a gap after a snapshot: later entries are there, the gap is not", func(t *testing.T, s raft.LogStore) {
			mustStore(t, s, testEntries(1, 5, 1))
			mustStore(t, s, testEntries(10, 12, 2))
			first, last := indexes(t, s)
			if last != 12 {
				t.Fatalf("LastIndex = %d, want 12", last)
			}
			// InmemStore keeps 1..5 below the gap; ours cannot hold a gap
			// and drops them (a snapshot covers them): both are fine for
			// Raft, which never reads below its snapshot.
			if first != 1 && first != 10 {
				t.Fatalf("FirstIndex = %d, want 1 or 10", first)
			}
			expectEntries(t, s, testEntries(10, 12, 2))
			expectMissing(t, s, 6, 7, 8, 9, 13)
		}},
		{"DeleteRange of a suffix, as for a conflict, then the leader's entries", func(t *testing.T, s raft.LogStore) {
			skipOnOurs(t, s)
			mustStore(t, s, testEntries(1, 100, 1))
			mustDelete(t, s, 71, 100)
			expectIndexes(t, s, 1, 70)
			expectMissing(t, s, span(71, 101)...)
			mustStore(t, s, testEntries(71, 90, 2))
			expectIndexes(t, s, 1, 90)
			expectEntries(t, s, testEntries(1, 70, 1))
			expectEntries(t, s, testEntries(71, 90, 2))
		}},
		{"DeleteRange of a suffix that reaches past the end", func(t *testing.T, s raft.LogStore) {
			skipOnOurs(t, s)
			mustStore(t, s, testEntries(1, 20, 1))
			mustDelete(t, s, 15, 1000)
			expectIndexes(t, s, 1, 14)
			expectMissing(t, s, 15, 20)
		}},
		{"DeleteRange of a prefix, as for compaction", func(t *testing.T, s raft.LogStore) {
			mustStore(t, s, testEntries(1, 300, 1))
			mustDelete(t, s, 1, 200)
			first, last := indexes(t, s)
			// Exactly 201 for InmemStore; ours keeps the segment that
			// holds 201, so FirstIndex may be lower, never higher.
			if first < 1 || first > 201 || last != 300 {
				t.Fatalf("FirstIndex, LastIndex = %d, %d; want [1, 201], 300", first, last)
			}
			expectEntries(t, s, testEntries(first, 300, 1))
			if first > 1 {
				expectMissing(t, s, span(1, first-1)...)
			}
			// Raft compacts again from the FirstIndex it reads.
			mustDelete(t, s, first, 290)
			first2, last2 := indexes(t, s)
			if first2 < first || first2 > 291 || last2 != 300 {
				t.Fatalf("after second compaction FirstIndex, LastIndex = %d, %d; want [%d, 291], 300", first2, last2, first)
			}
			expectEntries(t, s, testEntries(first2, 300, 1))
			// And appends go on.
			mustStore(t, s, testEntries(301, 310, 2))
			expectEntries(t, s, testEntries(301, 310, 2))
		}},
		{"DeleteRange of everything, then entries after a snapshot", func(t *testing.T, s raft.LogStore) {
			// removeOldLogs after a snapshot install on a monotonic store.
			mustStore(t, s, testEntries(1, 50, 1))
			mustDelete(t, s, 1, 50)
			expectIndexes(t, s, 0, 0)
			expectMissing(t, s, 1, 25, 50, 51)
			mustStore(t, s, testEntries(81, 90, 3))
			expectIndexes(t, s, 81, 90)
			expectEntries(t, s, testEntries(81, 90, 3))
			expectMissing(t, s, 50, 80, 91)
		}},
		{"DeleteRange of everything, then the next entry", func(t *testing.T, s raft.LogStore) {
			mustStore(t, s, testEntries(1, 50, 1))
			mustDelete(t, s, 1, 50)
			mustStore(t, s, testEntries(51, 60, 2))
			expectIndexes(t, s, 51, 60)
			expectEntries(t, s, testEntries(51, 60, 2))
		}},
		{"DeleteRange after the end changes nothing", func(t *testing.T, s raft.LogStore) {
			// (Below the start InmemStore moves its FirstIndex into the
			// void: DeleteRange(1, 5) of 10..20 makes it 6. Raft never
			// asks for that; TestLogStoreOwnContract checks ours.)
			mustStore(t, s, testEntries(10, 20, 1))
			mustDelete(t, s, 21, 30)
			expectIndexes(t, s, 10, 20)
			expectEntries(t, s, testEntries(10, 20, 1))
		}},
		{"DeleteRange on an empty log", func(t *testing.T, s raft.LogStore) {
			mustDelete(t, s, 1, 10)
			expectIndexes(t, s, 0, 0)
		}},
		{"conflicting entries are replaced the way raft does it", func(t *testing.T, s raft.LogStore) {
			skipOnOurs(t, s)
			// A follower with entries of term 1 learns from a leader of
			// term 2 that 6..10 conflict (raft.go appendEntries: GetLog,
			// compare terms, DeleteRange(entry.Index, lastLogIdx),
			// StoreLogs(newEntries)).
			mustStore(t, s, testEntries(1, 10, 1))
			for _, e := range testEntries(6, 8, 2) {
				var stored raft.Log
				if err := s.GetLog(e.Index, &stored); err != nil {
					t.Fatal(err)
				}
				if stored.Term != e.Term {
					_, last := indexes(t, s)
					mustDelete(t, s, e.Index, last)
					break
				}
			}
			mustStore(t, s, testEntries(6, 8, 2))
			expectIndexes(t, s, 1, 8)
			expectEntries(t, s, testEntries(1, 5, 1))
			expectEntries(t, s, testEntries(6, 8, 2))
			expectMissing(t, s, 9, 10)
		}},
		{"GetLog returns raft.ErrLogNotFound itself, not a wrapped error", func(t *testing.T, s raft.LogStore) {
			mustStore(t, s, testEntries(1, 3, 1))
			var l raft.Log
			err := s.GetLog(4, &l)
			if err != raft.ErrLogNotFound { //nolint:errorlint // replication.go compares with ==
				t.Fatalf("GetLog(4) = %#v", err)
			}
		}},
		{"oldest log as raft's metrics read it", func(t *testing.T, s raft.LogStore) {
			mustStore(t, s, testEntries(1, 10, 1))
			first, _ := indexes(t, s)
			var l raft.Log
			if err := s.GetLog(first, &l); err != nil {
				t.Fatal(err)
			}
			if l.AppendedAt.IsZero() {
				t.Fatal("AppendedAt of the oldest entry is zero")
			}
		}},
	}
	for _, impl := range logStoreImpls() {
		t.Run(impl.name, func(t *testing.T) {
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) {
					c.run(t, impl.open(t))
				})
			}
		})
	}
}

// skipOnOurs skips a suffix-deletion case on our store while logcore cannot
// truncate inside a batch (see needTruncateInsideBatch).
func skipOnOurs(t *testing.T, s raft.LogStore) {
	t.Helper()
	if _, ok := s.(*LogStore); ok {
		needTruncateInsideBatch(t)
	}
}

// TestLogStoreOwnContract covers what only our LogStore promises, or where it
// is stricter than raft.InmemStore.
func TestLogStoreOwnContract(t *testing.T) {
	open := func(t *testing.T) *LogStore {
		return openTestLogStore(t, "/raft/log", testLogConfig(logcore.NewMemFS()))
	}
	t.Run("storing below the end replaces the suffix", func(t *testing.T) {
		needTruncateInsideBatch(t)
		// InmemStore would keep 9..10 and LastIndex 10; a dense log
		// cannot hold a stale tail after a rewritten entry.
		s := open(t)
		mustStore(t, s, testEntries(1, 10, 1))
		mustStore(t, s, testEntries(6, 8, 2))
		expectIndexes(t, s, 1, 8)
		expectEntries(t, s, testEntries(1, 5, 1))
		expectEntries(t, s, testEntries(6, 8, 2))
		expectMissing(t, s, 9, 10)
	})
	t.Run("storing at or below FirstIndex replaces the whole log", func(t *testing.T) {
		s := open(t)
		mustStore(t, s, testEntries(100, 110, 1))
		mustStore(t, s, testEntries(50, 52, 2))
		expectIndexes(t, s, 50, 52)
		expectEntries(t, s, testEntries(50, 52, 2))
		mustStore(t, s, testEntries(50, 51, 3))
		expectIndexes(t, s, 50, 51)
		expectEntries(t, s, testEntries(50, 51, 3))
	})
	t.Run("a batch that is not contiguous is refused whole", func(t *testing.T) {
		for _, bad := range []struct {
			name string
			logs []*raft.Log
		}{
			{"hole", []*raft.Log{testEntry(11, 1), testEntry(13, 1)}},
			{"backwards", []*raft.Log{testEntry(12, 1), testEntry(11, 1)}},
			{"repeat", []*raft.Log{testEntry(11, 1), testEntry(11, 1)}},
			{"index 0", []*raft.Log{testEntry(0, 1)}},
			{"nil entry", []*raft.Log{testEntry(11, 1), nil}},
		} {
			t.Run(bad.name, func(t *testing.T) {
				s := open(t)
				mustStore(t, s, testEntries(1, 10, 1))
				if err := s.StoreLogs(bad.logs); !errors.Is(err, ErrNotContiguous) {
					t.Fatalf("StoreLogs = %v, want ErrNotContiguous", err)
				}
				expectIndexes(t, s, 1, 10)
				expectEntries(t, s, testEntries(1, 10, 1))
			})
		}
	})
	t.Run("an empty batch is a no-op", func(t *testing.T) {
		s := open(t)
		if err := s.StoreLogs(nil); err != nil {
			t.Fatal(err)
		}
		expectIndexes(t, s, 0, 0)
	})
	t.Run("DeleteRange inside the log is refused and deletes nothing", func(t *testing.T) {
		s := open(t)
		mustStore(t, s, testEntries(1, 10, 1))
		if err := s.DeleteRange(3, 7); !errors.Is(err, ErrRangeNotSupported) {
			t.Fatalf("DeleteRange(3, 7) = %v, want ErrRangeNotSupported", err)
		}
		expectIndexes(t, s, 1, 10)
		expectEntries(t, s, testEntries(1, 10, 1))
	})
	t.Run("DeleteRange below the start changes nothing", func(t *testing.T) {
		s := open(t)
		mustStore(t, s, testEntries(10, 20, 1))
		mustDelete(t, s, 1, 5)
		expectIndexes(t, s, 10, 20)
		expectEntries(t, s, testEntries(10, 20, 1))
	})
	t.Run("DeleteRange with min above max is a no-op", func(t *testing.T) {
		s := open(t)
		mustStore(t, s, testEntries(1, 10, 1))
		mustDelete(t, s, 7, 3)
		expectIndexes(t, s, 1, 10)
	})
	t.Run("prefix compaction removes exactly the whole segments below", func(t *testing.T) {
		// One entry per batch and 64 entries per segment: segments start
		// at 1, 65, 129, 193, 257. (logcore starts a new segment for a
		// batch that does not fit in the active one, so larger batches
		// would move the boundaries.)
		s := open(t)
		for _, l := range testEntries(1, 300, 1) {
			mustStore(t, s, []*raft.Log{l})
		}
		for _, c := range []struct{ max, wantFirst uint64 }{
			{10, 1},    // inside the first segment: nothing goes
			{63, 1},    // the first segment's last entry is 64
			{64, 65},   // now it is whole
			{200, 193}, // 65..128 and 129..192 go, 193.. stays
			{299, 257}, // the active segment (from 257) always stays
		} {
			first, _ := indexes(t, s)
			mustDelete(t, s, first, c.max)
			expectIndexes(t, s, c.wantFirst, 300)
			expectEntries(t, s, testEntries(c.wantFirst, 300, 1))
			expectMissing(t, s, c.wantFirst-1)
		}
	})
	t.Run("reopen keeps every entry, deletion and reset", func(t *testing.T) {
		needTruncateInsideBatch(t)
		for _, fsName := range []string{"osfs", "memfs"} {
			t.Run(fsName, func(t *testing.T) {
				var cfg logcore.Config
				var dir string
				if fsName == "osfs" {
					cfg, dir = testLogConfig(logcore.OSFS{}), t.TempDir()
				} else {
					cfg, dir = testLogConfig(logcore.NewMemFS()), "/raft/log"
				}
				reopen := func(s *LogStore) *LogStore {
					t.Helper()
					if s != nil {
						if err := s.Close(); err != nil {
							t.Fatalf("Close: %v", err)
						}
					}
					return openTestLogStore(t, dir, cfg)
				}
				s := reopen(nil)
				expectIndexes(t, s, 0, 0)
				mustStore(t, s, testEntries(1, 200, 1))
				s = reopen(s)
				expectIndexes(t, s, 1, 200)
				expectEntries(t, s, testEntries(1, 200, 1))

				mustDelete(t, s, 151, 200)
				mustStore(t, s, testEntries(151, 160, 2))
				mustDelete(t, s, 1, 100)
				first, _ := indexes(t, s)
				s = reopen(s)
				expectIndexes(t, s, first, 160)
				expectEntries(t, s, testEntries(first, 150, 1))
				expectEntries(t, s, testEntries(151, 160, 2))

				mustStore(t, s, testEntries(500, 505, 3)) // a gap: reset
				s = reopen(s)
				expectIndexes(t, s, 500, 505)
				expectEntries(t, s, testEntries(500, 505, 3))

				mustDelete(t, s, 500, 505)
				s = reopen(s)
				expectIndexes(t, s, 0, 0)
				mustStore(t, s, testEntries(506, 507, 3))
				expectIndexes(t, s, 506, 507)
			})
		}
	})
	t.Run("GetLog returns data the caller owns", func(t *testing.T) {
		s := open(t)
		mustStore(t, s, testEntries(1, 3, 1))
		var a raft.Log
		if err := s.GetLog(1, &a); err != nil {
			t.Fatal(err)
		}
		for i := range a.Data {
			a.Data[i] = '!'
		}
		expectEntries(t, s, testEntries(1, 3, 1))
	})
	t.Run("a damaged entry is an error, never an entry or ErrLogNotFound", func(t *testing.T) {
		fsys := logcore.NewMemFS()
		cfg := testLogConfig(fsys)
		cfg.InitialOffset = 1
		l, err := logcore.Open("/raft/log", cfg)
		if err != nil {
			t.Fatal(err)
		}
		for _, v := range [][]byte{{9, 0, 0, 1}, {}, {1, 0, 0x80}} {
			if _, err := l.Append(logcore.Record{Value: v}); err != nil {
				t.Fatal(err)
			}
		}
		l.Close()
		s := openTestLogStore(t, "/raft/log", cfg)
		for i := uint64(1); i <= 3; i++ {
			var got raft.Log
			err := s.GetLog(i, &got)
			if !errors.Is(err, ErrBadEntry) || !errors.Is(err, logcore.ErrCorrupt) {
				t.Fatalf("GetLog(%d) = %v, want ErrBadEntry and logcore.ErrCorrupt", i, err)
			}
		}
	})
	t.Run("retention is refused", func(t *testing.T) {
		cfg := testLogConfig(logcore.NewMemFS())
		cfg.Retention.MaxSegments = 3
		if _, err := OpenLogStore("/raft/log", cfg); !errors.Is(err, logcore.ErrInvalidConfig) {
			t.Fatalf("OpenLogStore with retention = %v, want ErrInvalidConfig", err)
		}
	})
	t.Run("a closed store fails, it does not report missing entries", func(t *testing.T) {
		s := open(t)
		mustStore(t, s, testEntries(1, 3, 1))
		s.Close()
		var l raft.Log
		if err := s.GetLog(1, &l); !errors.Is(err, logcore.ErrClosed) {
			t.Fatalf("GetLog after Close = %v, want logcore.ErrClosed", err)
		}
		if err := s.StoreLogs(testEntries(4, 4, 1)); err == nil {
			t.Fatal("StoreLogs after Close succeeded")
		}
	})
	t.Run("one fsync per batch", func(t *testing.T) {
		fsys := logcore.NewFaultFS(logcore.NewMemFS())
		s := openTestLogStore(t, "/raft/log", testLogConfig(fsys))
		mustStore(t, s, testEntries(1, 1, 1))
		before := fsys.Calls(logcore.OpSync)
		mustStore(t, s, testEntries(2, 41, 1)) // fits the first segment
		if n := fsys.Calls(logcore.OpSync) - before; n != 1 {
			t.Fatalf("a 40-entry StoreLogs made %d fsyncs, want 1", n)
		}
	})
	t.Run("concurrent readers, compaction and appends", func(t *testing.T) {
		s := open(t)
		mustStore(t, s, testEntries(1, 64, 1))
		done := make(chan struct{})
		stopped := func() bool {
			select {
			case <-done:
				return true
			default:
				return false
			}
		}
		errs := make(chan error, 2)
		go func() { // raft's snapshot goroutine compacts
			errs <- func() error {
				for !stopped() {
					first, err := s.FirstIndex()
					if err != nil {
						return err
					}
					last, err := s.LastIndex()
					if err != nil {
						return err
					}
					if last > 100 {
						if err := s.DeleteRange(first, last-50); err != nil {
							return err
						}
					}
				}
				return nil
			}()
		}()
		go func() { // replication reads
			errs <- func() error {
				for !stopped() {
					last, err := s.LastIndex()
					if err != nil {
						return err
					}
					var l raft.Log
					err = s.GetLog(last, &l)
					switch {
					case err == raft.ErrLogNotFound: //nolint:errorlint
					case err != nil:
						return fmt.Errorf("GetLog(%d): %w", last, err)
					case l.Index != last:
						return fmt.Errorf("GetLog(%d) returned entry %d", last, l.Index)
					}
				}
				return nil
			}()
		}()
		for i := uint64(65); i <= 1000; i += 5 { // the main loop appends
			mustStore(t, s, testEntries(i, i+4, 1))
		}
		close(done)
		for range 2 {
			if err := <-errs; err != nil {
				t.Fatal(err)
			}
		}
		first, last := indexes(t, s)
		if last != 1004 || first > last-49 {
			t.Fatalf("FirstIndex, LastIndex = %d, %d", first, last)
		}
		expectEntries(t, s, testEntries(first, last, 1))
	})
}
