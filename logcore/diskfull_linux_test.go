package logcore

import (
	"errors"
	"fmt"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// mountTmpfs mounts a tmpfs of size bytes on a new directory, unmounted when
// the test ends. It skips the test where mounting is not allowed (not
// root, no CAP_SYS_ADMIN).
func mountTmpfs(t *testing.T, size string) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size="+size); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v): a real full disk needs root", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}

// TestDiskFullReal fills a real (tmpfs) file system. Before index space
// was written ahead (index.reserve), the first store of an index entry
// into a page of the file that had no block yet killed the process with
// SIGBUS. Under SyncAlways every append on the full disk now fails with a
// definite error whatever the segment size and batch (a segment sealed on
// the full disk goes without its time index, rebuilt when needed), and the
// log takes appends again once there is room; under SyncNever the log may
// fail (a buffer that could not be written) and reopens. Either way every
// acknowledged record is there, and lookups by time find them.
func TestDiskFullReal(t *testing.T) {
	type run struct {
		policy  SyncPolicy
		segment int64
		batch   int
	}
	var runs []run
	for _, seg := range []int64{16 << 10, 64 << 10, 1 << 20, 64 << 20} {
		for _, batch := range []int{1, 7, 100} {
			runs = append(runs, run{SyncAlways, seg, batch})
		}
	}
	runs = append(runs, run{SyncNeverUnsafe, 64 << 20, 100})
	for _, r := range runs {
		t.Run(fmt.Sprintf("%v/segment=%d/batch=%d", r.policy, r.segment, r.batch), func(t *testing.T) {
			mnt := mountTmpfs(t, "2m")
			dir := filepath.Join(mnt, "log")
			cfg := DefaultConfig()
			cfg.Sync = r.policy
			cfg.MaxSegmentBytes = r.segment
			cfg.Logger = testConfig(r.policy).Logger
			l, err := Open(dir, cfg)
			if err != nil {
				t.Fatal(err)
			}
			acked, refused := 0, 0
			for refused < 5 {
				batch := make([]Record, r.batch)
				for j := range batch {
					batch[j] = testRecord(acked + j)
				}
				_, err = l.AppendBatch(batch)
				if err == nil && r.policy != SyncAlways {
					err = l.Sync()
				}
				if err == nil {
					acked += r.batch
					if acked > 1_000_000 {
						t.Fatal("2 MiB took a million records")
					}
					continue
				}
				if !errors.Is(err, unix.ENOSPC) {
					t.Fatalf("append on a full disk: %v, want ENOSPC", err)
				}
				if errors.Is(err, ErrFailed) {
					if r.policy == SyncAlways {
						t.Fatalf("append on a full disk = %v, want a definite error", err)
					}
					break
				}
				refused++
			}
			grow := func() {
				if err := unix.Mount("tmpfs", mnt, "tmpfs", unix.MS_REMOUNT, "size=16m"); err != nil {
					t.Fatalf("grow the tmpfs: %v", err)
				}
			}
			if r.policy == SyncAlways {
				// The same log goes on once there is room.
				grow()
				appendN(t, l, acked, 1000)
				acked += 1000
				must(t, l.Close())
			} else {
				l.Close() // may fail: the disk is full
				grow()
			}
			l, err = Open(dir, cfg)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			if n := l.NextOffset(); n < uint64(acked) {
				t.Fatalf("reopened with %d records, %d were acknowledged", n, acked)
			}
			checkRecords(t, l, 0, acked)
			for _, k := range []uint64{0, uint64(acked) / 3, uint64(acked) / 2, uint64(acked) - 1} {
				rec, err := l.Read(k)
				must(t, err)
				off, err := l.OffsetForTime(rec.Time)
				must(t, err)
				first, err := l.Read(off)
				must(t, err)
				if off > k || first.Time != rec.Time {
					t.Fatalf("OffsetForTime(time of %d) = %d (time %d), want the first record of time %d", k, off, first.Time, rec.Time)
				}
			}
		})
	}
}
