package logcore

import (
	"errors"
	"path/filepath"
	"syscall"
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

// TestDiskFullReal fills a real (tmpfs) file system with each sync policy.
// Before index space was written ahead (index.reserve), the first store
// of an index entry into a page of the file that had no block yet killed
// the process with SIGBUS. Now appends fail with ENOSPC: under SyncAlways
// a definite error, after which the log takes appends again once the file
// system has room; under SyncNever the log may have failed (a buffer that
// could not be written), and reopens. Either way every acknowledged record
// is there.
func TestDiskFullReal(t *testing.T) {
	for _, policy := range []SyncPolicy{SyncAlways, SyncNeverUnsafe} {
		t.Run(policy.String(), func(t *testing.T) {
			mnt := mountTmpfs(t, "2m")
			dir := filepath.Join(mnt, "log")
			cfg := DefaultConfig()
			cfg.Sync = policy
			cfg.Logger = testConfig(policy).Logger
			l, err := Open(dir, cfg)
			if err != nil {
				t.Fatal(err)
			}
			acked := 0
			for i := 0; ; i += 100 {
				batch := make([]Record, 100)
				for j := range batch {
					batch[j] = testRecord(i + j)
				}
				_, err = l.AppendBatch(batch)
				if err == nil && policy != SyncAlways {
					err = l.Sync()
				}
				if err != nil {
					if !errors.Is(err, syscall.ENOSPC) {
						t.Fatalf("append on a full disk: %v, want ENOSPC", err)
					}
					t.Logf("after %d records: %v", acked, err)
					break
				}
				acked = i + 100
				if acked > 1_000_000 {
					t.Fatal("2 MiB took a million records")
				}
			}
			grow := func() {
				if err := unix.Mount("tmpfs", mnt, "tmpfs", unix.MS_REMOUNT, "size=16m"); err != nil {
					t.Fatalf("grow the tmpfs: %v", err)
				}
			}
			if policy == SyncAlways {
				// The space was reserved before anything was
				// written: the error is definite and the same log
				// goes on once there is room.
				if errors.Is(err, ErrFailed) {
					t.Fatalf("append on a full disk = %v, want a definite error", err)
				}
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
			appendN(t, l, int(l.NextOffset()), 10)
		})
	}
}
