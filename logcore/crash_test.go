package logcore

import (
	"bytes"
	"errors"
	"fmt"
	"math/rand"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

// crashWriter's records say who wrote them and their place in their batch:
// "w<writer>-<seq>-<index in batch>/<batch size>-<padding>".
func crashValue(w, seq, i, n int, r *rand.Rand) []byte {
	return fmt.Appendf(nil, "w%d-%d-%d/%d-%s", w, seq, i, n, bytes.Repeat([]byte{'x'}, r.Intn(200)))
}

// TestCrashSimulator appends from several goroutines with each sync policy,
// simulates a power loss at a random moment (dropping, keeping a prefix of,
// or zeroing what was not fsynced), reopens, and checks the promises: every
// record acknowledged under SyncAlways, or covered by a successful Sync, is
// there byte for byte; nothing that is there is damaged, duplicated or out
// of order.
func TestCrashSimulator(t *testing.T) {
	opts := []struct {
		name string
		opt  CrashOptions
	}{
		{"drop unsynced", CrashOptions{}},
		{"keep a prefix", CrashOptions{KeepUnsyncedPrefix: true}},
		{"zeroed tail", CrashOptions{ZeroUnsyncedTail: true}},
		{"prefix then zeroes", CrashOptions{KeepUnsyncedPrefix: true, ZeroUnsyncedTail: true}},
	}
	seeds := 6
	if testing.Short() {
		seeds = 2
	}
	for _, p := range []SyncPolicy{SyncAlways, SyncInterval, SyncNeverUnsafe} {
		for _, o := range opts {
			for seed := int64(1); seed <= int64(seeds); seed++ {
				t.Run(fmt.Sprintf("%s/%s/seed%d", p, o.name, seed), func(t *testing.T) {
					opt := o.opt
					opt.Seed = seed
					crashOnce(t, p, opt, seed)
				})
			}
		}
	}
}

func crashOnce(t *testing.T, policy SyncPolicy, opt CrashOptions, seed int64) {
	fs := NewMemFS()
	cfg := testConfig(policy)
	cfg.FS = fs
	cfg.SyncInterval = time.Millisecond
	l := openLog(t, "/data/log", cfg)

	const writers = 4
	rng := rand.New(rand.NewSource(seed))
	crashAt := int64(50 + rng.Intn(400))
	var (
		mu       sync.Mutex
		acked    = map[uint64][]byte{} // offset -> value, acknowledged
		synced   uint64                // every acked offset below it was covered by a Sync
		attempts atomic.Int64
		crashed  = make(chan struct{})
		wg       sync.WaitGroup
	)
	var crashing atomic.Bool
	// crash simulates the power loss, once, from the appender whose
	// attempt crossed crashAt. Index entries are stored through a mapping,
	// which only the writer lock orders; holding it keeps the simulator
	// from racing with those stores (a real power loss needs no such care).
	crash := func() {
		if !crashing.CompareAndSwap(false, true) {
			return
		}
		l.mu.Lock()
		fs.Crash(opt)
		l.mu.Unlock()
		close(crashed)
	}
	for w := range writers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			r := rand.New(rand.NewSource(seed*100 + int64(w)))
			for seq := 0; ; {
				select {
				case <-crashed:
					return
				default:
				}
				n := 1 + r.Intn(4)
				batch := make([]Record, n)
				for i := range batch {
					batch[i] = Record{Value: crashValue(w, seq+i, i, n, r)}
				}
				seq += n
				if attempts.Add(int64(n)) >= crashAt {
					crash()
					return
				}
				first, err := l.AppendBatch(batch)
				if err != nil {
					return // the crash: files are gone from under the log
				}
				mu.Lock()
				for i, rec := range batch {
					acked[first+uint64(i)] = rec.Value
				}
				mu.Unlock()
				if r.Intn(10) == 0 && policy != SyncAlways {
					mu.Lock()
					before := uint64(0)
					for off := range acked {
						before = max(before, off+1)
					}
					mu.Unlock()
					if err := l.Sync(); err == nil {
						mu.Lock()
						synced = max(synced, before)
						mu.Unlock()
					}
				}
			}
		}()
	}
	wg.Wait()
	crash() // in case every appender stopped before crashAt
	<-crashed
	l.Close() // fails: the files crashed; it must not hang or panic
	if len(acked) == 0 {
		t.Fatal("nothing was acknowledged before the crash")
	}

	l2, err := Open("/data/log", cfg)
	if err != nil {
		t.Fatalf("Open after crash: %v", err)
	}
	defer l2.Close()
	recs, err := l2.ReadBatch(0, 1<<20, 1<<30)
	if err != nil {
		t.Fatalf("ReadBatch after crash: %v", err)
	}
	if uint64(len(recs)) != l2.NextOffset() {
		t.Fatalf("read %d records, NextOffset %d", len(recs), l2.NextOffset())
	}
	lastSeq := map[string]int{}
	for i, rec := range recs {
		if rec.Offset != uint64(i) {
			t.Fatalf("record %d has offset %d", i, rec.Offset)
		}
		var w, seq, bi, bn int
		if _, err := fmt.Sscanf(string(rec.Value), "w%d-%d-%d/%d-", &w, &seq, &bi, &bn); err != nil {
			t.Fatalf("record %d is damaged: %q", i, rec.Value)
		}
		// Batches are atomic: the whole batch is here, in order.
		if bi == 0 {
			for j := 1; j < bn; j++ {
				if i+j >= len(recs) || !bytes.HasPrefix(recs[i+j].Value, fmt.Appendf(nil, "w%d-%d-%d/%d-", w, seq+j, j, bn)) {
					t.Fatalf("offset %d starts a batch of %d, but record %d of it is missing", i, bn, j)
				}
			}
		}
		key := fmt.Sprint(w)
		if prev, ok := lastSeq[key]; ok && seq <= prev {
			t.Fatalf("writer %d's record %d at offset %d after its record %d", w, seq, i, prev)
		}
		lastSeq[key] = seq
		if v, ok := acked[rec.Offset]; ok && !bytes.Equal(v, rec.Value) {
			t.Fatalf("offset %d holds %q, acknowledged %q", rec.Offset, rec.Value, v)
		}
	}
	for off, v := range acked {
		must := policy == SyncAlways || off < synced
		if must && off >= uint64(len(recs)) {
			t.Fatalf("%s: acknowledged record at offset %d (%q) lost; %d records survive", policy, off, v[:min(len(v), 12)], len(recs))
		}
	}
	// The recovered log takes appends.
	if _, err := l2.Append(Record{Value: []byte("after")}); err != nil {
		t.Fatalf("Append after recovery: %v", err)
	}
}

// TestCrashDuringRecoveryAndRoll crashes again right after a recovery and
// around segment rolls: the log still opens with everything synced.
func TestCrashAgainAfterRecovery(t *testing.T) {
	fs := NewMemFS()
	cfg := testConfig(SyncAlways)
	cfg.FS = fs
	l := openLog(t, "/d", cfg)
	appendN(t, l, 0, 120)
	fs.Crash(CrashOptions{KeepUnsyncedPrefix: true, Seed: 7})
	l.Close()
	for round := range 3 {
		l = openLog(t, "/d", cfg)
		checkRecords(t, l, 0, 120+round*30)
		appendN(t, l, 120+round*30, 30)
		fs.Crash(CrashOptions{ZeroUnsyncedTail: true, Seed: int64(round)})
		l.Close()
	}
	l = openLog(t, "/d", cfg)
	defer l.Close()
	checkRecords(t, l, 0, 210)
}

// TestFaults injects write and fsync failures: the failing append reports
// it, the log refuses further appends without retrying the fsync, records
// acknowledged before stay readable and survive a reopen.
func TestFaults(t *testing.T) {
	eio := Fault{Err: syscall.EIO}
	cases := []struct {
		name   string
		op     Op
		fault  Fault
		policy SyncPolicy
	}{
		{"fsync fails", OpSync, eio, SyncAlways},
		{"write fails", OpWrite, eio, SyncAlways},
		{"short write, disk full", OpWrite, Fault{Err: syscall.ENOSPC, Written: 10}, SyncAlways},
		{"short write with never", OpWrite, Fault{Err: syscall.ENOSPC, Written: 10}, SyncNeverUnsafe},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mem := NewMemFS()
			ffs := NewFaultFS(mem)
			cfg := testConfig(tc.policy)
			cfg.FS = ffs
			cfg.WriteBufferBytes = 0 // write through, so the fault hits this append
			l := openLog(t, "/d", cfg)
			appendN(t, l, 0, 20)
			if tc.policy != SyncAlways {
				must(t, l.Sync())
			}
			var armed atomic.Bool
			armed.Store(true)
			ffs.SetHook(func(op Op, name string) Fault {
				if op == tc.op && armed.Load() && len(name) > 6 && name[len(name)-6:] == ".store" {
					armed.Store(false)
					return tc.fault
				}
				return Fault{}
			})
			_, err := l.Append(testRecord(20))
			if !errors.Is(err, ErrFailed) || !errors.Is(err, tc.fault.Err) {
				t.Fatalf("Append under fault = %v, want ErrFailed wrapping %v", err, tc.fault.Err)
			}
			syncs := ffs.Calls(OpSync)
			if _, err := l.Append(testRecord(21)); !errors.Is(err, ErrFailed) {
				t.Fatalf("Append after the fault = %v, want ErrFailed", err)
			}
			if ffs.Calls(OpSync) != syncs {
				t.Fatal("the log retried an fsync after a failed one")
			}
			checkRecords(t, l, 0, 20)
			if err := l.Close(); err == nil {
				t.Fatal("Close after a failure reported no error")
			}
			l = openLog(t, "/d", cfg)
			defer l.Close()
			if n := l.NextOffset(); n < 20 || n > 21 {
				t.Fatalf("NextOffset after reopen = %d, want 20 or 21", n)
			}
			checkRecords(t, l, 0, 20)
			appendN(t, l, int(l.NextOffset()), 5)
		})
	}
	t.Run("open fails", func(t *testing.T) {
		ffs := NewFaultFS(NewMemFS())
		ffs.SetHook(func(op Op, name string) Fault {
			if op == OpOpen {
				return Fault{Err: syscall.EACCES}
			}
			return Fault{}
		})
		if _, err := Open("/d", testConfig(SyncAlways).withFS(ffs)); !errors.Is(err, syscall.EACCES) {
			t.Fatalf("Open = %v, want EACCES", err)
		}
	})
	t.Run("directory fsync fails at a roll", func(t *testing.T) {
		ffs := NewFaultFS(NewMemFS())
		l := openLog(t, "/d", testConfig(SyncAlways).withFS(ffs))
		defer l.Close()
		ffs.SetHook(func(op Op, name string) Fault {
			if op == OpSyncDir {
				return Fault{Err: syscall.EIO}
			}
			return Fault{}
		})
		var err error
		for i := 0; i < 200 && err == nil; i++ {
			_, err = l.Append(testRecord(i))
		}
		if !errors.Is(err, ErrFailed) || !errors.Is(err, syscall.EIO) {
			t.Fatalf("roll with a failing directory fsync: %v", err)
		}
	})
}

func (c Config) withFS(fs FS) Config { c.FS = fs; return c }

// TestDiskFull: a disk that fills up. An append reserves its file space
// (zeros written ahead in the store, under SyncAlways; index space always)
// before it writes anything: if the space cannot be had, it fails with a
// definite error and the log goes on once there is space again. Nothing is
// ever stored through the index mapping into space not written first
// (which a full disk answers with SIGBUS: checkNoStoresInHoles, run by
// openLog).
func TestDiskFull(t *testing.T) {
	suffix := func(name, ext string) bool { return strings.HasSuffix(name, ext) }
	t.Run("room for the append, not for a step of zeros", func(t *testing.T) {
		ffs := NewFaultFS(NewMemFS())
		cfg := testConfig(SyncAlways).withFS(ffs)
		cfg.MaxSegmentBytes = 1 << 20
		cfg.PrewriteBytes = 64 << 10
		l := openLog(t, "/d", cfg)
		appendN(t, l, 0, 10)
		// Every write of zeros stops after 1 KiB.
		ffs.SetHook(func(op Op, name string) Fault {
			if op == OpWriteAt && suffix(name, ".store") {
				return Fault{Err: syscall.ENOSPC, Written: 1024}
			}
			return Fault{}
		})
		appendN(t, l, 10, 2000) // well past the zeros written before
		if got := l.Stats().ReserveFailures; got != 0 {
			t.Fatalf("ReserveFailures = %d, want 0", got)
		}
		ffs.SetHook(nil)
		must(t, l.Close())
		l = openLog(t, "/d", cfg)
		defer l.Close()
		checkRecords(t, l, 0, 2010)
	})
	for _, ext := range []string{".store", ".index"} {
		t.Run("no room in the "+ext[1:], func(t *testing.T) {
			ffs := NewFaultFS(NewMemFS())
			cfg := testConfig(SyncAlways).withFS(ffs)
			cfg.MaxIndexBytes = indexEntryWidth * 100_000
			cfg.MaxSegmentBytes = 64 << 20
			cfg.PrewriteBytes = 64 << 10
			l := openLog(t, "/d", cfg)
			// Up to the end of the space reserved so far in the file.
			var recs []Record
			var size int64
			for i := 0; i < indexReserveStep/indexEntryWidth; i++ {
				r := testRecord(i)
				if size += int64(FrameSize(&r)); ext == ".store" && size > cfg.PrewriteBytes {
					break
				}
				recs = append(recs, r)
			}
			if _, err := l.AppendBatch(recs); err != nil {
				t.Fatal(err)
			}
			n := len(recs)
			var full atomic.Bool
			full.Store(true)
			ffs.SetHook(func(op Op, name string) Fault {
				if full.Load() && op == OpWriteAt && suffix(name, ext) {
					return Fault{Err: syscall.ENOSPC}
				}
				return Fault{}
			})
			for range 3 {
				// Enough for a new step of both files.
				_, err := l.AppendBatch([]Record{testRecord(n), {Value: make([]byte, 64<<10)}})
				if !errors.Is(err, syscall.ENOSPC) || errors.Is(err, ErrFailed) {
					t.Fatalf("AppendBatch on a full disk = %v, want ENOSPC, not ErrFailed (nothing was written)", err)
				}
			}
			if got := l.NextOffset(); got != uint64(n) {
				t.Fatalf("NextOffset after refused appends = %d, want %d", got, n)
			}
			if got := l.Stats().ReserveFailures; got != 3 {
				t.Fatalf("ReserveFailures = %d, want 3", got)
			}
			checkRecords(t, l, 0, n)
			full.Store(false) // room again
			appendN(t, l, n, 100)
			must(t, l.Close())
			l = openLog(t, "/d", cfg)
			defer l.Close()
			checkRecords(t, l, 0, n+100)
		})
	}
}
