package logcore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"testing"
)

// FuzzDecodeFrame: any bytes decode to a record or an error, never a panic,
// and a frame that decodes re-encodes to the same bytes.
func FuzzDecodeFrame(f *testing.F) {
	f.Add(AppendFrame(nil, &Record{Offset: 7, Time: 42, Value: []byte("hello")}))
	f.Add(AppendFrame(nil, &Record{Offset: 1 << 40, Headers: []Header{{"a", "b"}, {"", ""}}}))
	f.Add([]byte{0, 0, 0, 17, 1, 2, 3, 4})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, data []byte) {
		rec, n, err := DecodeFrame(data)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, errTorn) {
				t.Fatalf("error %v is neither corrupt nor torn", err)
			}
			return
		}
		if n > len(data) {
			t.Fatalf("frame size %d beyond input %d", n, len(data))
		}
		if again := appendFrame(nil, &rec, frameContinuesBatch(data)); !bytes.Equal(again, data[:n]) {
			t.Fatalf("re-encoding differs:\n%x\n%x", again, data[:n])
		}
	})
}

// FuzzOpen opens a log directory whose active segment's store, index and
// time index hold arbitrary bytes: Open either fails with a clear error or
// yields a log whose every record reads back intact and that takes appends.
func FuzzOpen(f *testing.F) {
	// Seeds: a real segment, and damaged variants of it.
	mem := NewMemFS()
	cfg := fuzzConfig(mem)
	l, err := Open("/seed", cfg)
	if err != nil {
		f.Fatal(err)
	}
	for i := range 5 {
		if _, err := l.Append(testRecord(i)); err != nil {
			f.Fatal(err)
		}
	}
	l.Close()
	store, _ := mem.ReadFile("/seed/" + segmentName(0) + storeExt)
	index, _ := mem.ReadFile("/seed/" + segmentName(0) + indexExt)
	times, _ := mem.ReadFile("/seed/" + segmentName(0) + timeIndexExt)
	f.Add(store, index, times)
	f.Add(store[:len(store)-3], index, times)
	f.Add(store, index[:len(index)-1], []byte{1, 2, 3})
	f.Add(store, make([]byte, 120), times)
	f.Add([]byte{}, []byte{}, []byte{})
	f.Fuzz(func(t *testing.T, store, index, times []byte) {
		fs := NewMemFS()
		must(t, fs.MkdirAll("/d", 0o755))
		for name, b := range map[string][]byte{storeExt: store, indexExt: index, timeIndexExt: times} {
			must(t, fs.WriteFile("/d/"+segmentName(0)+name, b, true))
		}
		cfg := fuzzConfig(fs)
		l, err := Open("/d", cfg)
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrInvalidConfig) {
				t.Fatalf("Open failed with an unclassified error: %v", err)
			}
			return
		}
		defer l.Close()
		// A log that opened without a scan (its index looked like a
		// clean close) may still hold damaged frames: those read as
		// ErrCorrupt, never as data.
		n := l.NextOffset()
		for off := uint64(0); off < n; off++ {
			r, err := l.Read(off)
			if err != nil {
				if !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Read(%d): %v", off, err)
				}
				continue
			}
			if r.Offset != off {
				t.Fatalf("Read(%d) returned offset %d", off, r.Offset)
			}
		}
		if recs, err := l.ReadBatch(0, int(n)+1, 1<<30); err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("ReadBatch: %v", err)
		} else if err == nil && uint64(len(recs)) != n {
			t.Fatalf("read %d records, NextOffset %d", len(recs), n)
		}
		if _, err := l.Append(Record{Value: []byte("x")}); err != nil {
			t.Fatalf("Append after recovery: %v", err)
		}
		if got, err := l.Read(n); err != nil || string(got.Value) != "x" {
			t.Fatalf("Read back = %q, %v", got.Value, err)
		}
	})
}

func fuzzConfig(fs FS) Config {
	cfg := DefaultConfig()
	cfg.FS = fs
	cfg.MaxSegmentBytes = 1 << 20
	cfg.MaxIndexBytes = indexEntryWidth * 4096
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return cfg
}

// FuzzReadFrames: a snapshot stream of arbitrary bytes never panics and
// never yields a record that does not re-encode to its frame.
func FuzzReadFrames(f *testing.F) {
	var stream []byte
	for i := range 3 {
		r := testRecord(i)
		r.Offset = uint64(i)
		stream = AppendFrame(stream, &r)
	}
	f.Add(stream)
	f.Add(binary.BigEndian.AppendUint32(nil, 1<<31))
	f.Fuzz(func(t *testing.T, data []byte) {
		err := ReadFrames(bytes.NewReader(data), func(r Record) error {
			if FrameSize(&r) > len(data) {
				t.Fatalf("record larger than the stream")
			}
			return nil
		})
		if err != nil && !errors.Is(err, ErrCorrupt) {
			t.Fatalf("unclassified error %v", err)
		}
	})
}
