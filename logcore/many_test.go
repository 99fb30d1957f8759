package logcore

import (
	"os"
	"testing"
)

// openFDs counts this process's open file descriptors.
func openFDs(t *testing.T) int {
	entries, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Skipf("cannot count descriptors: %v", err)
	}
	return len(entries)
}

// TestTenThousandSegments: proglog's small segments exhaust file descriptors;
// here a log of 10,000 segments appends, reopens and reads with a bounded
// number of open files.
func TestTenThousandSegments(t *testing.T) {
	if testing.Short() {
		t.Skip("slow: 10,000 segment rolls")
	}
	const segments = 10_000
	dir := t.TempDir()
	cfg := testConfig(SyncNeverUnsafe)
	cfg.MaxIndexBytes = indexEntryWidth * 2 // two records per segment
	cfg.MaxOpenSegments = 16
	before := openFDs(t)
	l := openLog(t, dir, cfg)
	appendN(t, l, 0, 2*segments)
	if fds := openFDs(t) - before; fds > 3*cfg.MaxOpenSegments+10 {
		t.Fatalf("%d files open while appending, want a bound of about %d", fds, 3*cfg.MaxOpenSegments)
	}
	must(t, l.Close())

	l = openLog(t, dir, cfg)
	defer l.Close()
	info, err := l.Info()
	must(t, err)
	if info.Segments != segments {
		t.Fatalf("%d segments, want %d", info.Segments, segments)
	}
	checkRecords(t, l, 0, 2*segments)
	if fds := openFDs(t) - before; fds > 3*cfg.MaxOpenSegments+10 {
		t.Fatalf("%d files open after reading every segment, want a bound", fds)
	}
	appendN(t, l, 2*segments, 10)
	// Random access hops across cold segments.
	for _, i := range []int{19_999, 0, 10_001, 7, 15_555} {
		checkRecords(t, l, i, 1)
	}
}
