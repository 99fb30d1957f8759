package logcore

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
)

func TestFaultFSOpString(t *testing.T) {
	tests := []struct {
		op   Op
		want string
	}{
		{OpOpen, "open"}, {OpRemove, "remove"}, {OpRename, "rename"}, {OpMkdirAll, "mkdirall"},
		{OpReadDir, "readdir"}, {OpSyncDir, "syncdir"}, {OpRemoveAll, "removeall"},
		{OpReadAt, "readat"}, {OpWrite, "write"}, {OpWriteAt, "writeat"}, {OpSeek, "seek"},
		{OpSync, "sync"}, {OpTruncate, "truncate"}, {OpSize, "size"}, {OpClose, "close"},
		{OpMap, "map"}, {OpUnmap, "unmap"},
		{Op(0), "Op(0)"}, {faultOpCount, fmt.Sprintf("Op(%d)", int(faultOpCount))}, {Op(-1), "Op(-1)"},
	}
	for _, tc := range tests {
		if got := tc.op.String(); got != tc.want {
			t.Errorf("Op(%d).String() = %q, want %q", int(tc.op), got, tc.want)
		}
	}
}

// faultSetup returns a MemFS holding /d/f = "abc" (durable) and a FaultFS
// over it.
func faultSetup(t *testing.T) (*FaultFS, *MemFS) {
	t.Helper()
	mem := NewMemFS()
	mfsMust(t, mem.MkdirAll("/d", 0o755))
	mfsMust(t, mem.WriteFile("/d/f", []byte("abc"), true))
	return NewFaultFS(mem), mem
}

// faultOpen opens /d/f through ffs with no hook active.
func faultOpen(t *testing.T, ffs *FaultFS) File {
	t.Helper()
	f, err := ffs.OpenFile("/d/f", os.O_RDWR, 0)
	mfsMust(t, err)
	return f
}

// TestFaultFSInject injects one fault of each kind and checks both the
// error and its effect (or absence of effect) on the inner MemFS.
func TestFaultFSInject(t *testing.T) {
	tests := []struct {
		name  string
		op    Op
		fault Fault
		// run performs the faulted operation (the hook is armed just
		// before) and returns its error; f is /d/f opened through ffs.
		run func(t *testing.T, ffs *FaultFS, f File) error
		// check inspects the inner MemFS afterwards (hook disarmed).
		check func(t *testing.T, mem *MemFS, f File)
	}{
		{"OpenFile fails and creates nothing", OpOpen, Fault{Err: syscall.EMFILE},
			func(t *testing.T, ffs *FaultFS, _ File) error {
				g, err := ffs.OpenFile("/d/new", os.O_RDWR|os.O_CREATE, 0o644)
				if g != nil {
					t.Error("file returned with error")
				}
				return err
			},
			func(t *testing.T, mem *MemFS, _ File) { faultWantMissing(t, mem, "/d/new") }},
		{"Write fails having written nothing", OpWrite, Fault{Err: syscall.ENOSPC},
			faultWrite("def", 0),
			func(t *testing.T, mem *MemFS, _ File) { faultWantContents(t, mem, "abc") }},
		{"Write is short", OpWrite, Fault{Err: io.ErrShortWrite, Written: 2},
			faultWrite("def", 2),
			func(t *testing.T, mem *MemFS, _ File) { faultWantContents(t, mem, "abcde") }},
		{"short Write with ENOSPC", OpWrite, Fault{Err: syscall.ENOSPC, Written: 1},
			faultWrite("def", 1),
			func(t *testing.T, mem *MemFS, _ File) { faultWantContents(t, mem, "abcd") }},
		{"Written beyond the buffer writes it all", OpWrite, Fault{Err: syscall.EIO, Written: 10},
			faultWrite("def", 3),
			func(t *testing.T, mem *MemFS, _ File) { faultWantContents(t, mem, "abcdef") }},
		{"WriteAt is short", OpWriteAt, Fault{Err: syscall.ENOSPC, Written: 1},
			func(t *testing.T, _ *FaultFS, f File) error {
				n, err := f.WriteAt([]byte("XYZ"), 1)
				if n != 1 {
					t.Errorf("n = %d, want 1", n)
				}
				return err
			},
			func(t *testing.T, mem *MemFS, _ File) { faultWantContents(t, mem, "aXc") }},
		{"Sync fails and does not sync", OpSync, Fault{Err: syscall.EIO},
			func(t *testing.T, _ *FaultFS, f File) error {
				_, err := f.WriteAt([]byte("XYZ"), 0)
				mfsMust(t, err)
				return f.Sync()
			},
			func(t *testing.T, mem *MemFS, _ File) {
				faultWantContents(t, mem, "XYZ")
				mem.Crash(CrashOptions{})
				faultWantContents(t, mem, "abc")
			}},
		{"Truncate fails", OpTruncate, Fault{Err: syscall.EIO},
			func(t *testing.T, _ *FaultFS, f File) error { return f.Truncate(1) },
			func(t *testing.T, mem *MemFS, _ File) { faultWantContents(t, mem, "abc") }},
		{"Rename fails", OpRename, Fault{Err: syscall.EXDEV},
			func(t *testing.T, ffs *FaultFS, _ File) error {
				err := ffs.Rename("/d/f", "/d/g")
				var le *os.LinkError
				if !errors.As(err, &le) || le.Old != "/d/f" || le.New != "/d/g" {
					t.Errorf("error %v is not a LinkError for the rename", err)
				}
				return err
			},
			func(t *testing.T, mem *MemFS, _ File) {
				faultWantContents(t, mem, "abc")
				faultWantMissing(t, mem, "/d/g")
			}},
		{"SyncDir fails so the entry is not durable", OpSyncDir, Fault{Err: syscall.EIO},
			func(t *testing.T, ffs *FaultFS, _ File) error {
				g, err := ffs.Inner().OpenFile("/d/new", os.O_RDWR|os.O_CREATE, 0o644)
				mfsMust(t, err)
				mfsMust(t, g.Close())
				return ffs.SyncDir("/d")
			},
			func(t *testing.T, mem *MemFS, _ File) {
				mem.Crash(CrashOptions{})
				faultWantMissing(t, mem, "/d/new")
			}},
		{"Remove fails", OpRemove, Fault{Err: syscall.EACCES},
			func(t *testing.T, ffs *FaultFS, _ File) error { return ffs.Remove("/d/f") },
			func(t *testing.T, mem *MemFS, _ File) { faultWantContents(t, mem, "abc") }},
		{"RemoveAll fails", OpRemoveAll, Fault{Err: syscall.EACCES},
			func(t *testing.T, ffs *FaultFS, _ File) error { return ffs.RemoveAll("/d") },
			func(t *testing.T, mem *MemFS, _ File) { faultWantContents(t, mem, "abc") }},
		{"MkdirAll fails", OpMkdirAll, Fault{Err: syscall.ENOSPC},
			func(t *testing.T, ffs *FaultFS, _ File) error { return ffs.MkdirAll("/d/e", 0o755) },
			func(t *testing.T, mem *MemFS, _ File) { faultWantMissing(t, mem, "/d/e") }},
		{"ReadDir fails", OpReadDir, Fault{Err: syscall.EIO},
			func(t *testing.T, ffs *FaultFS, _ File) error {
				names, err := ffs.ReadDir("/d")
				if names != nil {
					t.Errorf("names %q returned with error", names)
				}
				return err
			}, nil},
		{"ReadAt fails", OpReadAt, Fault{Err: syscall.EIO},
			func(t *testing.T, _ *FaultFS, f File) error {
				n, err := f.ReadAt(make([]byte, 3), 0)
				if n != 0 {
					t.Errorf("n = %d, want 0", n)
				}
				return err
			}, nil},
		{"Seek fails", OpSeek, Fault{Err: syscall.EINVAL},
			func(t *testing.T, _ *FaultFS, f File) error { _, err := f.Seek(0, io.SeekEnd); return err }, nil},
		{"Size fails", OpSize, Fault{Err: syscall.EIO},
			func(t *testing.T, _ *FaultFS, f File) error { _, err := f.Size(); return err }, nil},
		{"Map fails", OpMap, Fault{Err: syscall.ENOMEM},
			func(t *testing.T, _ *FaultFS, f File) error {
				b, err := f.Map(3)
				if b != nil {
					t.Error("mapping returned with error")
				}
				return err
			},
			func(t *testing.T, _ *MemFS, f File) { mfsMust(t, f.Truncate(1<<20)) }}, // not mapped
		{"Unmap fails but unmaps", OpUnmap, Fault{Err: syscall.EINVAL},
			func(t *testing.T, ffs *FaultFS, f File) error {
				ffs.SetHook(nil)
				b, err := f.Map(3)
				mfsMust(t, err)
				ffs.SetHook(Rule{Ops: []Op{OpUnmap}, Fault: Fault{Err: syscall.EINVAL}}.Hook())
				return f.Unmap(b)
			},
			func(t *testing.T, _ *MemFS, f File) { mfsMust(t, f.Truncate(1<<20)) }}, // unmapped: may grow
		{"Close fails but closes", OpClose, Fault{Err: syscall.EIO},
			func(t *testing.T, _ *FaultFS, f File) error { return f.Close() },
			func(t *testing.T, _ *MemFS, f File) {
				if _, err := f.Size(); !errors.Is(err, os.ErrClosed) {
					t.Errorf("inner file not closed: Size error %v", err)
				}
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ffs, mem := faultSetup(t)
			f := faultOpen(t, ffs)
			if _, err := f.Seek(0, io.SeekEnd); err != nil {
				t.Fatal(err)
			}
			ffs.SetHook(Rule{Ops: []Op{tc.op}, Fault: tc.fault}.Hook())
			err := tc.run(t, ffs, f)
			ffs.SetHook(nil)
			if !errors.Is(err, ErrInjected) || !errors.Is(err, tc.fault.Err) {
				t.Fatalf("error %v does not match both ErrInjected and %v", err, tc.fault.Err)
			}
			if !strings.Contains(err.Error(), "injected fault: "+tc.fault.Err.Error()) {
				t.Errorf("error text %q does not say what was injected", err)
			}
			if tc.op != OpRename {
				var pe *fs.PathError
				if !errors.As(err, &pe) || pe.Op != tc.op.String() {
					t.Errorf("error %v is not a PathError for %v", err, tc.op)
				}
			}
			if got := ffs.Injected(); got != 1 {
				t.Errorf("Injected() = %d, want 1", got)
			}
			if tc.check != nil {
				tc.check(t, mem, f)
			}
		})
	}
}

// faultWrite appends s through f and checks that n is wantN.
func faultWrite(s string, wantN int) func(t *testing.T, _ *FaultFS, f File) error {
	return func(t *testing.T, _ *FaultFS, f File) error {
		n, err := f.Write([]byte(s))
		if n != wantN {
			t.Errorf("n = %d, want %d", n, wantN)
		}
		return err
	}
}

func faultWantContents(t *testing.T, mem *MemFS, want string) {
	t.Helper()
	got, err := mem.ReadFile("/d/f")
	mfsMust(t, err)
	if string(got) != want {
		t.Fatalf("/d/f = %q, want %q", got, want)
	}
}

func faultWantMissing(t *testing.T, mem *MemFS, name string) {
	t.Helper()
	if _, err := mem.ReadFile(name); !errors.Is(err, fs.ErrNotExist) && !errors.Is(err, syscall.EISDIR) {
		t.Fatalf("%s: got %v, want it missing", name, err)
	} else if names, _ := mem.ReadDir("/d"); slices.Contains(names, strings.TrimPrefix(name, "/d/")) {
		t.Fatalf("%s exists: %q", name, names)
	}
}

// TestFaultFSRule checks which calls a Rule fails.
func TestFaultFSRule(t *testing.T) {
	type call struct {
		op   Op
		name string
	}
	w := func(name string) call { return call{OpWrite, name} }
	six := []call{w("a"), w("a"), w("a"), w("a"), w("a"), w("a")}
	eio := Fault{Err: syscall.EIO}
	tests := []struct {
		name  string
		rule  Rule
		calls []call
		want  []bool // which calls fail
	}{
		{"next only", Rule{Ops: []Op{OpWrite}, Count: 1, Fault: eio}, six,
			[]bool{true, false, false, false, false, false}},
		{"third only", Rule{Ops: []Op{OpWrite}, Nth: 3, Count: 1, Fault: eio}, six,
			[]bool{false, false, true, false, false, false}},
		{"second and third", Rule{Ops: []Op{OpWrite}, Nth: 2, Count: 2, Fault: eio}, six,
			[]bool{false, true, true, false, false, false}},
		{"every one from the fourth", Rule{Ops: []Op{OpWrite}, Nth: 4, Fault: eio}, six,
			[]bool{false, false, false, true, true, true}},
		{"every one", Rule{Ops: []Op{OpWrite}, Fault: eio}, six,
			[]bool{true, true, true, true, true, true}},
		{"zero Fault injects nothing", Rule{Ops: []Op{OpWrite}}, six,
			[]bool{false, false, false, false, false, false}},
		{"other ops do not count", Rule{Ops: []Op{OpWrite}, Nth: 2, Count: 1, Fault: eio},
			[]call{{OpSync, "a"}, w("a"), {OpWriteAt, "a"}, {OpSync, "a"}, w("a"), w("a")},
			[]bool{false, false, false, false, true, false}},
		{"several ops", Rule{Ops: []Op{OpWrite, OpSync}, Nth: 2, Fault: eio},
			[]call{w("a"), {OpWriteAt, "a"}, {OpSync, "a"}, w("a")},
			[]bool{false, false, true, true}},
		{"no Ops means all ops", Rule{Nth: 2, Count: 2, Fault: eio},
			[]call{{OpOpen, "a"}, {OpSync, "a"}, {OpRename, "a"}, w("a")},
			[]bool{false, true, true, false}},
		{"suffix selects files", Rule{Ops: []Op{OpWrite}, Suffix: ".store", Nth: 2, Fault: eio},
			[]call{w("1.store"), w("1.index"), w("2.store"), w("1.index"), w("3.store")},
			[]bool{false, false, true, false, true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := tc.rule.Hook()
			for i, c := range tc.calls {
				if got := h(c.op, c.name).Err != nil; got != tc.want[i] {
					t.Errorf("call %d (%v %s): failed %v, want %v", i+1, c.op, c.name, got, tc.want[i])
				}
			}
		})
	}
}

func TestFaultFSHooks(t *testing.T) {
	sync1 := Rule{Ops: []Op{OpSync}, Count: 1, Fault: Fault{Err: syscall.EIO}}.Hook()
	write2 := Rule{Ops: []Op{OpWrite}, Nth: 2, Count: 1, Fault: Fault{Err: syscall.ENOSPC}}.Hook()
	all := Rule{Nth: 3, Count: 1, Fault: Fault{Err: syscall.EROFS}}.Hook()
	h := Hooks(sync1, write2, all)
	tests := []struct {
		op   Op
		want error
	}{
		{OpWrite, nil},            // write2: 1st write; all: 1st call
		{OpSync, syscall.EIO},     // sync1; all: 2nd call
		{OpWrite, syscall.ENOSPC}, // write2 wins over all's 3rd call, which still counts
		{OpSync, nil},
		{OpWrite, nil},
	}
	for i, tc := range tests {
		if got := h(tc.op, "f").Err; got != tc.want {
			t.Errorf("call %d (%v): got %v, want %v", i+1, tc.op, got, tc.want)
		}
	}
}

func TestFaultFSTransparent(t *testing.T) {
	ffs, mem := faultSetup(t)
	var seen []string
	ffs.SetHook(func(op Op, name string) Fault {
		seen = append(seen, op.String()+" "+name)
		return Fault{}
	})
	f, err := ffs.OpenFile("/d/g", os.O_RDWR|os.O_CREATE, 0o644)
	mfsMust(t, err)
	mfsMust(t, mfsW(f, "hello"))
	mfsMust(t, f.Sync())
	mfsMust(t, ffs.SyncDir("/d"))
	mfsMust(t, f.Close())
	mfsMust(t, ffs.Rename("/d/g", "/d/h"))
	names, err := ffs.ReadDir("/d")
	mfsMust(t, err)
	if want := []string{"f", "h"}; !slices.Equal(names, want) {
		t.Fatalf("ReadDir = %q, want %q", names, want)
	}
	want := []string{"open /d/g", "write /d/g", "sync /d/g", "syncdir /d", "close /d/g", "rename /d/g", "readdir /d"}
	if !slices.Equal(seen, want) {
		t.Fatalf("hook saw %q, want %q", seen, want)
	}
	if ffs.Calls(OpWrite) != 1 || ffs.Calls(OpRename) != 1 || ffs.Calls(OpMap) != 0 || ffs.Calls(Op(0)) != 0 {
		t.Fatalf("Calls: write %d rename %d map %d", ffs.Calls(OpWrite), ffs.Calls(OpRename), ffs.Calls(OpMap))
	}
	if ffs.Injected() != 0 {
		t.Fatalf("Injected() = %d", ffs.Injected())
	}
	mem.Crash(CrashOptions{}) // g was synced and its entry synced: survives as g
	if got, err := mem.ReadFile("/d/g"); err != nil || string(got) != "hello" {
		t.Fatalf("after crash /d/g = %q, %v", got, err)
	}
	// Errors of the inner FS pass through unchanged.
	if _, err := ffs.OpenFile("/d/missing", os.O_RDWR, 0); !errors.Is(err, fs.ErrNotExist) || errors.Is(err, ErrInjected) {
		t.Fatalf("inner error: %v", err)
	}
}

// TestFaultFSConcurrent checks, under the race detector, that a counting
// Rule injects exactly Count faults among concurrent writers.
func TestFaultFSConcurrent(t *testing.T) {
	ffs, _ := faultSetup(t)
	ffs.SetHook(Rule{Ops: []Op{OpWrite}, Nth: 5, Count: 10, Fault: Fault{Err: syscall.ENOSPC, Written: 1}}.Hook())
	var wg sync.WaitGroup
	var mu sync.Mutex
	failed := 0
	for g := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := ffs.OpenFile(fmt.Sprintf("/d/g%d", g), os.O_RDWR|os.O_CREATE, 0o644)
			if err != nil {
				t.Error(err)
				return
			}
			defer f.Close()
			for range 50 {
				if _, err := f.Write([]byte("xy")); err != nil {
					if !errors.Is(err, syscall.ENOSPC) {
						t.Error(err)
					}
					mu.Lock()
					failed++
					mu.Unlock()
				}
			}
		}()
	}
	wg.Wait()
	if failed != 10 || ffs.Injected() != 10 || ffs.Calls(OpWrite) != 400 {
		t.Fatalf("failed %d, Injected %d, Calls(write) %d; want 10, 10, 400", failed, ffs.Injected(), ffs.Calls(OpWrite))
	}
}
