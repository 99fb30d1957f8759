package logcore

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"sync"
	"testing"
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
