package logcore

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// budgetConfig is testConfig sharing fs and budget.
func budgetConfig(policy SyncPolicy, fsys FS, b *FileBudget) Config {
	c := testConfig(policy)
	c.FS = fsys
	c.Files = b
	c.MaxSegmentBytes = 1 << 10 // a few records a segment
	return c
}

// TestFileBudgetBoundsOpenFiles: 40 logs under a budget of 4 segments, each
// appended to and read in turn (segments roll, cold ones reopen): the open
// files never exceed the budget's three a segment, every record reads back,
// and the logs close cleanly (the next Open needs no recovery scan).
func TestFileBudgetBoundsOpenFiles(t *testing.T) {
	for _, policy := range []SyncPolicy{SyncAlways, SyncInterval, SyncNeverUnsafe} {
		t.Run(policy.String(), func(t *testing.T) {
			fsys := NewMemFS()
			b := NewFileBudget(4)
			cfg := budgetConfig(policy, fsys, b)
			const nLogs, rounds, per = 40, 3, 7
			logs := make([]*Log, nLogs)
			check := func(when string) {
				t.Helper()
				if n := b.OpenSegments(); n > b.Max() {
					t.Fatalf("%s: %d segments open, budget %d", when, n, b.Max())
				}
				if n := fsys.OpenFiles(); n > 3*b.Max() {
					t.Fatalf("%s: %d files open, budget %d segments", when, n, b.Max())
				}
			}
			for i := range logs {
				logs[i] = openLog(t, fmt.Sprintf("log%d", i), cfg)
				check(fmt.Sprintf("open %d", i))
			}
			for r := range rounds {
				for i, l := range logs {
					appendN(t, l, r*per, per)
					check(fmt.Sprintf("round %d, append to log %d", r, i))
				}
				for i, l := range logs {
					checkRecords(t, l, 0, (r+1)*per)
					check(fmt.Sprintf("round %d, read log %d", r, i))
				}
			}
			if b.Evictions() == 0 {
				t.Fatal("no evictions: the test did not exercise the budget")
			}
			for i, l := range logs {
				if err := l.Close(); err != nil {
					t.Fatalf("Close log %d: %v", i, err)
				}
			}
			if n := fsys.OpenFiles(); n != 0 {
				t.Fatalf("%d files open after Close", n)
			}
			for i := range logs {
				l := openLog(t, fmt.Sprintf("log%d", i), cfg)
				if st := l.Stats(); st.Recoveries != 0 || st.IndexRebuilds != 0 {
					t.Fatalf("log %d reopened with %+v: not closed cleanly", i, st)
				}
				checkRecords(t, l, 0, rounds*per)
				appendN(t, l, rounds*per, 1)
				if err := l.Close(); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

// TestFileBudgetParkedLogSurvivesCrash: under SyncAlways, a log parked by
// the budget (and one whose records were only buffered under
// SyncNeverUnsafe before the park) keeps every acknowledged record across
// a crash, and its recovery works from the parked files.
func TestFileBudgetParkedLogSurvivesCrash(t *testing.T) {
	fsys := NewMemFS()
	b := NewFileBudget(1)
	always := openLog(t, "always", budgetConfig(SyncAlways, fsys, b))
	appendN(t, always, 0, 20)
	other := openLog(t, "other", budgetConfig(SyncAlways, fsys, b))
	appendN(t, other, 0, 3) // parks "always"
	always.mu.Lock()
	parked := always.active.parked
	always.mu.Unlock()
	if !parked {
		t.Fatal("the idle log was not parked")
	}
	fsys.Crash(CrashOptions{Seed: 1})
	l := openLog(t, "always", budgetConfig(SyncAlways, fsys, nil))
	checkRecords(t, l, 0, 20)
	appendN(t, l, 20, 5)
	checkRecords(t, l, 0, 25)
	l.Close()
}

// TestFileBudgetTruncateAndResetParked: TruncateFrom, Reset, retention and
// OffsetForTime work on a parked log.
func TestFileBudgetTruncateAndResetParked(t *testing.T) {
	fsys := NewMemFS()
	b := NewFileBudget(1)
	cfg := budgetConfig(SyncAlways, fsys, b)
	a := openLog(t, "a", cfg)
	appendN(t, a, 0, 30)
	c := openLog(t, "c", cfg)
	park := func() {
		t.Helper()
		appendN(t, c, int(c.NextOffset()), 1)
		a.mu.Lock()
		p := a.active.parked
		a.mu.Unlock()
		if !p {
			t.Fatal("log a was not parked")
		}
	}
	park()
	if err := a.TruncateFrom(25); err != nil {
		t.Fatal(err)
	}
	if got := a.NextOffset(); got != 25 {
		t.Fatalf("NextOffset after TruncateFrom(25) = %d", got)
	}
	checkRecords(t, a, 0, 25)
	park()
	if _, err := a.OffsetForTime(0); err != nil {
		t.Fatal(err)
	}
	if err := a.Reset(100); err != nil {
		t.Fatal(err)
	}
	park()
	if off, err := a.Append(testRecord(0)); err != nil || off != 100 {
		t.Fatalf("Append after Reset = %d, %v", off, err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if err := c.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestFileBudgetConcurrent: goroutines append to, read, sync and retain 12
// logs under a budget of 3 segments at once (run with -race); every record
// acknowledged is read back in place.
func TestFileBudgetConcurrent(t *testing.T) {
	fsys := NewMemFS()
	b := NewFileBudget(3)
	const nLogs, workers, ops = 12, 6, 300
	logs := make([]*Log, nLogs)
	for i := range logs {
		policy := []SyncPolicy{SyncAlways, SyncNeverUnsafe, SyncInterval}[i%3]
		logs[i] = openLog(t, fmt.Sprintf("log%d", i), budgetConfig(policy, fsys, b))
	}
	var mu sync.Mutex
	acked := map[int]map[uint64]string{}
	for i := range logs {
		acked[i] = map[uint64]string{}
	}
	var wg sync.WaitGroup
	errs := make(chan error, workers)
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(w), 9))
			for k := range ops {
				i := rng.IntN(nLogs)
				l := logs[i]
				switch rng.IntN(4) {
				case 0, 1:
					v := fmt.Sprintf("w%d-k%d", w, k)
					off, err := l.Append(Record{Value: []byte(v)})
					if err != nil {
						errs <- fmt.Errorf("append log %d: %w", i, err)
						return
					}
					mu.Lock()
					acked[i][off] = v
					mu.Unlock()
				case 2:
					if next := l.NextOffset(); next > 0 {
						off := uint64(rng.IntN(int(next)))
						if _, err := l.Read(off); err != nil {
							errs <- fmt.Errorf("read log %d offset %d: %w", i, off, err)
							return
						}
					}
				case 3:
					if err := l.Sync(); err != nil {
						errs <- fmt.Errorf("sync log %d: %w", i, err)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	for i, l := range logs {
		for off, v := range acked[i] {
			r, err := l.Read(off)
			if err != nil || string(r.Value) != v {
				t.Fatalf("log %d offset %d = %q, %v; want %q", i, off, r.Value, err, v)
			}
		}
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	if n := fsys.OpenFiles(); n != 0 {
		t.Fatalf("%d files open after Close", n)
	}
}

// TestFileBudgetUnparkFailureIsDefinite: when a parked log cannot reopen its
// files (here: its store was removed behind its back), an append fails
// without writing anything and the log is not failed; once the file is
// back, appends go on.
func TestFileBudgetUnparkFailureIsDefinite(t *testing.T) {
	dir := t.TempDir()
	b := NewFileBudget(1)
	cfg := budgetConfig(SyncAlways, OSFS{}, b)
	a := openLog(t, filepath.Join(dir, "a"), cfg)
	appendN(t, a, 0, 5)
	c := openLog(t, filepath.Join(dir, "c"), cfg)
	appendN(t, c, 0, 1) // parks a
	store := filepath.Join(dir, "a", segmentName(a.active.base)+storeExt)
	if err := os.Rename(store, store+".away"); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Append(testRecord(5)); err == nil || errors.Is(err, ErrFailed) {
		t.Fatalf("Append with the store gone = %v, want a definite error", err)
	}
	if err := os.Rename(store+".away", store); err != nil {
		t.Fatal(err)
	}
	appendN(t, a, 5, 3)
	checkRecords(t, a, 0, 8)
	a.Close()
	c.Close()
}

// TestFileBudgetOpenWhileBusy: logs opened while others append under a
// small budget (run with -race): the budget may park a log only once its
// Open has finished setting it up.
func TestFileBudgetOpenWhileBusy(t *testing.T) {
	fsys := NewMemFS()
	b := NewFileBudget(2)
	busy := make([]*Log, 3)
	for i := range busy {
		busy[i] = openLog(t, fmt.Sprintf("busy%d", i), budgetConfig(SyncNeverUnsafe, fsys, b))
	}
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for _, l := range busy {
		wg.Go(func() {
			for k := 0; ; k++ {
				select {
				case <-stop:
					return
				default:
				}
				if _, err := l.Append(testRecord(k)); err != nil {
					t.Error(err)
					return
				}
			}
		})
	}
	var opened []*Log
	for i := range 40 {
		l := openLog(t, fmt.Sprintf("new%d", i), budgetConfig(SyncAlways, fsys, b))
		appendN(t, l, 0, 2)
		opened = append(opened, l)
	}
	close(stop)
	wg.Wait()
	for _, l := range append(opened, busy...) {
		if err := l.Close(); err != nil {
			t.Fatal(err)
		}
	}
	for i := range opened {
		l := openLog(t, fmt.Sprintf("new%d", i), budgetConfig(SyncAlways, fsys, nil))
		checkRecords(t, l, 0, 2)
		l.Close()
	}
}

// gateFS blocks the first Sync of a file whose name contains match until
// release is closed; entered is closed when it blocks.
type gateFS struct {
	FS
	match   string
	armed   atomic.Bool
	entered chan struct{}
	release chan struct{}
}

type gateFile struct {
	File
	g    *gateFS
	name string
}

func (g *gateFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := g.FS.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &gateFile{File: f, g: g, name: name}, nil
}

func (f *gateFile) Sync() error {
	if strings.Contains(f.name, f.g.match) && f.g.armed.CompareAndSwap(true, false) {
		close(f.g.entered)
		<-f.g.release
	}
	return f.File.Sync()
}

// TestFileBudgetSyncRoundKeepsItsFile: a group commit round fsyncs the
// active store without the writer lock; an append may roll meanwhile, and
// the budget then closed the sealed segment's files under the fsync: the
// log failed though its records were durable.
func TestFileBudgetSyncRoundKeepsItsFile(t *testing.T) {
	mem := NewMemFS()
	g := &gateFS{FS: mem, match: "a/" + segmentName(0) + storeExt, entered: make(chan struct{}), release: make(chan struct{})}
	b := NewFileBudget(1)
	cfg := budgetConfig(SyncAlways, g, b)
	cfg.PrewriteBytes = 0
	a := openLog(t, "a", cfg)
	big := Record{Value: bytes.Repeat([]byte("x"), 600)}
	g.armed.Store(true)
	errc := make(chan error, 2)
	go func() { _, err := a.Append(big); errc <- err }()
	<-g.entered                                          // G1's round is about to fsync segment 0's store, mu released
	go func() { _, err := a.Append(big); errc <- err }() // rolls: seals segment 0
	// The roll seals segment 0 and puts it in the cache (Rolls counts
	// it after that) while the first round still fsyncs it.
	deadline := time.Now().Add(10 * time.Second)
	for a.Stats().Rolls == 0 {
		if time.Now().After(deadline) {
			t.Fatal("the second append did not roll")
		}
		time.Sleep(time.Millisecond)
	}
	// Another log opening a segment now makes the budget close the
	// least recently used one: segment 0, unless the round holds it.
	c := openLog(t, "c", budgetConfig(SyncAlways, mem, b))
	close(g.release)
	e1, e2 := <-errc, <-errc
	if e1 != nil || e2 != nil {
		t.Errorf("acknowledged-durable append failed: %v / %v", e1, e2)
	}
	if _, err := a.Append(big); err != nil {
		t.Errorf("log left failed: %v", err)
	}
	a.Close()
	c.Close()
}

// TestFileBudgetStuckSegmentsDoNotDisableIt: segments that can never be
// closed (failed logs' active segments here; also logs whose time entries
// wait for room on a full disk) kept the oldest ticks, and once there were
// as many as a shrink tries, the budget was never enforced again.
func TestFileBudgetStuckSegmentsDoNotDisableIt(t *testing.T) {
	mem := NewMemFS()
	ff := NewFaultFS(mem)
	b := NewFileBudget(4)
	var failing atomic.Bool
	ff.SetHook(func(op Op, name string) Fault {
		if failing.Load() && op == OpSync && strings.HasPrefix(name, "bad") {
			return Fault{Err: fmt.Errorf("EIO")}
		}
		return Fault{}
	})
	var all []*Log
	failing.Store(true)
	for i := range 8 {
		l := openLog(t, fmt.Sprintf("bad%d", i), budgetConfig(SyncAlways, ff, b))
		if _, err := l.Append(testRecord(0)); !errors.Is(err, ErrFailed) {
			t.Fatalf("want failed, got %v", err)
		}
		all = append(all, l)
	}
	for i := range 40 {
		l := openLog(t, fmt.Sprintf("good%d", i), budgetConfig(SyncAlways, ff, b))
		appendN(t, l, 0, 2)
		all = append(all, l)
	}
	// The 8 failed logs stay open (soft bound); the healthy ones keep
	// within the rest.
	if b.OpenSegments() > 8+b.Max() {
		t.Errorf("budget not enforced: %d open segments, max %d", b.OpenSegments(), b.Max())
	}
	for _, l := range all {
		l.Close()
	}
}

// TestFileBudgetCrashUnderLoad: many SyncAlways logs under a tiny budget,
// appends and reads from many goroutines, and a crash after a number of
// operations: every acknowledged record is there after recovery.
func TestFileBudgetCrashUnderLoad(t *testing.T) {
	for seed := range 10 {
		mem := NewMemFS()
		b := NewFileBudget(2)
		const nLogs = 6
		logs := make([]*Log, nLogs)
		for i := range logs {
			cfg := budgetConfig(SyncAlways, mem, b)
			cfg.MaxSegmentBytes = 600
			logs[i] = openLog(t, fmt.Sprintf("s%d/log%d", seed, i), cfg)
		}
		var mu sync.Mutex
		acked := make([]map[uint64]string, nLogs)
		for i := range acked {
			acked[i] = map[uint64]string{}
		}
		var ops atomic.Int64
		crashAt := int64(200 + 50*seed)
		crashed := make(chan struct{})
		var snap []map[uint64]string
		var wg sync.WaitGroup
		for w := range 8 {
			wg.Go(func() {
				for k := 0; ; k++ {
					select {
					case <-crashed:
						return
					default:
					}
					if ops.Add(1) == crashAt {
						// Crash with the acknowledged set as of now.
						mu.Lock()
						mem.Crash(CrashOptions{Seed: int64(seed)})
						snap = make([]map[uint64]string, nLogs)
						for i := range acked {
							snap[i] = maps.Clone(acked[i])
						}
						mu.Unlock()
						close(crashed)
						return
					}
					i := (w + k) % nLogs
					l := logs[i]
					if k%3 == 2 {
						if n := l.NextOffset(); n > 0 {
							l.Read(n - 1)
						}
						continue
					}
					v := fmt.Sprintf("w%d-%d", w, k)
					mu.Lock() // an append acknowledged before the crash is in snap
					select {
					case <-crashed:
						mu.Unlock()
						return
					default:
					}
					mu.Unlock()
					off, err := l.Append(Record{Value: []byte(v)})
					if err == nil {
						mu.Lock()
						select {
						case <-crashed: // acknowledged after the crash: not counted
						default:
							acked[i][off] = v
						}
						mu.Unlock()
					}
				}
			})
		}
		wg.Wait()
		for i := range logs {
			l, err := Open(fmt.Sprintf("s%d/log%d", seed, i), budgetConfig(SyncAlways, mem, nil))
			if err != nil {
				t.Fatalf("seed %d: reopen log %d: %v", seed, i, err)
			}
			for off, v := range snap[i] {
				r, err := l.Read(off)
				if err != nil || string(r.Value) != v {
					t.Fatalf("seed %d log %d offset %d = %q, %v; want %q", seed, i, off, r.Value, err, v)
				}
			}
			l.Close()
		}
	}
}

// TestFileBudgetGroupCommitWhileRolling: appenders share fsync rounds on a
// log that rolls every few records while other logs churn a budget of two
// segments (run with -race): no append fails.
func TestFileBudgetGroupCommitWhileRolling(t *testing.T) {
	mem := NewMemFS()
	b := NewFileBudget(2)
	cfg := budgetConfig(SyncAlways, mem, b)
	cfg.MaxSegmentBytes = 300
	cfg.PrewriteBytes = 0
	a := openLog(t, "a", cfg)
	others := []*Log{openLog(t, "b", cfg), openLog(t, "c", cfg), openLog(t, "d", cfg)}
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Go(func() {
			for k := range 300 {
				if _, err := a.Append(Record{Value: fmt.Appendf(nil, "w%d-%d", w, k)}); err != nil {
					t.Errorf("append: %v", err)
					return
				}
			}
		})
	}
	for _, o := range others {
		wg.Go(func() {
			for range 300 {
				if _, err := o.Append(Record{Value: []byte("x")}); err != nil {
					t.Errorf("append: %v", err)
					return
				}
				if n := o.NextOffset(); n > 0 {
					if _, err := o.Read(n / 2); err != nil {
						t.Errorf("read: %v", err)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	if a.Stats().Rolls == 0 || b.Evictions() == 0 {
		t.Fatalf("rolls %d, evictions %d: the test did not exercise the budget", a.Stats().Rolls, b.Evictions())
	}
}
