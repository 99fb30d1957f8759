package logcore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"testing"
)

// testConfig returns a config with small segments for tests.
func testConfig(policy SyncPolicy) Config {
	c := DefaultConfig()
	c.Sync = policy
	c.MaxSegmentBytes = 4 << 10
	c.MaxIndexBytes = indexEntryWidth * 1024
	c.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return c
}

func openLog(t testing.TB, dir string, cfg Config) *Log {
	t.Helper()
	l, err := Open(dir, cfg)
	if err != nil {
		t.Fatalf("Open(%s): %v", dir, err)
	}
	t.Cleanup(func() { checkNoStoresInHoles(t, cfg.FS) })
	return l
}

// checkNoStoresInHoles fails the test if the log stored bytes through a
// mapping into a hole of a MemFS file (see MemFS.StoresInHoles).
func checkNoStoresInHoles(t testing.TB, fsys FS) {
	t.Helper()
	if f, ok := fsys.(*FaultFS); ok {
		fsys = f.Inner()
	}
	if m, ok := fsys.(*MemFS); ok {
		if bad := m.StoresInHoles(); len(bad) > 0 {
			t.Errorf("stores through a mapping into holes (SIGBUS on a full disk): %v", bad)
		}
	}
}

// testRecord returns the i-th record of a test: a value that says its index
// and one header on every third record.
func testRecord(i int) Record {
	r := Record{Value: fmt.Appendf(nil, "record-%06d-%s", i, bytes.Repeat([]byte{byte('a' + i%26)}, i%40))}
	if i%3 == 0 {
		r.Headers = []Header{{Key: "k", Value: fmt.Sprint(i)}, {Key: "k", Value: "again"}}
	}
	return r
}

func appendN(t testing.TB, l *Log, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		off, err := l.Append(testRecord(i))
		if err != nil {
			t.Fatalf("Append(%d): %v", i, err)
		}
		if want := l.cfg.InitialOffset + uint64(i); off != want {
			t.Fatalf("Append(%d) = offset %d, want %d", i, off, want)
		}
	}
}

// checkRecords reads offsets [from, from+n) and checks each is testRecord.
func checkRecords(t testing.TB, l *Log, from, n int) {
	t.Helper()
	for i := from; i < from+n; i++ {
		off := l.cfg.InitialOffset + uint64(i)
		got, err := l.Read(off)
		if err != nil {
			t.Fatalf("Read(%d): %v", off, err)
		}
		want := testRecord(i)
		if got.Offset != off || !bytes.Equal(got.Value, want.Value) || !headersEqual(got.Headers, want.Headers) || got.Time == 0 {
			t.Fatalf("Read(%d) = {%d %q %v t=%d}, want {%d %q %v}", off, got.Offset, got.Value, got.Headers, got.Time, off, want.Value, want.Headers)
		}
	}
}

func headersEqual(a, b []Header) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func mustOutOfRange(t testing.TB, err error) {
	t.Helper()
	if !errors.Is(err, ErrOffsetOutOfRange) {
		t.Fatalf("err = %v, want ErrOffsetOutOfRange", err)
	}
}
