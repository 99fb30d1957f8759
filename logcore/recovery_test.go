package logcore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// recoveryFixture writes n records into a one-segment log in a fresh
// directory, closes it cleanly and returns the directory and the store
// positions of each record.
func recoveryFixture(t *testing.T, n int) (dir string, cfg Config, positions []int64) {
	t.Helper()
	dir = t.TempDir()
	cfg = testConfig(SyncAlways)
	cfg.MaxSegmentBytes = 1 << 20
	l := openLog(t, dir, cfg)
	appendN(t, l, 0, n)
	for i := 0; i < n; i++ {
		positions = append(positions, int64(l.active.idx.pos(uint32(i))))
	}
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	return dir, cfg, positions
}

func segFile(dir string, base uint64, ext string) string {
	return filepath.Join(dir, segmentName(base)+ext)
}

// checkSurvivors reopens dir and checks that exactly want records survive,
// each intact, and that the log takes appends after them.
func checkSurvivors(t *testing.T, dir string, cfg Config, want int) *Log {
	t.Helper()
	l := openLog(t, dir, cfg)
	if got := l.NextOffset(); got != uint64(want) {
		l.Close()
		t.Fatalf("NextOffset = %d after recovery, want %d", got, want)
	}
	checkRecords(t, l, 0, want)
	appendN(t, l, want, 2)
	checkRecords(t, l, 0, want+2)
	return l
}

// TestRecoveryTornLastRecord cuts or damages the store at every byte of the
// last record: recovery must keep exactly the records before it.
func TestRecoveryTornLastRecord(t *testing.T) {
	const n = 5
	_, _, positions := recoveryFixture(t, n)
	last := positions[n-1]
	frame := FrameSize(&Record{Value: testRecord(n - 1).Value, Headers: testRecord(n - 1).Headers})
	end := last + int64(frame)
	for p := last; p < end; p++ {
		t.Run("truncate at "+itoa(p-last), func(t *testing.T) {
			dir, cfg, _ := recoveryFixture(t, n)
			if err := os.Truncate(segFile(dir, 0, storeExt), p); err != nil {
				t.Fatal(err)
			}
			b, err := os.ReadFile(segFile(dir, 0, storeExt))
			if err != nil {
				t.Fatal(err)
			}
			// A cut part of zeros only is no record (as space written
			// ahead is not): trimmed, not counted.
			written := slices.ContainsFunc(b[last:p], func(c byte) bool { return c != 0 })
			l := checkSurvivors(t, dir, cfg, n-1)
			defer l.Close()
			if got := l.Stats().TornTails; written && got != 1 || !written && got != 0 {
				t.Fatalf("torn tails %d for a cut part with written bytes %v: %+v", got, written, l.Stats())
			}
		})
		t.Run("corrupt at "+itoa(p-last), func(t *testing.T) {
			dir, cfg, _ := recoveryFixture(t, n)
			flipByte(t, segFile(dir, 0, storeExt), p)
			l := checkSurvivors(t, dir, cfg, n-1)
			defer l.Close()
			if l.Stats().TornTails != 1 {
				t.Fatalf("torn tail not counted: %+v", l.Stats())
			}
		})
	}
}

// TestRecoveryIndexDamage damages the index (or the store's end) in the ways
// a crash or a bad disk can: the index is rebuilt from the store.
func TestRecoveryIndexDamage(t *testing.T) {
	const n = 40
	cases := []struct {
		name   string
		damage func(t *testing.T, dir string, cfg Config, positions []int64)
		want   int
	}{
		{"zeroed pre-allocated tail", func(t *testing.T, dir string, cfg Config, _ []int64) {
			must(t, os.Truncate(segFile(dir, 0, indexExt), cfg.MaxIndexBytes))
		}, n},
		{"index of odd length", func(t *testing.T, dir string, _ Config, _ []int64) {
			must(t, os.Truncate(segFile(dir, 0, indexExt), n*indexEntryWidth-5))
		}, n},
		{"missing index", func(t *testing.T, dir string, _ Config, _ []int64) {
			must(t, os.Remove(segFile(dir, 0, indexExt)))
		}, n},
		{"empty index", func(t *testing.T, dir string, _ Config, _ []int64) {
			must(t, os.Truncate(segFile(dir, 0, indexExt), 0))
		}, n},
		{"index ahead of store", func(t *testing.T, dir string, _ Config, pos []int64) {
			must(t, os.Truncate(segFile(dir, 0, storeExt), pos[n-3]))
		}, n - 3},
		{"store ahead of index", func(t *testing.T, dir string, _ Config, _ []int64) {
			must(t, os.Truncate(segFile(dir, 0, indexExt), (n-3)*indexEntryWidth))
		}, n},
		{"garbage index", func(t *testing.T, dir string, _ Config, _ []int64) {
			must(t, os.WriteFile(segFile(dir, 0, indexExt), bytes.Repeat([]byte{0xA5}, n*indexEntryWidth), 0o644))
		}, n},
		{"garbage time index", func(t *testing.T, dir string, _ Config, _ []int64) {
			must(t, os.WriteFile(segFile(dir, 0, timeIndexExt), bytes.Repeat([]byte{0x5A}, 7), 0o644))
		}, n},
		{"zeroes after the store", func(t *testing.T, dir string, _ Config, pos []int64) {
			f, err := os.OpenFile(segFile(dir, 0, storeExt), os.O_WRONLY|os.O_APPEND, 0)
			must(t, err)
			_, err = f.Write(make([]byte, 5000))
			must(t, err)
			must(t, f.Close())
		}, n},
		{"half a frame header after the store", func(t *testing.T, dir string, _ Config, _ []int64) {
			f, err := os.OpenFile(segFile(dir, 0, storeExt), os.O_WRONLY|os.O_APPEND, 0)
			must(t, err)
			_, err = f.Write([]byte{0, 0, 1})
			must(t, err)
			must(t, f.Close())
		}, n},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dir, cfg, positions := recoveryFixture(t, n)
			tc.damage(t, dir, cfg, positions)
			l := checkSurvivors(t, dir, cfg, tc.want)
			l.Close()
			// And a clean reopen after the repair needs no scan.
			l = openLog(t, dir, cfg)
			defer l.Close()
			if st := l.Stats(); st.Recoveries != 0 {
				t.Fatalf("second reopen scanned again: %+v", st)
			}
			checkRecords(t, l, 0, tc.want+2)
		})
	}
}

// TestCorruptionBeforeTheTail checks that a damaged record followed by
// intact ones is never dropped silently: after a crash, Open refuses with
// ErrCorrupt; after a clean close, reads of that record fail with ErrCorrupt
// and the others still read.
func TestCorruptionBeforeTheTail(t *testing.T) {
	const n = 10
	t.Run("after a crash Open fails", func(t *testing.T) {
		dir, cfg, positions := recoveryFixture(t, n)
		must(t, os.Truncate(segFile(dir, 0, indexExt), cfg.MaxIndexBytes)) // as a crash leaves it
		flipByte(t, segFile(dir, 0, storeExt), positions[4]+frameHeaderSize+3)
		_, err := Open(dir, cfg)
		if !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Open = %v, want ErrCorrupt", err)
		}
		// Nothing was cut: the intact records are all still in the file.
		fi, err := os.Stat(segFile(dir, 0, storeExt))
		must(t, err)
		if fi.Size() <= positions[n-1] {
			t.Fatal("Open cut records after the damage")
		}
	})
	t.Run("after a clean close the read fails", func(t *testing.T) {
		dir, cfg, positions := recoveryFixture(t, n)
		flipByte(t, segFile(dir, 0, storeExt), positions[4]+frameHeaderSize+20)
		l := openLog(t, dir, cfg)
		defer l.Close()
		if _, err := l.Read(4); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Read(4) = %v, want ErrCorrupt", err)
		}
		if _, err := l.ReadBatch(0, n, 1<<20); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("ReadBatch over it = %v, want ErrCorrupt", err)
		}
		checkRecords(t, l, 0, 4)
		checkRecords(t, l, 5, n-5)
	})
	t.Run("a sealed segment's damaged record", func(t *testing.T) {
		dir := t.TempDir()
		cfg := testConfig(SyncAlways)
		l := openLog(t, dir, cfg)
		appendN(t, l, 0, 300)
		pos := int64(l.segs[0].idx.pos(7))
		must(t, l.Close())
		flipByte(t, segFile(dir, 0, storeExt), pos+frameHeaderSize+1)
		l = openLog(t, dir, cfg)
		defer l.Close()
		if _, err := l.Read(7); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("Read(7) = %v, want ErrCorrupt", err)
		}
		checkRecords(t, l, 8, 292)
	})
}

func TestSealedSegmentIndexRebuiltLazily(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(SyncAlways)
	l := openLog(t, dir, cfg)
	appendN(t, l, 0, 300)
	must(t, l.Close())
	must(t, os.Remove(segFile(dir, 0, indexExt)))
	must(t, os.WriteFile(segFile(dir, 0, timeIndexExt), []byte("junk"), 0o644))
	l = openLog(t, dir, cfg)
	defer l.Close()
	checkRecords(t, l, 0, 300)
	if st := l.Stats(); st.IndexRebuilds != 1 {
		t.Fatalf("IndexRebuilds = %d, want 1", st.IndexRebuilds)
	}
	if off, err := l.OffsetForTime(0); err != nil || off != 0 {
		t.Fatalf("OffsetForTime after a junk time index = %d, %v", off, err)
	}
}

func TestOrphanIndexRemoved(t *testing.T) {
	dir, cfg, _ := recoveryFixture(t, 3)
	must(t, os.WriteFile(segFile(dir, 1000, indexExt), make([]byte, 24), 0o644))
	must(t, os.WriteFile(filepath.Join(dir, "README"), []byte("not ours"), 0o644))
	l := checkSurvivors(t, dir, cfg, 3)
	defer l.Close()
	if _, err := os.Stat(segFile(dir, 1000, indexExt)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("orphan index still there: %v", err)
	}
}

func flipByte(t *testing.T, name string, at int64) {
	t.Helper()
	f, err := os.OpenFile(name, os.O_RDWR, 0)
	must(t, err)
	defer f.Close()
	b := make([]byte, 1)
	_, err = f.ReadAt(b, at)
	must(t, err)
	b[0] ^= 0xFF
	_, err = f.WriteAt(b, at)
	must(t, err)
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func itoa(n int64) string { return string(appendInt(nil, n)) }

func appendInt(b []byte, n int64) []byte {
	if n >= 10 {
		b = appendInt(b, n/10)
	}
	return append(b, byte('0'+n%10))
}

// TestSealedSegmentDamage damages sealed segments, which Open does not read:
// the first read notices, rebuilds what it can from the store and reports
// what it cannot as ErrCorrupt; nothing panics.
func TestSealedSegmentDamage(t *testing.T) {
	setup := func(t *testing.T) (string, Config, *Log) {
		dir := t.TempDir()
		cfg := testConfig(SyncAlways)
		l := openLog(t, dir, cfg)
		appendN(t, l, 0, 300)
		return dir, cfg, l
	}
	t.Run("garbage in the middle of the index", func(t *testing.T) {
		dir, cfg, l := setup(t)
		must(t, l.Close())
		f, err := os.OpenFile(segFile(dir, 0, indexExt), os.O_RDWR, 0)
		must(t, err)
		_, err = f.WriteAt(bytes.Repeat([]byte{0xEE}, 30), 5*indexEntryWidth)
		must(t, err)
		must(t, f.Close())
		l = openLog(t, dir, cfg)
		defer l.Close()
		checkRecords(t, l, 0, 300)
		if l.Stats().IndexRebuilds != 1 {
			t.Fatalf("IndexRebuilds = %d, want 1", l.Stats().IndexRebuilds)
		}
	})
	t.Run("store cut short", func(t *testing.T) {
		dir, cfg, l := setup(t)
		l.segsMu.RLock()
		second := l.segs[1].base
		pos := int64(l.segs[0].idx.pos(uint32(second - 3)))
		l.segsMu.RUnlock()
		must(t, l.Close())
		must(t, os.Truncate(segFile(dir, 0, storeExt), pos))
		must(t, os.Remove(segFile(dir, 0, indexExt)))
		l = openLog(t, dir, cfg)
		defer l.Close()
		checkRecords(t, l, 0, int(second)-3)
		for off := second - 3; off < second; off++ {
			if _, err := l.Read(off); !errors.Is(err, ErrCorrupt) {
				t.Fatalf("Read(%d) of a lost record = %v, want ErrCorrupt", off, err)
			}
		}
		if _, err := l.ReadBatch(second-4, 10, 1<<20); !errors.Is(err, ErrCorrupt) {
			t.Fatalf("ReadBatch across the loss = %v, want ErrCorrupt", err)
		}
		checkRecords(t, l, int(second), 300-int(second))
	})
}

// TestRecoveryCutsAPartialBatch: a batch whose last frame is missing after
// a crash is cut whole, wherever inside it the store ends.
func TestRecoveryCutsAPartialBatch(t *testing.T) {
	const before, batch = 4, 5
	write := func(t *testing.T) (string, Config, []int64, int64) {
		dir := t.TempDir()
		cfg := testConfig(SyncAlways)
		cfg.MaxSegmentBytes = 1 << 20
		l := openLog(t, dir, cfg)
		appendN(t, l, 0, before)
		recs := make([]Record, batch)
		for i := range recs {
			recs[i] = testRecord(before + i)
		}
		first, err := l.AppendBatch(recs)
		must(t, err)
		if first != before {
			t.Fatalf("batch at %d, want %d", first, before)
		}
		var pos []int64
		for i := range before + batch {
			pos = append(pos, int64(l.active.idx.pos(uint32(i))))
		}
		end := l.active.size
		must(t, l.Close())
		return dir, cfg, pos, end
	}
	_, _, pos, end := write(t)
	for cut := pos[before] + 1; cut < end; cut += 7 {
		t.Run("store ends at "+itoa(cut), func(t *testing.T) {
			dir, cfg, _, _ := write(t)
			must(t, os.Truncate(segFile(dir, 0, storeExt), cut))
			l := checkSurvivors(t, dir, cfg, before)
			l.Close()
		})
	}
	t.Run("whole batch kept", func(t *testing.T) {
		dir, cfg, _, _ := write(t)
		must(t, os.Truncate(segFile(dir, 0, indexExt), cfg.MaxIndexBytes)) // as a crash leaves it
		l := checkSurvivors(t, dir, cfg, before+batch)
		l.Close()
	})
}

// TestBatchStaysInOneSegment: a batch that does not fit in the active
// segment starts a new one, and no segment ends inside a batch.
func TestBatchStaysInOneSegment(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(SyncAlways)
	l := openLog(t, dir, cfg)
	defer l.Close()
	for b := 0; b < 40; b++ {
		recs := make([]Record, 1+b%7)
		for i := range recs {
			recs[i] = Record{Value: bytes.Repeat([]byte{'v'}, 50+b*13%200)}
		}
		first, err := l.AppendBatch(recs)
		must(t, err)
		l.segsMu.RLock()
		for _, s := range l.segs[1:] {
			if s.base > first && s.base < first+uint64(len(recs)) {
				t.Fatalf("segment %d starts inside batch [%d, %d)", s.base, first, first+uint64(len(recs)))
			}
		}
		l.segsMu.RUnlock()
	}
	// A batch larger than a segment still goes in, across segments.
	big := make([]Record, 60)
	for i := range big {
		big[i] = Record{Value: bytes.Repeat([]byte{'b'}, 100)}
	}
	if _, err := l.AppendBatch(big); err != nil {
		t.Fatalf("batch larger than a segment: %v", err)
	}
	must(t, l.Close())
	l2 := openLog(t, dir, cfg)
	defer l2.Close()
	recs, err := l2.ReadBatch(0, 1<<20, 1<<30)
	must(t, err)
	if uint64(len(recs)) != l2.NextOffset() {
		t.Fatalf("read %d of %d records", len(recs), l2.NextOffset())
	}
}

// TestPrewrittenZeros: the active store runs ahead of the data with zeros
// (Config.PrewriteBytes); a clean close cuts them, and recovery after a
// crash cuts them without losing an acknowledged record.
func TestPrewrittenZeros(t *testing.T) {
	fs := NewMemFS()
	cfg := testConfig(SyncAlways)
	cfg.FS = fs
	cfg.MaxSegmentBytes = 1 << 20
	cfg.PrewriteBytes = 64 << 10
	store := "/d/" + segmentName(0) + storeExt
	l := openLog(t, "/d", cfg)
	appendN(t, l, 0, 50)
	dataEnd := l.active.size
	if n, _ := fs.Size(store); n <= dataEnd {
		t.Fatalf("store is %d bytes, data %d: nothing prewritten", n, dataEnd)
	}
	must(t, l.Close())
	if n, _ := fs.Size(store); n != dataEnd {
		t.Fatalf("after a clean close the store is %d bytes, want the data's %d", n, dataEnd)
	}
	l = openLog(t, "/d", cfg)
	if l.Stats().Recoveries != 0 {
		t.Fatal("clean reopen scanned")
	}
	appendN(t, l, 50, 50)
	l.mu.Lock()
	fs.Crash(CrashOptions{})
	l.mu.Unlock()
	l.Close()
	l = checkSurvivors(t, "/d", cfg, 100)
	defer l.Close()
}

// A clean close that could not write the time index (a seal on a full disk
// cuts it to nothing) must not be trusted as complete: Open rebuilds it,
// and lookups by time still see the records before the reopen (found by a
// reviewing helper: OffsetForTime skipped the newest old record once a
// later record had an older time, as after a change of leader).
func TestEmptyTimeIndexAfterCleanCloseIsRebuilt(t *testing.T) {
	dir := t.TempDir()
	cfg := DefaultConfig()
	cfg.Logger = testConfig(SyncAlways).Logger
	l := openLog(t, dir, cfg)
	for _, ts := range []int64{100, 200, 300} {
		_, err := l.Append(Record{Time: ts, Value: []byte("x")})
		must(t, err)
	}
	must(t, l.Close())
	must(t, os.Truncate(filepath.Join(dir, "00000000000000000000.timeindex"), 0))
	l = openLog(t, dir, cfg)
	defer l.Close()
	_, err := l.Append(Record{Time: 150, Value: make([]byte, 70<<10)}) // a clock behind
	must(t, err)
	got, err := l.OffsetForTime(250)
	must(t, err)
	if got != 2 {
		t.Fatalf("OffsetForTime(250) = %d, want 2 (the record at time 300)", got)
	}
}

// TestRecoveryTrimsSpaceWrittenAhead: a log killed while open (its files
// as the kernel holds them, copied before any Close) ends its store with
// the zeros written ahead of appends. Recovery trims them without
// counting (or logging as a warning) a torn tail: nothing was torn.
func TestRecoveryTrimsSpaceWrittenAhead(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(SyncAlways)
	l := openLog(t, dir, cfg)
	appendN(t, l, 0, 5)
	killed := t.TempDir()
	if err := os.CopyFS(killed, os.DirFS(dir)); err != nil {
		t.Fatal(err)
	}
	l.Close()
	os.Remove(filepath.Join(killed, "LOCK"))
	st, err := os.Stat(segFile(killed, 0, storeExt))
	if err != nil {
		t.Fatal(err)
	}
	k := openLog(t, killed, cfg)
	defer k.Close()
	checkRecords(t, k, 0, 5)
	s := k.Stats()
	if s.Recoveries != 1 || s.TornTails != 0 {
		t.Fatalf("after a kill with %d bytes in the store: %+v, want one recovery and no torn tail", st.Size(), s)
	}
	if after, _ := os.Stat(segFile(killed, 0, storeExt)); after.Size() >= st.Size() {
		t.Fatalf("store of %d bytes kept at %d: the space written ahead was not trimmed", st.Size(), after.Size())
	}
}
