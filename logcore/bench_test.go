package logcore

import (
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

func benchConfig(policy SyncPolicy) Config {
	cfg := DefaultConfig()
	cfg.Sync = policy
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return cfg
}

// reportRate reports records/s over the benchmark's elapsed time.
func reportRate(b *testing.B, records int, start time.Time) {
	b.ReportMetric(float64(records)/time.Since(start).Seconds(), "records/s")
}

// BenchmarkAppend appends b.N records of 100 B or 1 KiB from 1, 4 or 64
// goroutines, with each sync policy. MB/s counts record values.
func BenchmarkAppend(b *testing.B) {
	for _, policy := range []SyncPolicy{SyncNeverUnsafe, SyncAlways} {
		for _, size := range []int{100, 1024} {
			for _, appenders := range []int{1, 4, 64} {
				name := fmt.Sprintf("%s/%dB/appenders=%d", policy, size, appenders)
				b.Run(name, func(b *testing.B) { benchAppend(b, policy, size, appenders, -1) })
			}
		}
	}
	// The same durable appends without pre-written store space, to compare
	// in one run (the disk's speed drifts between runs).
	for _, appenders := range []int{1, 64} {
		name := fmt.Sprintf("always/100B/appenders=%d/no-prewrite", appenders)
		b.Run(name, func(b *testing.B) { benchAppend(b, SyncAlways, 100, appenders, 0) })
	}
}

// benchAppend appends b.N records of size bytes from appenders goroutines;
// prewrite sets Config.PrewriteBytes unless it is negative.
func benchAppend(b *testing.B, policy SyncPolicy, size, appenders int, prewrite int64) {
	cfg := benchConfig(policy)
	if prewrite >= 0 {
		cfg.PrewriteBytes = prewrite
	}
	var syncNanos atomic.Int64
	cfg.OnSync = func(d time.Duration, _ error) { syncNanos.Add(int64(d)) }
	l, err := Open(b.TempDir(), cfg)
	if err != nil {
		b.Fatal(err)
	}
	defer l.Close()
	value := make([]byte, size)
	b.SetBytes(int64(size))
	b.ReportAllocs()
	var left atomic.Int64
	left.Store(int64(b.N))
	var wg sync.WaitGroup
	b.ResetTimer()
	start := time.Now()
	for range appenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for left.Add(-1) >= 0 {
				if _, err := l.Append(Record{Value: value, Time: 1}); err != nil {
					b.Error(err)
					return
				}
			}
		}()
	}
	wg.Wait()
	reportRate(b, b.N, start)
	b.StopTimer()
	syncs := l.Stats().Syncs
	b.ReportMetric(float64(syncs)/float64(b.N), "fsyncs/record")
	if syncs > 0 {
		b.ReportMetric(float64(syncNanos.Load())/float64(syncs)/1e3, "µs/fsync")
	}
}

// BenchmarkAppendBatch appends batches of 100 records of 100 B, one
// goroutine, one fsync per batch with SyncAlways.
func BenchmarkAppendBatch(b *testing.B) {
	for _, policy := range []SyncPolicy{SyncNeverUnsafe, SyncAlways} {
		b.Run(policy.String(), func(b *testing.B) {
			l, err := Open(b.TempDir(), benchConfig(policy))
			if err != nil {
				b.Fatal(err)
			}
			defer l.Close()
			batch := make([]Record, 100)
			for i := range batch {
				batch[i] = Record{Value: make([]byte, 100), Time: 1}
			}
			b.SetBytes(100 * 100)
			b.ResetTimer()
			start := time.Now()
			for range b.N {
				if _, err := l.AppendBatch(batch); err != nil {
					b.Fatal(err)
				}
			}
			reportRate(b, b.N*len(batch), start)
		})
	}
}

// readLog returns a log of n records of 100 B, shared by the read benchmarks.
func readLog(b *testing.B, n int) *Log {
	dir := b.TempDir()
	l, err := Open(dir, benchConfig(SyncNeverUnsafe))
	if err != nil {
		b.Fatal(err)
	}
	batch := make([]Record, 1000)
	for i := range batch {
		batch[i] = Record{Value: make([]byte, 100), Time: 1}
	}
	for range n / len(batch) {
		if _, err := l.AppendBatch(batch); err != nil {
			b.Fatal(err)
		}
	}
	if err := l.Sync(); err != nil {
		b.Fatal(err)
	}
	return l
}

// BenchmarkRead reads 100 B records in order: one Read per record, or
// ReadBatch of up to 1000 records (1 MiB).
func BenchmarkRead(b *testing.B) {
	const n = 1_000_000
	b.Run("one-by-one", func(b *testing.B) {
		l := readLog(b, n)
		defer l.Close()
		b.SetBytes(100)
		b.ResetTimer()
		start := time.Now()
		for i := range b.N {
			if _, err := l.Read(uint64(i % n)); err != nil {
				b.Fatal(err)
			}
		}
		reportRate(b, b.N, start)
	})
	b.Run("batched", func(b *testing.B) {
		l := readLog(b, n)
		defer l.Close()
		b.SetBytes(100)
		b.ResetTimer()
		start := time.Now()
		var off uint64
		for read := 0; read < b.N; {
			recs, err := l.ReadBatch(off, min(1000, b.N-read), 1<<20)
			if err != nil {
				b.Fatal(err)
			}
			read += len(recs)
			off = (off + uint64(len(recs))) % n
		}
		reportRate(b, b.N, start)
	})
}

// BenchmarkReopen opens a 1 GiB log (NATLOG_BENCH_REOPEN_BYTES to change it)
// after a clean close, and after a crash (the active segment's index left
// pre-allocated, as a crash leaves it, so its store is scanned).
func BenchmarkReopen(b *testing.B) {
	size := int64(1 << 30)
	if s := os.Getenv("NATLOG_BENCH_REOPEN_BYTES"); s != "" {
		fmt.Sscan(s, &size)
	}
	dir := b.TempDir()
	cfg := benchConfig(SyncNeverUnsafe)
	l, err := Open(dir, cfg)
	if err != nil {
		b.Fatal(err)
	}
	batch := make([]Record, 1000)
	for i := range batch {
		batch[i] = Record{Value: make([]byte, 1000), Time: 1}
	}
	for written := int64(0); written < size; written += 1000 * 1000 {
		if _, err := l.AppendBatch(batch); err != nil {
			b.Fatal(err)
		}
	}
	// Leave the active segment about half full: the crash case scans it.
	info, _ := l.Info()
	if err := l.Close(); err != nil {
		b.Fatal(err)
	}
	b.Logf("log of %d MiB in %d segments, %d records", info.Bytes>>20, info.Segments, info.Records)
	names, _ := filepath.Glob(filepath.Join(dir, "*"+indexExt))
	active := names[len(names)-1]
	for _, crashed := range []bool{false, true} {
		name := "clean"
		if crashed {
			name = "after-crash"
		}
		b.Run(name, func(b *testing.B) {
			for range b.N {
				b.StopTimer()
				if crashed {
					if err := os.Truncate(active, cfg.MaxIndexBytes); err != nil {
						b.Fatal(err)
					}
				}
				b.StartTimer()
				l, err := Open(dir, cfg)
				if err != nil {
					b.Fatal(err)
				}
				if l.NextOffset() != info.NextOffset {
					b.Fatalf("reopened with %d records, want %d", l.NextOffset(), info.NextOffset)
				}
				b.StopTimer()
				if crashed != (l.Stats().Recoveries == 1) {
					b.Fatalf("recoveries = %d", l.Stats().Recoveries)
				}
				l.Close()
				b.StartTimer()
			}
		})
	}
}

// BenchmarkFsyncBaseline is the disk's own cost for a durable append: write
// 100 B to a file and fdatasync it, one at a time. SyncAlways appends from one
// goroutine cannot beat it; with many appenders, group commit shares it.
func BenchmarkFsyncBaseline(b *testing.B) {
	f, err := OSFS{}.OpenFile(filepath.Join(b.TempDir(), "f"), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	buf := make([]byte, 100)
	b.ResetTimer()
	start := time.Now()
	for range b.N {
		if _, err := f.Write(buf); err != nil {
			b.Fatal(err)
		}
		if err := f.Sync(); err != nil {
			b.Fatal(err)
		}
	}
	reportRate(b, b.N, start)
}
