package logcore

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"math/rand/v2"
	"os"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
)

func mfsMust(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// mfsRun runs a script of ";"-separated steps on m, failing t on any error.
// P is a path, S data (no spaces), N a number; a final "sync" syncs the file
// (for writefile: makes it durable with its entry) before it is closed:
//
//	mkdir P | syncdir P | remove P | removeall P | rename P P2
//	create P | opentrunc P     open with O_CREATE (and O_TRUNC), close
//	append P S | writeat P N S | truncate P N
//	mapwrite P N S             store S at N through a mapping of the file
//	writefile P S              MemFS.WriteFile
func mfsRun(t *testing.T, m *MemFS, script string) {
	t.Helper()
	for _, step := range strings.Split(script, ";") {
		a := strings.Fields(step)
		if len(a) == 0 {
			continue
		}
		sync := len(a) > 2 && a[len(a)-1] == "sync"
		if sync {
			a = a[:len(a)-1]
		}
		var err error
		switch a[0] {
		case "mkdir":
			err = m.MkdirAll(a[1], 0o755)
		case "syncdir":
			err = m.SyncDir(a[1])
		case "remove":
			err = m.Remove(a[1])
		case "removeall":
			err = m.RemoveAll(a[1])
		case "rename":
			err = m.Rename(a[1], a[2])
		case "writefile":
			err = m.WriteFile(a[1], []byte(a[2]), sync)
		default:
			err = mfsFileStep(m, a, sync)
		}
		if err != nil {
			t.Fatalf("step %q: %v", step, err)
		}
	}
}

// mfsFileStep runs one of mfsRun's steps that open a file.
func mfsFileStep(m *MemFS, a []string, sync bool) error {
	flag := os.O_RDWR | os.O_CREATE
	if a[0] == "opentrunc" {
		flag |= os.O_TRUNC
	}
	f, err := m.OpenFile(a[1], flag, 0o644)
	if err != nil {
		return err
	}
	var n int64
	if len(a) > 2 && a[0] != "append" {
		if n, err = strconv.ParseInt(a[2], 10, 64); err != nil {
			return err
		}
	}
	switch a[0] {
	case "create", "opentrunc":
	case "append":
		if _, err = f.Seek(0, io.SeekEnd); err == nil {
			err = mfsW(f, a[2])
		}
	case "writeat":
		_, err = f.WriteAt([]byte(a[3]), n)
	case "truncate":
		err = f.Truncate(n)
	case "mapwrite":
		var size int64
		var b []byte
		if size, err = f.Size(); err == nil {
			if b, err = f.Map(int(size)); err == nil {
				copy(b[n:], a[3])
				err = f.Unmap(b) // the stores stay dirty in the file, as with munmap
			}
		}
	default:
		err = fmt.Errorf("unknown step %q", a[0])
	}
	if err == nil && sync {
		err = f.Sync()
	}
	return errors.Join(err, f.Close())
}

// mfsSnapshot returns every file and directory (with a trailing "/" and value
// "") in m, by path relative to the root.
func mfsSnapshot(t *testing.T, m *MemFS) map[string]string {
	t.Helper()
	out := map[string]string{}
	var walk func(dir string)
	walk = func(dir string) {
		names, err := m.ReadDir(dir)
		mfsMust(t, err)
		for _, n := range names {
			p := path.Join(dir, n)
			data, err := m.ReadFile(p)
			if errors.Is(err, syscall.EISDIR) {
				out[strings.TrimPrefix(p, "/")+"/"] = ""
				walk(p)
				continue
			}
			mfsMust(t, err)
			out[strings.TrimPrefix(p, "/")] = string(data)
		}
	}
	walk("/")
	return out
}

// mfsParseWant parses "dir/ file=contents ..." in mfsSnapshot's form.
func mfsParseWant(s string) map[string]string {
	out := map[string]string{}
	for _, f := range strings.Fields(s) {
		k, v, _ := strings.Cut(f, "=")
		out[k] = v
	}
	return out
}

func TestMemFSCrash(t *testing.T) {
	keepAll := CrashOptions{KeepUnsyncedPrefix: true, ZeroUnsyncedTail: true}
	tests := []struct {
		name, steps string // each case starts with "mkdir /d"
		opts        CrashOptions
		want        string // see mfsParseWant
	}{
		{"empty dir survives (MkdirAll is durable)", "", CrashOptions{}, "d/"},
		{"nested MkdirAll is durable", "mkdir /d/e/f", CrashOptions{}, "d/ d/e/ d/e/f/"},
		{"unsynced data lost", "create /d/f; syncdir /d; append /d/f abc", CrashOptions{}, "d/ d/f="},
		{"synced data kept", "append /d/f abc sync; syncdir /d", CrashOptions{}, "d/ d/f=abc"},
		{"only synced part kept", "append /d/f abc sync; syncdir /d; append /d/f def", CrashOptions{}, "d/ d/f=abc"},
		{"SyncDir before data sync keeps entry, not data", "append /d/f abc; syncdir /d", CrashOptions{}, "d/ d/f="},
		{"file created without SyncDir vanishes", "append /d/f abc sync", CrashOptions{}, "d/"},
		{"SyncDir of other dirs does not help", "mkdir /e; append /d/f abc sync; syncdir /e; syncdir /",
			CrashOptions{}, "d/ e/"},
		{"removed file without SyncDir reappears", "append /d/f abc sync; syncdir /d; remove /d/f",
			CrashOptions{}, "d/ d/f=abc"},
		{"removed file with SyncDir stays removed", "append /d/f abc sync; syncdir /d; remove /d/f; syncdir /d",
			CrashOptions{}, "d/"},
		{"recreated file without SyncDir brings back old inode",
			"append /d/f old sync; syncdir /d; remove /d/f; append /d/f new sync", CrashOptions{}, "d/ d/f=old"},
		{"rename without SyncDir reverts", "append /d/a x sync; syncdir /d; rename /d/a /d/b",
			CrashOptions{}, "d/ d/a=x"},
		{"rename with SyncDir is durable", "append /d/a x sync; syncdir /d; rename /d/a /d/b; syncdir /d",
			CrashOptions{}, "d/ d/b=x"},
		{"rename over existing without SyncDir keeps both",
			"append /d/a new sync; append /d/b old sync; syncdir /d; rename /d/a /d/b",
			CrashOptions{}, "d/ d/a=new d/b=old"},
		{"rename over existing with SyncDir replaces",
			"append /d/a new sync; append /d/b old sync; syncdir /d; rename /d/a /d/b; syncdir /d",
			CrashOptions{}, "d/ d/b=new"},
		{"rename across dirs syncing only target leaves both names",
			"mkdir /e; append /d/f x sync; syncdir /d; rename /d/f /e/f; syncdir /e", CrashOptions{}, "d/ d/f=x e/ e/f=x"},
		{"rename across dirs syncing only source loses the file",
			"mkdir /e; append /d/f x sync; syncdir /d; rename /d/f /e/f; syncdir /d", CrashOptions{}, "d/ e/"},
		{"unsynced truncate reverts", "append /d/f abcdef sync; syncdir /d; truncate /d/f 3",
			CrashOptions{}, "d/ d/f=abcdef"},
		{"synced truncate kept", "append /d/f abcdef sync; syncdir /d; truncate /d/f 3 sync",
			CrashOptions{}, "d/ d/f=abc"},
		{"synced truncate extends with zeros", "append /d/f ab sync; syncdir /d; truncate /d/f 4 sync",
			CrashOptions{}, "d/ d/f=ab\x00\x00"},
		{"unsynced overwrite reverts", "append /d/f abcdef sync; syncdir /d; writeat /d/f 2 XY",
			CrashOptions{}, "d/ d/f=abcdef"},
		{"synced overwrite kept", "append /d/f abcdef sync; syncdir /d; writeat /d/f 2 XY sync",
			CrashOptions{}, "d/ d/f=abXYef"},
		{"O_TRUNC without sync reverts", "append /d/f abc sync; syncdir /d; opentrunc /d/f",
			CrashOptions{}, "d/ d/f=abc"},
		{"map writes lost without sync", "truncate /d/f 5 sync; syncdir /d; mapwrite /d/f 1 abc",
			CrashOptions{}, "d/ d/f=\x00\x00\x00\x00\x00"},
		{"map writes kept with sync", "truncate /d/f 5 sync; syncdir /d; mapwrite /d/f 1 abc sync",
			CrashOptions{}, "d/ d/f=\x00abc\x00"},
		{"RemoveAll without SyncDir reverts", "mkdir /d/e; append /d/e/f x sync; syncdir /d/e; removeall /d/e",
			CrashOptions{}, "d/ d/e/ d/e/f=x"},
		{"RemoveAll with parent SyncDir is durable",
			"mkdir /d/e; append /d/e/f x sync; syncdir /d/e; removeall /d/e; syncdir /d", CrashOptions{}, "d/"},
		{"RemoveAll then MkdirAll gives an empty dir",
			"mkdir /d/e; append /d/e/f x sync; syncdir /d/e; removeall /d/e; mkdir /d/e", CrashOptions{}, "d/ d/e/"},
		{"WriteFile synced survives", "writefile /d/f abc sync", CrashOptions{}, "d/ d/f=abc"},
		{"WriteFile unsynced new file vanishes", "writefile /d/f abc", CrashOptions{}, "d/"},
		{"WriteFile unsynced damage reverts", "writefile /d/f abc sync; writefile /d/f XYZW",
			CrashOptions{}, "d/ d/f=abc"},
		{"unsynced tail options never keep overwrites", "append /d/f abc sync; syncdir /d; writeat /d/f 0 XYZ",
			keepAll, "d/ d/f=abc"},
		{"unsynced tail options never keep truncation", "append /d/f abc sync; syncdir /d; truncate /d/f 1",
			keepAll, "d/ d/f=abc"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMemFS()
			mfsRun(t, m, "mkdir /d; "+tc.steps)
			m.Crash(tc.opts)
			want := mfsParseWant(tc.want)
			if got := mfsSnapshot(t, m); !maps.Equal(got, want) {
				t.Fatalf("after crash got %q, want %q", got, want)
			}
			// The survivors are durable now: a second crash changes nothing.
			m.Crash(CrashOptions{})
			if got := mfsSnapshot(t, m); !maps.Equal(got, want) {
				t.Fatalf("after second crash got %q, want %q", got, want)
			}
		})
	}
}

// TestMemFSCrashUnsyncedTail checks, over many seeds, what
// KeepUnsyncedPrefix and ZeroUnsyncedTail leave of a file with synced "abc"
// and unsynced "defghij".
func TestMemFSCrashUnsyncedTail(t *testing.T) {
	const synced, full = "abc", "abcdefghij"
	tests := []struct {
		name string
		opts CrashOptions
		// Every kept length in minKept..maxKept, and maxZeros, must be seen.
		minKept, maxKept, maxZeros int
	}{
		{"default loses the tail", CrashOptions{}, 3, 3, 0},
		{"KeepUnsyncedPrefix keeps a prefix", CrashOptions{KeepUnsyncedPrefix: true}, 3, 10, 0},
		{"ZeroUnsyncedTail yields zeros", CrashOptions{ZeroUnsyncedTail: true}, 3, 3, 7},
		{"both keep a prefix then zeros", CrashOptions{KeepUnsyncedPrefix: true, ZeroUnsyncedTail: true},
			3, 10, 7},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			seenKept := map[int]bool{}
			maxZeros := 0
			for seed := range int64(300) {
				opts := tc.opts
				opts.Seed = seed
				got := mfsCrashOnce(t, opts)
				kept, zeros, ok := mfsSplitKeptZeros(got)
				if !ok || kept < len(synced) || kept+zeros > len(full) {
					t.Fatalf("seed %d: got %q, not a prefix of %q (at least %q) then zeros", seed, got, full, synced)
				}
				if kept < tc.minKept || kept > tc.maxKept || zeros > tc.maxZeros {
					t.Fatalf("seed %d: got %q: kept %d zeros %d outside [%d,%d], <=%d",
						seed, got, kept, zeros, tc.minKept, tc.maxKept, tc.maxZeros)
				}
				seenKept[kept] = true
				maxZeros = max(maxZeros, zeros)
				if again := mfsCrashOnce(t, opts); again != got {
					t.Fatalf("seed %d not deterministic: %q then %q", seed, got, again)
				}
			}
			for k := tc.minKept; k <= tc.maxKept; k++ {
				if !seenKept[k] {
					t.Errorf("no seed kept exactly %d bytes (seen %v)", k, seenKept)
				}
			}
			if maxZeros != tc.maxZeros {
				t.Errorf("max zeros seen %d, want %d", maxZeros, tc.maxZeros)
			}
		})
	}
}

// mfsSplitKeptZeros parses got as a prefix of "abcdefghij" followed by zeros.
func mfsSplitKeptZeros(got string) (int, int, bool) {
	trimmed := strings.TrimRight(got, "\x00")
	if !strings.HasPrefix("abcdefghij", trimmed) {
		return 0, 0, false
	}
	return len(trimmed), len(got) - len(trimmed), true
}

// mfsCrashOnce writes synced "abc" and unsynced "defghij" to a file of a new
// MemFS, crashes with opts and returns what survives.
func mfsCrashOnce(t *testing.T, opts CrashOptions) string {
	t.Helper()
	m := NewMemFS()
	mfsRun(t, m, "mkdir /d; create /d/f; syncdir /d; append /d/f abc sync; append /d/f defghij")
	m.Crash(opts)
	got, err := m.ReadFile("/d/f")
	mfsMust(t, err)
	return string(got)
}

func TestMemFSCrashRandOverridesSeed(t *testing.T) {
	opts := func(seed int64) CrashOptions {
		return CrashOptions{KeepUnsyncedPrefix: true, Seed: seed, Rand: rand.New(rand.NewPCG(7, 7))}
	}
	want := mfsCrashOnce(t, opts(1))
	for seed := range int64(20) {
		if got := mfsCrashOnce(t, opts(seed)); got != want {
			t.Fatalf("Seed %d changed the outcome with Rand set: %q vs %q", seed, got, want)
		}
	}
}

// TestMemFSFileUnusable checks that every method of a File fails once the
// File is closed (os.ErrClosed) or its MemFS crashed (ErrCrashed and
// os.ErrClosed), and that stores to a stale mapping are lost.
func TestMemFSFileUnusable(t *testing.T) {
	tests := []struct {
		name string
		call func(f File, mapped []byte) error
	}{
		{"ReadAt", func(f File, _ []byte) error { _, err := f.ReadAt(make([]byte, 1), 0); return err }},
		{"Write", func(f File, _ []byte) error { _, err := f.Write([]byte("x")); return err }},
		{"WriteAt", func(f File, _ []byte) error { _, err := f.WriteAt([]byte("x"), 0); return err }},
		{"Seek", func(f File, _ []byte) error { _, err := f.Seek(0, io.SeekEnd); return err }},
		{"Sync", func(f File, _ []byte) error { return f.Sync() }},
		{"Truncate", func(f File, _ []byte) error { return f.Truncate(0) }},
		{"Size", func(f File, _ []byte) error { _, err := f.Size(); return err }},
		{"Map", func(f File, _ []byte) error { _, err := f.Map(1); return err }},
		{"Unmap", func(f File, b []byte) error { return f.Unmap(b) }},
		{"Close", func(f File, _ []byte) error { return f.Close() }},
	}
	for _, tc := range tests {
		for _, crash := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/crashed=%v", tc.name, crash), func(t *testing.T) {
				m := NewMemFS()
				mfsRun(t, m, "mkdir /d; writefile /d/f abcd sync")
				f, err := m.OpenFile("/d/f", os.O_RDWR, 0)
				mfsMust(t, err)
				b, err := f.Map(4)
				mfsMust(t, err)
				if !crash {
					mfsMust(t, f.Close())
					if err := tc.call(f, b); !errors.Is(err, os.ErrClosed) || errors.Is(err, ErrCrashed) {
						t.Fatalf("got %v, want os.ErrClosed only", err)
					}
					return
				}
				m.Crash(CrashOptions{})
				if err := tc.call(f, b); !errors.Is(err, ErrCrashed) || !errors.Is(err, os.ErrClosed) {
					t.Fatalf("got %v, want ErrCrashed and os.ErrClosed", err)
				}
				// The stale mapping is still memory, but stores to it are lost.
				copy(b, "XXXX")
				if got, _ := m.ReadFile("/d/f"); string(got) != "abcd" {
					t.Fatalf("store to stale mapping reached the file: %q", got)
				}
				g, err := m.OpenFile("/d/f", os.O_RDWR, 0)
				mfsMust(t, err)
				mfsMust(t, g.Sync())
				mfsMust(t, g.Close())
				m.Crash(CrashOptions{})
				if got, _ := m.ReadFile("/d/f"); string(got) != "abcd" {
					t.Fatalf("after sync and crash: %q", got)
				}
			})
		}
	}
}

func TestMemFSErrors(t *testing.T) {
	open := func(name string, flag int) func(m *MemFS) error {
		return func(m *MemFS) error { _, err := m.OpenFile(name, flag, 0o644); return err }
	}
	file := func(flag int, fn func(f File) error) func(m *MemFS) error {
		return func(m *MemFS) error {
			f, err := m.OpenFile("/d/f", flag, 0)
			if err != nil {
				return err
			}
			defer f.Close()
			return fn(f)
		}
	}
	tests := []struct {
		name string
		fn   func(m *MemFS) error
		want error
	}{
		{"open in missing dir", open("/nodir/f", os.O_RDWR|os.O_CREATE), fs.ErrNotExist},
		{"open missing file without O_CREATE", open("/d/missing", os.O_RDWR), fs.ErrNotExist},
		{"O_EXCL on existing file", open("/d/f", os.O_RDWR|os.O_CREATE|os.O_EXCL), fs.ErrExist},
		{"open a directory", open("/d", os.O_RDONLY), syscall.EISDIR},
		{"open the root", open("/", os.O_RDONLY), syscall.EISDIR},
		{"open below a file", open("/d/f/g", os.O_RDWR|os.O_CREATE), syscall.ENOTDIR},
		{"MkdirAll over a file", func(m *MemFS) error { return m.MkdirAll("/d/f/g", 0o755) }, syscall.ENOTDIR},
		{"Remove missing", func(m *MemFS) error { return m.Remove("/d/missing") }, fs.ErrNotExist},
		{"Remove non-empty dir", func(m *MemFS) error { return m.Remove("/d") }, syscall.ENOTEMPTY},
		{"Rename missing", func(m *MemFS) error { return m.Rename("/d/missing", "/d/g") }, fs.ErrNotExist},
		{"Rename into missing dir", func(m *MemFS) error { return m.Rename("/d/f", "/nodir/g") }, fs.ErrNotExist},
		{"Rename file over dir", func(m *MemFS) error { return m.Rename("/d/f", "/d/sub") }, syscall.EISDIR},
		{"Rename dir into itself", func(m *MemFS) error { return m.Rename("/d", "/d/sub/x") }, syscall.EINVAL},
		{"ReadDir missing", func(m *MemFS) error { _, err := m.ReadDir("/nodir"); return err }, fs.ErrNotExist},
		{"ReadDir of a file", func(m *MemFS) error { _, err := m.ReadDir("/d/f"); return err }, syscall.ENOTDIR},
		{"SyncDir missing", func(m *MemFS) error { return m.SyncDir("/nodir") }, fs.ErrNotExist},
		{"ReadFile missing", func(m *MemFS) error { _, err := m.ReadFile("/d/missing"); return err }, fs.ErrNotExist},
		{"Size missing", func(m *MemFS) error { _, err := m.Size("/d/missing"); return err }, fs.ErrNotExist},
		{"WriteFile in missing dir", func(m *MemFS) error { return m.WriteFile("/nodir/f", nil, true) }, fs.ErrNotExist},
		{"Write to read-only file", file(os.O_RDONLY, func(f File) error { _, err := f.Write([]byte("x")); return err }), syscall.EBADF},
		{"Truncate read-only file", file(os.O_RDONLY, func(f File) error { return f.Truncate(0) }), syscall.EBADF},
		{"ReadAt write-only file", file(os.O_WRONLY, func(f File) error { _, err := f.ReadAt(make([]byte, 1), 0); return err }), syscall.EBADF},
		{"ReadAt negative offset", file(os.O_RDWR, func(f File) error { _, err := f.ReadAt(make([]byte, 1), -1); return err }), syscall.EINVAL},
		{"Map read-only file", file(os.O_RDONLY, func(f File) error { _, err := f.Map(1); return err }), syscall.EACCES},
		{"Map beyond the end", file(os.O_RDWR, func(f File) error { _, err := f.Map(5); return err }), syscall.EINVAL},
		{"Unmap unknown slice", file(os.O_RDWR, func(f File) error { return f.Unmap(make([]byte, 4)) }), syscall.EINVAL},
		{"Truncate negative", file(os.O_RDWR, func(f File) error { return f.Truncate(-1) }), syscall.EINVAL},
		{"Seek negative", file(os.O_RDWR, func(f File) error { _, err := f.Seek(-1, io.SeekStart); return err }), syscall.EINVAL},
		{"Seek bad whence", file(os.O_RDWR, func(f File) error { _, err := f.Seek(0, 7); return err }), syscall.EINVAL},
		{"WriteAt huge offset", file(os.O_RDWR, func(f File) error { _, err := f.WriteAt([]byte("x"), 1<<40); return err }), syscall.EFBIG},
		{"grow mapped file beyond capacity", file(os.O_RDWR, func(f File) error {
			if _, err := f.Map(4); err != nil {
				return err
			}
			return f.Truncate(1 << 20)
		}), errMemMapped},
		{"append to mapped file beyond capacity", file(os.O_RDWR, func(f File) error {
			if _, err := f.Map(4); err != nil {
				return err
			}
			_, err := f.WriteAt(make([]byte, 1<<20), 4)
			return err
		}), errMemMapped},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMemFS()
			mfsRun(t, m, "mkdir /d/sub; writefile /d/f abcd sync")
			err := tc.fn(m)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestMemFSReadAt(t *testing.T) {
	tests := []struct {
		name    string
		off     int64
		size    int
		want    string
		wantEOF bool
	}{
		{"whole file", 0, 6, "abcdef", false},
		{"middle", 2, 2, "cd", false},
		{"partial read at end", 4, 4, "ef", true},
		{"at EOF", 6, 1, "", true},
		{"past EOF", 10, 1, "", true},
		{"empty buffer", 3, 0, "", false},
	}
	m := NewMemFS()
	mfsRun(t, m, "mkdir /d; writefile /d/f abcdef")
	f, err := m.OpenFile("/d/f", os.O_RDONLY, 0)
	mfsMust(t, err)
	defer f.Close()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			buf := make([]byte, tc.size)
			n, err := f.ReadAt(buf, tc.off)
			if string(buf[:n]) != tc.want || (err == io.EOF) != tc.wantEOF || (err != nil && err != io.EOF) {
				t.Fatalf("ReadAt(%d, %d) = %q, %v; want %q, EOF %v", tc.size, tc.off, buf[:n], err, tc.want, tc.wantEOF)
			}
		})
	}
}

func TestMemFSWriteSeek(t *testing.T) {
	tests := []struct {
		name string
		flag int
		ops  func(f File) error
		want string
	}{
		{"writes append at offset", 0, func(f File) error {
			return errors.Join(mfsW(f, "abc"), mfsW(f, "de"))
		}, "abcde"},
		{"Seek end then write", 0, func(f File) error {
			return errors.Join(mfsW(f, "abc"), mfsSeek(f, 0, io.SeekStart, 0), mfsSeek(f, 0, io.SeekEnd, 3), mfsW(f, "d"))
		}, "abcd"},
		{"Seek current", 0, func(f File) error {
			return errors.Join(mfsW(f, "abcd"), mfsSeek(f, -2, io.SeekCurrent, 2), mfsW(f, "X"))
		}, "abXd"},
		{"Seek past end zero-fills", 0, func(f File) error {
			return errors.Join(mfsW(f, "ab"), mfsSeek(f, 4, io.SeekStart, 4), mfsW(f, "c"))
		}, "ab\x00\x00c"},
		{"WriteAt past end zero-fills", 0, func(f File) error {
			_, err := f.WriteAt([]byte("z"), 3)
			return err
		}, "\x00\x00\x00z"},
		{"O_APPEND ignores offset", os.O_APPEND, func(f File) error {
			return errors.Join(mfsW(f, "ab"), mfsSeek(f, 0, io.SeekStart, 0), mfsW(f, "c"))
		}, "abc"},
		{"Truncate then write", 0, func(f File) error {
			return errors.Join(mfsW(f, "abcdef"), f.Truncate(2), mfsSeek(f, 0, io.SeekEnd, 2), mfsW(f, "Z"))
		}, "abZ"},
		{"shrink and regrow within capacity zeroes", 0, func(f File) error {
			return errors.Join(mfsW(f, "abcdef"), f.Truncate(1), f.Truncate(3))
		}, "a\x00\x00"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			m := NewMemFS()
			mfsRun(t, m, "mkdir /d")
			f, err := m.OpenFile("/d/f", os.O_RDWR|os.O_CREATE|tc.flag, 0o644)
			mfsMust(t, err)
			mfsMust(t, tc.ops(f))
			size, err := f.Size()
			mfsMust(t, err)
			got, err := m.ReadFile("/d/f")
			mfsMust(t, err)
			if string(got) != tc.want || size != int64(len(tc.want)) {
				t.Fatalf("got %q (Size %d), want %q", got, size, tc.want)
			}
			mfsMust(t, f.Close())
		})
	}
}

func mfsW(f File, s string) error {
	n, err := f.Write([]byte(s))
	if err == nil && n != len(s) {
		err = fmt.Errorf("short write %d/%d", n, len(s))
	}
	return err
}

func mfsSeek(f File, off int64, whence int, want int64) error {
	got, err := f.Seek(off, whence)
	if err == nil && got != want {
		err = fmt.Errorf("Seek(%d, %d) = %d, want %d", off, whence, got, want)
	}
	return err
}

func TestMemFSMap(t *testing.T) {
	m := NewMemFS()
	mfsRun(t, m, "mkdir /d")
	f, err := m.OpenFile("/d/f", os.O_RDWR|os.O_CREATE, 0o644)
	mfsMust(t, err)
	mfsMust(t, f.Truncate(8))
	b, err := f.Map(8)
	mfsMust(t, err)
	if len(b) != 8 || cap(b) != 8 {
		t.Fatalf("mapping len %d cap %d, want 8 8", len(b), cap(b))
	}
	copy(b, "mapped!!")
	if got, _ := m.ReadFile("/d/f"); string(got) != "mapped!!" {
		t.Fatalf("store through mapping not visible: %q", got)
	}
	_, err = f.WriteAt([]byte("W"), 0)
	mfsMust(t, err)
	if b[0] != 'W' {
		t.Fatalf("WriteAt not visible through mapping: %q", b)
	}
	// Shrinking and regrowing within the capacity keep the mapping valid.
	mfsMust(t, f.Truncate(2))
	mfsMust(t, f.Truncate(8))
	copy(b[7:], "Z")
	if got, _ := m.ReadFile("/d/f"); string(got) != "Wa\x00\x00\x00\x00\x00Z" {
		t.Fatalf("after shrink and regrow: %q", got)
	}
	if err := f.Truncate(100); !errors.Is(err, errMemMapped) {
		t.Fatalf("growing a mapped file: %v", err)
	}
	mfsMust(t, f.Unmap(b))
	if err := f.Unmap(b); !errors.Is(err, syscall.EINVAL) {
		t.Fatalf("double Unmap: %v", err)
	}
	mfsMust(t, f.Truncate(100)) // unmapped: may move now
	if b0, err := f.Map(0); b0 != nil || err != nil {
		t.Fatalf("Map(0) = %v, %v", b0, err)
	}
	mfsMust(t, f.Close())
	// Close releases mappings: the file can grow again.
	g, err := m.OpenFile("/d/f", os.O_RDWR, 0)
	mfsMust(t, err)
	_, err = g.Map(100)
	mfsMust(t, err)
	mfsMust(t, g.Close())
	mfsMust(t, m.WriteFile("/d/f", make([]byte, 1000), false))
}

func TestMemFSNamespace(t *testing.T) {
	m := NewMemFS()
	mfsRun(t, m, "mkdir /d/sub")
	for _, n := range []string{"c", "a", "b"} {
		mfsRun(t, m, "writefile /d/"+n+" "+n)
	}
	names, err := m.ReadDir("/d")
	mfsMust(t, err)
	if want := []string{"a", "b", "c", "sub"}; !slices.Equal(names, want) {
		t.Fatalf("ReadDir = %q, want %q", names, want)
	}
	// Equivalent spellings of one path.
	for _, p := range []string{"d/a", "/d/./a", "/d/sub/../a", "//d//a", "/../d/a"} {
		if got, err := m.ReadFile(p); err != nil || string(got) != "a" {
			t.Errorf("ReadFile(%q) = %q, %v", p, got, err)
		}
	}
	if n, err := m.Size("/d/b"); n != 1 || err != nil {
		t.Errorf("Size = %d, %v", n, err)
	}
	mfsMust(t, m.Rename("/d/sub", "/d/sub2"))
	mfsMust(t, m.Rename("/d/a", "/d/a")) // renaming to itself is a no-op
	mfsMust(t, m.Remove("/d/sub2"))      // empty directory
	mfsMust(t, m.RemoveAll("/nonexistent/x"))
	names, err = m.ReadDir("/d")
	mfsMust(t, err)
	if want := []string{"a", "b", "c"}; !slices.Equal(names, want) {
		t.Fatalf("ReadDir = %q, want %q", names, want)
	}
	// An open file survives the removal of its name (unlinked inode).
	f, err := m.OpenFile("/d/a", os.O_RDWR, 0)
	mfsMust(t, err)
	mfsMust(t, m.Remove("/d/a"))
	_, err = f.WriteAt([]byte("Z"), 0)
	mfsMust(t, err)
	buf := make([]byte, 1)
	_, err = f.ReadAt(buf, 0)
	mfsMust(t, err)
	mfsMust(t, f.Close())
	if buf[0] != 'Z' {
		t.Fatalf("unlinked file read %q", buf)
	}
}

// TestMemFSConcurrent runs writers, syncers, listers and crashes together,
// for the race detector, with a goroutine storing to a mapping throughout.
func TestMemFSConcurrent(t *testing.T) {
	m := NewMemFS()
	mfsRun(t, m, "mkdir /d; writefile /d/mapped 01234567 sync")
	mf, err := m.OpenFile("/d/mapped", os.O_RDWR, 0)
	mfsMust(t, err)
	b, err := mf.Map(8)
	mfsMust(t, err)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() { // stores to a mapping that goes stale at the first Crash
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
				b[i%8] = byte(i)
			}
		}
	}()
	var workers sync.WaitGroup
	for g := range 4 {
		workers.Add(1)
		go func() {
			defer workers.Done()
			name := fmt.Sprintf("/d/f%d", g)
			for i := range 200 {
				f, err := m.OpenFile(name, os.O_RDWR|os.O_CREATE, 0o644)
				if err != nil {
					t.Error(err)
					return
				}
				// Errors after a concurrent Crash are expected.
				_, _ = f.Write(bytes.Repeat([]byte{byte(i)}, 10))
				_ = f.Sync()
				_, _ = f.ReadAt(make([]byte, 4), 0)
				_ = f.Close()
				_ = m.SyncDir("/d")
				_, _ = m.ReadDir("/d")
			}
		}()
	}
	done := make(chan struct{})
	go func() { workers.Wait(); close(done) }()
	crashes := 0
	for loop := true; loop; crashes++ {
		select {
		case <-done:
			loop = false
		default:
		}
		m.Crash(CrashOptions{Seed: int64(crashes), ZeroUnsyncedTail: true})
	}
	close(stop)
	wg.Wait()
	t.Logf("%d crashes", crashes)
	m.Crash(CrashOptions{})
	if got, _ := m.ReadFile("/d/mapped"); len(got) != 8 {
		t.Fatalf("mapped file after crashes: %q", got)
	}
}

// StoresInHoles: bytes stored through a mapping into a range that grew by a
// truncate are reported; written ranges, files made by WriteFile and
// contents restored by a crash are not.
func TestMemFSStoresInHoles(t *testing.T) {
	m := NewMemFS()
	must(t, m.MkdirAll("/d", 0o755))
	must(t, m.WriteFile("/d/a", []byte("hello"), true))
	f, err := m.OpenFile("/d/b", os.O_RDWR|os.O_CREATE, 0o644)
	must(t, err)
	_, err = f.WriteAt([]byte("0123456789"), 0)
	must(t, err)
	must(t, f.Sync())
	must(t, m.SyncDir("/d"))
	must(t, f.Truncate(0))
	must(t, f.Truncate(10))
	m.Crash(CrashOptions{})
	if bad := m.StoresInHoles(); len(bad) > 0 {
		t.Fatalf("false positives: %v", bad)
	}

	g, err := m.OpenFile("/d/c", os.O_RDWR|os.O_CREATE, 0o644)
	must(t, err)
	must(t, g.Truncate(8192))
	_, err = g.WriteAt([]byte{1, 2, 3}, 100) // written: not a hole
	must(t, err)
	b, err := g.Map(8192)
	must(t, err)
	b[200] = 0 // a zero is not seen
	if bad := m.StoresInHoles(); len(bad) > 0 {
		t.Fatalf("after writes: %v", bad)
	}
	b[5000] = 7
	if bad := m.StoresInHoles(); len(bad) != 1 || bad[0] != "/d/c at 5000" {
		t.Fatalf("StoresInHoles = %v, want /d/c at 5000", bad)
	}
	_, err = g.WriteAt([]byte{7}, 5000) // the same byte, written
	must(t, err)
	if bad := m.StoresInHoles(); len(bad) > 0 {
		t.Fatalf("after the write: %v", bad)
	}
	must(t, g.Unmap(b))
	must(t, g.Close())
}
