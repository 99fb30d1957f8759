package logcore

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"
	"unsafe"
)

func TestAppendReadEachPolicy(t *testing.T) {
	for _, p := range []SyncPolicy{SyncAlways, SyncInterval, SyncNeverUnsafe} {
		t.Run(p.String(), func(t *testing.T) {
			cfg := testConfig(p)
			cfg.InitialOffset = 100
			l := openLog(t, t.TempDir(), cfg)
			defer l.Close()
			if _, ok := l.HighestOffset(); ok {
				t.Fatal("empty log has a highest offset")
			}
			_, err := l.Read(100)
			mustOutOfRange(t, err)
			appendN(t, l, 0, 300)
			checkRecords(t, l, 0, 300)
			if got, _ := l.HighestOffset(); got != 399 {
				t.Fatalf("HighestOffset = %d, want 399", got)
			}
			if l.LowestOffset() != 100 || l.NextOffset() != 400 {
				t.Fatalf("range [%d, %d), want [100, 400)", l.LowestOffset(), l.NextOffset())
			}
			_, err = l.Read(400)
			mustOutOfRange(t, err)
			_, err = l.Read(99)
			var oe *OffsetError
			if !errors.As(err, &oe) || oe.Lowest != 100 || oe.Next != 400 {
				t.Fatalf("Read(99) err = %v, want OffsetError [100, 400)", err)
			}
			if got := oe.Error(); got != "offset 99 out of range [100, 399]" {
				t.Fatalf("error text %q", got)
			}
			info, err := l.Info()
			if err != nil || info.Segments < 2 || info.Records != 300 {
				t.Fatalf("Info = %+v, %v; want several segments and 300 records", info, err)
			}
		})
	}
}

func TestReopenAfterCleanCloseNeedsNoScan(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(SyncAlways)
	l := openLog(t, dir, cfg)
	appendN(t, l, 0, 250)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Append(testRecord(0)); !errors.Is(err, ErrClosed) {
		t.Fatalf("Append after Close: %v, want ErrClosed", err)
	}
	if _, err := l.Read(0); !errors.Is(err, ErrClosed) {
		t.Fatalf("Read after Close: %v, want ErrClosed", err)
	}
	l = openLog(t, dir, cfg)
	defer l.Close()
	if st := l.Stats(); st.Recoveries != 0 || st.TornTails != 0 {
		t.Fatalf("clean reopen scanned: %+v", st)
	}
	checkRecords(t, l, 0, 250)
	appendN(t, l, 250, 50)
	checkRecords(t, l, 0, 300)
}

func TestSegmentRollsBeforeOverflow(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(SyncNeverUnsafe)
	l := openLog(t, dir, cfg)
	appendN(t, l, 0, 500)
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	names, _ := os.ReadDir(dir)
	stores := 0
	for _, e := range names {
		fi, _ := e.Info()
		switch filepath.Ext(e.Name()) {
		case storeExt:
			stores++
			if fi.Size() > cfg.MaxSegmentBytes {
				t.Errorf("%s is %d bytes, over the %d maximum", e.Name(), fi.Size(), cfg.MaxSegmentBytes)
			}
		case indexExt:
			if fi.Size()%indexEntryWidth != 0 || fi.Size() >= cfg.MaxIndexBytes {
				t.Errorf("%s is %d bytes after a clean close, want its exact length", e.Name(), fi.Size())
			}
		}
	}
	if stores < 5 {
		t.Fatalf("%d segments, want several", stores)
	}
}

func TestRecordTooLarge(t *testing.T) {
	cfg := testConfig(SyncAlways)
	l := openLog(t, t.TempDir(), cfg)
	defer l.Close()
	_, err := l.Append(Record{Value: make([]byte, cfg.MaxSegmentBytes)})
	if !errors.Is(err, ErrRecordTooLarge) {
		t.Fatalf("err = %v, want ErrRecordTooLarge", err)
	}
	if l.NextOffset() != 0 {
		t.Fatal("a refused record took an offset")
	}
	// The largest record that fits is accepted, alone in a segment.
	appendN(t, l, 0, 3)
	big := Record{Value: make([]byte, cfg.MaxSegmentBytes-frameHeaderSize-recordFixedSize)}
	if _, err := l.Append(big); err != nil {
		t.Fatalf("largest record: %v", err)
	}
	appendN(t, l, 4, 0)
}

func TestReadBatch(t *testing.T) {
	l := openLog(t, t.TempDir(), testConfig(SyncAlways))
	defer l.Close()
	appendN(t, l, 0, 400)
	all, err := l.ReadBatch(0, 1000, 1<<30)
	if err != nil || len(all) != 400 {
		t.Fatalf("ReadBatch(all) = %d records, %v", len(all), err)
	}
	for i, r := range all {
		if r.Offset != uint64(i) || string(r.Value) != string(testRecord(i).Value) {
			t.Fatalf("record %d = %d %q", i, r.Offset, r.Value)
		}
	}
	cases := []struct {
		name       string
		from       uint64
		max, bytes int
		want       int
	}{
		{"max records", 10, 7, 1 << 20, 7},
		{"one byte budget still returns one", 5, 100, 1, 1},
		{"at the end", 400, 10, 1 << 20, 0},
		{"near the end", 398, 10, 1 << 20, 2},
		{"zero max", 0, 0, 1 << 20, 0},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got, err := l.ReadBatch(tc.from, tc.max, tc.bytes)
			if err != nil || len(got) != tc.want {
				t.Fatalf("got %d records, %v; want %d", len(got), err, tc.want)
			}
			for i, r := range got {
				if r.Offset != tc.from+uint64(i) {
					t.Fatalf("record %d has offset %d", i, r.Offset)
				}
			}
		})
	}
	// A byte budget is honoured (beyond the first record).
	got, _ := l.ReadBatch(0, 1000, 500)
	size := 0
	for _, r := range got {
		size += FrameSize(&r)
	}
	if size > 500 || len(got) < 2 {
		t.Fatalf("budget 500: %d records of %d bytes", len(got), size)
	}
	_, err = l.ReadBatch(401, 10, 100)
	mustOutOfRange(t, err)
}

// TestReadBatchInto: reads into a caller's buffer, across segments, reuse
// it when the records fit and grow it when they do not, and return the
// same records as ReadBatch.
func TestReadBatchInto(t *testing.T) {
	l := openLog(t, t.TempDir(), testConfig(SyncAlways)) // 4 KiB segments
	defer l.Close()
	appendN(t, l, 0, 400)
	check := func(recs []Record, from uint64, n int) {
		t.Helper()
		if len(recs) != n {
			t.Fatalf("%d records, want %d", len(recs), n)
		}
		for i, r := range recs {
			if r.Offset != from+uint64(i) || string(r.Value) != string(testRecord(int(from)+i).Value) {
				t.Fatalf("record %d = %d %q", i, r.Offset, r.Value)
			}
		}
	}

	// Too small: a larger buffer comes back, holding all the records.
	small := make([]byte, 0, 100)
	recs, buf, err := l.ReadBatchInto(small, 0, 400, 1<<30)
	if err != nil {
		t.Fatal(err)
	}
	check(recs, 0, 400)
	if cap(buf) <= cap(small) || len(buf) == 0 {
		t.Fatalf("buffer of len %d cap %d after a read larger than %d", len(buf), cap(buf), cap(small))
	}

	// Large enough: the records are read into it, across segments, and
	// it is reused from its start (len 0) by the next read.
	big := make([]byte, 0, 1<<20)
	for _, from := range []uint64{0, 123} {
		recs, buf, err = l.ReadBatchInto(big[:0], from, 200, 1<<30)
		if err != nil {
			t.Fatal(err)
		}
		check(recs, from, 200)
		if &buf[0] != &big[:1][0] {
			t.Fatalf("read from %d: records not read into the given buffer", from)
		}
		// Each record aliases the buffer.
		last := recs[len(recs)-1].Value
		if p := &last[0]; uintptr(unsafe.Pointer(p)) < uintptr(unsafe.Pointer(&buf[0])) || uintptr(unsafe.Pointer(p)) >= uintptr(unsafe.Pointer(&buf[0]))+uintptr(len(buf)) {
			t.Fatalf("read from %d: last record's value outside the returned buffer", from)
		}
	}

	// Nothing to read: the buffer comes back as it was.
	recs, buf, err = l.ReadBatchInto(big[:0], 400, 10, 1<<20)
	if err != nil || len(recs) != 0 || cap(buf) != cap(big) {
		t.Fatalf("at the end: %d records, cap %d, %v", len(recs), cap(buf), err)
	}
	_, _, err = l.ReadBatchInto(big[:0], 401, 10, 1<<20)
	mustOutOfRange(t, err)
}

func TestWaitWakesOnAppend(t *testing.T) {
	for _, p := range []SyncPolicy{SyncAlways, SyncNeverUnsafe} {
		t.Run(p.String(), func(t *testing.T) {
			l := openLog(t, t.TempDir(), testConfig(p))
			defer l.Close()
			done := make(chan error, 1)
			go func() { done <- l.Wait(context.Background(), 0) }()
			appendN(t, l, 0, 1)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Millisecond)
			defer cancel()
			if err := l.Wait(ctx, 5); !errors.Is(err, context.DeadlineExceeded) {
				t.Fatalf("Wait for a missing record: %v", err)
			}
			go func() { done <- l.Wait(context.Background(), 5) }()
			l.Close()
			if err := <-done; !errors.Is(err, ErrClosed) {
				t.Fatalf("Wait across Close: %v", err)
			}
		})
	}
}

func TestTruncateFrom(t *testing.T) {
	cases := []struct {
		name string
		cut  int
	}{
		{"inside the active segment", 395},
		{"inside a sealed segment", 130},
		{"at a segment boundary", -1},
		{"everything", 0},
		{"nothing", 400},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig(SyncAlways)
			l := openLog(t, dir, cfg)
			appendN(t, l, 0, 400)
			cut := tc.cut
			if cut < 0 {
				l.segsMu.RLock()
				cut = int(l.segs[2].base)
				l.segsMu.RUnlock()
			}
			if err := l.TruncateFrom(uint64(cut)); err != nil {
				t.Fatal(err)
			}
			if l.NextOffset() != uint64(cut) {
				t.Fatalf("NextOffset = %d, want %d", l.NextOffset(), cut)
			}
			_, err := l.Read(uint64(cut))
			mustOutOfRange(t, err)
			checkRecords(t, l, 0, cut)
			// New records take the truncated offsets.
			appendN(t, l, cut, 20)
			checkRecords(t, l, 0, cut+20)
			l.Close()
			l = openLog(t, dir, cfg)
			defer l.Close()
			checkRecords(t, l, 0, cut+20)
			if l.NextOffset() != uint64(cut+20) {
				t.Fatalf("after reopen NextOffset = %d", l.NextOffset())
			}
		})
	}
	l := openLog(t, t.TempDir(), testConfig(SyncAlways))
	defer l.Close()
	appendN(t, l, 0, 10)
	mustOutOfRange(t, l.TruncateFrom(11))
}

func TestTruncateBeforeRemovesWholeSegments(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(SyncAlways)
	l := openLog(t, dir, cfg)
	appendN(t, l, 0, 400)
	if err := l.TruncateBefore(200); err != nil {
		t.Fatal(err)
	}
	low := l.LowestOffset()
	if low > 200 || low == 0 {
		t.Fatalf("LowestOffset = %d, want in (0, 200]", low)
	}
	_, err := l.Read(low - 1)
	mustOutOfRange(t, err)
	checkRecords(t, l, int(low), 400-int(low))
	l.Close()
	l = openLog(t, dir, cfg)
	defer l.Close()
	if l.LowestOffset() != low {
		t.Fatalf("after reopen LowestOffset = %d, want %d", l.LowestOffset(), low)
	}
	// Everything below the active segment.
	if err := l.TruncateBefore(1 << 40); err != nil {
		t.Fatal(err)
	}
	if info, _ := l.Info(); info.Segments != 1 {
		t.Fatalf("%d segments left, want the active one", info.Segments)
	}
}

func TestRetention(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	var mu sync.Mutex
	clock := func() time.Time { mu.Lock(); defer mu.Unlock(); return now }
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	cases := []struct {
		name  string
		ret   Retention
		check func(t *testing.T, l *Log)
	}{
		{"max segments", Retention{MaxSegments: 3}, func(t *testing.T, l *Log) {
			if info, _ := l.Info(); info.Segments != 3 {
				t.Fatalf("%d segments, want 3", info.Segments)
			}
		}},
		{"max bytes", Retention{MaxBytes: 10 << 10}, func(t *testing.T, l *Log) {
			if info, _ := l.Info(); info.Bytes > 10<<10 || info.Segments < 2 {
				t.Fatalf("%d bytes in %d segments, want at most 10 KiB", info.Bytes, info.Segments)
			}
		}},
		{"max segments, keep within 1h", Retention{MaxSegments: 1, KeepWithin: time.Hour}, func(t *testing.T, l *Log) {
			// Every record from the two hours before the newest is kept,
			// the older ones go.
			if low := l.LowestOffset(); low == 0 || low > 200 {
				t.Fatalf("LowestOffset = %d, want the old segments gone", low)
			}
			r, err := l.Read(l.LowestOffset())
			if err != nil {
				t.Fatal(err)
			}
			if last, _ := l.Read(399); r.Time < last.Time-int64(2*time.Hour) {
				t.Fatalf("lowest record at %v before the newest", time.Duration(last.Time-r.Time))
			}
			if info, _ := l.Info(); info.Segments < 2 {
				t.Fatalf("%d segments, want those of the last hour kept", info.Segments)
			}
			if off, _ := l.OffsetForTime(now.Add(-time.Hour).UnixNano()); off < l.LowestOffset() {
				t.Fatalf("a record within the hour (offset %d) was removed", off)
			}
		}},
		{"keep within 3h keeps all", Retention{MaxSegments: 1, KeepWithin: 3 * time.Hour}, func(t *testing.T, l *Log) {
			if low := l.LowestOffset(); low != 0 {
				t.Fatalf("LowestOffset = %d, want every record kept", low)
			}
		}},
		{"max segments 1, keep last sealed", Retention{MaxSegments: 1, KeepLastSealed: true}, func(t *testing.T, l *Log) {
			if info, _ := l.Info(); info.Segments != 2 {
				t.Fatalf("%d segments, want the active one and the newest sealed one", info.Segments)
			}
		}},
		{"max bytes 1, keep last sealed", Retention{MaxBytes: 1, KeepLastSealed: true}, func(t *testing.T, l *Log) {
			if info, _ := l.Info(); info.Segments != 2 {
				t.Fatalf("%d segments, want the active one and the newest sealed one", info.Segments)
			}
		}},
		{"max age", Retention{MaxAge: time.Hour}, func(t *testing.T, l *Log) {
			// The first 200 records are two hours old, the rest new.
			if low := l.LowestOffset(); low == 0 || low > 200 {
				t.Fatalf("LowestOffset = %d, want the old segments gone", low)
			}
		}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			cfg := testConfig(SyncNeverUnsafe)
			cfg.Retention = tc.ret
			cfg.Now = clock
			l := openLog(t, t.TempDir(), cfg)
			defer l.Close()
			appendN(t, l, 0, 200)
			advance(2 * time.Hour)
			appendN(t, l, 200, 200)
			if err := l.ApplyRetention(); err != nil {
				t.Fatal(err)
			}
			tc.check(t, l)
			low := int(l.LowestOffset())
			checkRecords(t, l, low, 400-low)
		})
	}
}

func TestOffsetForTime(t *testing.T) {
	cfg := testConfig(SyncAlways)
	dir := t.TempDir()
	l := openLog(t, dir, cfg)
	base := int64(1_700_000_000_000_000_000)
	// Timestamps 0, 10, 20, ... with one that goes back in time.
	for i := 0; i < 300; i++ {
		r := testRecord(i)
		r.Time = base + int64(i)*10
		if i == 150 {
			r.Time = base
		}
		if _, err := l.Append(r); err != nil {
			t.Fatal(err)
		}
	}
	check := func(l *Log) {
		cases := []struct {
			t    int64
			want uint64
		}{
			{base - 100, 0}, {base, 0}, {base + 1, 1}, {base + 10, 1}, {base + 1495, 151},
			{base + 1500, 151}, {base + 2990, 299}, {base + 2991, 300},
		}
		for _, tc := range cases {
			got, err := l.OffsetForTime(tc.t)
			if err != nil || got != tc.want {
				t.Errorf("OffsetForTime(base+%d) = %d, %v; want %d", tc.t-base, got, err, tc.want)
			}
		}
	}
	check(l)
	l.Close()
	l = openLog(t, dir, cfg)
	defer l.Close()
	check(l)
}

func TestConcurrentAppendersAndReaders(t *testing.T) {
	for _, p := range []SyncPolicy{SyncAlways, SyncNeverUnsafe} {
		t.Run(p.String(), func(t *testing.T) { concurrentAppendersAndReaders(t, p) })
	}
}

func concurrentAppendersAndReaders(t *testing.T, policy SyncPolicy) {
	cfg := testConfig(policy)
	cfg.WriteBufferBytes = 1 << 10 // flushes in the middle of batches too
	l := openLog(t, t.TempDir(), cfg)
	defer l.Close()
	const writers, each = 4, 150
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var readErr error
	var readMu sync.Mutex
	for range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var next uint64
			for {
				select {
				case <-stop:
					return
				default:
				}
				recs, err := l.ReadBatch(next, 50, 1<<20)
				if err != nil {
					readMu.Lock()
					readErr = err
					readMu.Unlock()
					return
				}
				next += uint64(len(recs))
			}
		}()
	}
	var aw sync.WaitGroup
	for w := range writers {
		aw.Add(1)
		go func() {
			defer aw.Done()
			for i := 0; i < each; {
				// Batches of 1 to 3 records.
				n := min(1+i%3, each-i)
				batch := make([]Record, n)
				for j := range batch {
					batch[j] = Record{Value: []byte{byte(w), byte(i + j)}}
				}
				if _, err := l.AppendBatch(batch); err != nil {
					t.Error(err)
					return
				}
				i += n
			}
		}()
	}
	aw.Wait()
	close(stop)
	wg.Wait()
	if readErr != nil {
		t.Fatal(readErr)
	}
	recs, err := l.ReadBatch(0, writers*each+1, 1<<30)
	if err != nil || len(recs) != writers*each {
		t.Fatalf("%d records, %v", len(recs), err)
	}
	seen := map[[2]byte]bool{}
	for _, r := range recs {
		seen[[2]byte(r.Value)] = true
	}
	if len(seen) != writers*each {
		t.Fatalf("%d distinct records, want %d", len(seen), writers*each)
	}
}

func TestReset(t *testing.T) {
	for _, to := range []uint64{0, 50, 5000} {
		t.Run(fmt.Sprint(to), func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig(SyncAlways)
			l := openLog(t, dir, cfg)
			appendN(t, l, 0, 300)
			must(t, l.Reset(to))
			if l.LowestOffset() != to || l.NextOffset() != to {
				t.Fatalf("after Reset(%d): [%d, %d)", to, l.LowestOffset(), l.NextOffset())
			}
			_, err := l.Read(to)
			mustOutOfRange(t, err)
			off, err := l.Append(testRecord(1))
			if err != nil || off != to {
				t.Fatalf("Append after Reset = %d, %v; want %d", off, err, to)
			}
			must(t, l.Close())
			l = openLog(t, dir, cfg)
			defer l.Close()
			if l.LowestOffset() != to || l.NextOffset() != to+1 {
				t.Fatalf("after reopen: [%d, %d)", l.LowestOffset(), l.NextOffset())
			}
			if info, _ := l.Info(); info.Segments != 1 {
				t.Fatalf("%d segments after Reset, want 1", info.Segments)
			}
		})
	}
}

// TestTruncateFromInsideABatch: a cut inside a batch makes the record
// before the cut the end of its batch, so that recovery keeps it.
func TestTruncateFromInsideABatch(t *testing.T) {
	for _, crash := range []bool{false, true} {
		t.Run(fmt.Sprintf("crash=%v", crash), func(t *testing.T) {
			fs := NewMemFS()
			cfg := testConfig(SyncAlways)
			cfg.FS = fs
			l := openLog(t, "/d", cfg)
			recs := make([]Record, 10)
			for i := range recs {
				recs[i] = testRecord(i)
			}
			_, err := l.AppendBatch(recs)
			must(t, err)
			must(t, l.TruncateFrom(5))
			checkRecords(t, l, 0, 5)
			if crash {
				l.mu.Lock()
				fs.Crash(CrashOptions{})
				l.mu.Unlock()
				l.Close()
			} else {
				must(t, l.Close())
			}
			l = openLog(t, "/d", cfg)
			defer l.Close()
			if l.NextOffset() != 5 {
				t.Fatalf("NextOffset = %d after reopen, want 5", l.NextOffset())
			}
			checkRecords(t, l, 0, 5)
		})
	}
}

// TestRetentionWhileReading runs background retention against concurrent
// appends and readers: a reader may find its offset gone (out of range),
// never anything else, and the log stays consistent.
func TestRetentionWhileReading(t *testing.T) {
	cfg := testConfig(SyncNeverUnsafe)
	cfg.Retention = Retention{MaxSegments: 3}
	cfg.RetentionCheckInterval = time.Millisecond
	cfg.MaxOpenSegments = 2
	l := openLog(t, t.TempDir(), cfg)
	defer l.Close()
	stop := make(chan struct{})
	errc := make(chan error, 2)
	var wg sync.WaitGroup
	for r := range 2 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := uint64(0); ; i++ {
				select {
				case <-stop:
					errc <- nil
					return
				default:
				}
				off := l.LowestOffset() + i%7
				var err error
				if r == 0 {
					_, err = l.Read(off)
				} else {
					_, err = l.ReadBatch(off, 50, 4<<10)
				}
				if err != nil && !errors.Is(err, ErrOffsetOutOfRange) {
					errc <- err
					return
				}
			}
		}()
	}
	appendN(t, l, 0, 3000)
	close(stop)
	wg.Wait()
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatalf("reader: %v", err)
		}
	}
	must(t, l.ApplyRetention())
	if info, _ := l.Info(); info.Segments > 3 {
		t.Fatalf("%d segments after retention, want at most 3", info.Segments)
	}
	low := int(l.LowestOffset())
	checkRecords(t, l, low, 3000-low)
}
