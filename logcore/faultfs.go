package logcore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"
	"sync"
)

// Op names an FS or File operation, for fault injection by FaultFS.
type Op int

// The operations a FaultFS can fail. The File operations carry the name the
// file was opened with.
const (
	OpOpen      Op = iota + 1 // FS.OpenFile
	OpRemove                  // FS.Remove
	OpRename                  // FS.Rename (the hook sees oldname)
	OpMkdirAll                // FS.MkdirAll
	OpReadDir                 // FS.ReadDir
	OpSyncDir                 // FS.SyncDir
	OpRemoveAll               // FS.RemoveAll
	OpReadAt                  // File.ReadAt
	OpWrite                   // File.Write
	OpWriteAt                 // File.WriteAt
	OpSeek                    // File.Seek
	OpSync                    // File.Sync
	OpTruncate                // File.Truncate
	OpSize                    // File.Size
	OpClose                   // File.Close
	OpMap                     // File.Map
	OpUnmap                   // File.Unmap
	faultOpCount
)

var faultOpNames = [...]string{
	OpOpen: "open", OpRemove: "remove", OpRename: "rename", OpMkdirAll: "mkdirall",
	OpReadDir: "readdir", OpSyncDir: "syncdir", OpRemoveAll: "removeall",
	OpReadAt: "readat", OpWrite: "write", OpWriteAt: "writeat", OpSeek: "seek",
	OpSync: "sync", OpTruncate: "truncate", OpSize: "size", OpClose: "close",
	OpMap: "map", OpUnmap: "unmap",
}

// String returns the operation's lower-case name, e.g. "writeat", or
// "Op(n)" for an unknown value.
func (o Op) String() string {
	if o > 0 && o < faultOpCount {
		return faultOpNames[o]
	}
	return fmt.Sprintf("Op(%d)", int(o))
}

// ErrInjected is wrapped by every error that a FaultFS injects. Each such
// error also wraps the Fault's Err (e.g. syscall.EIO), so both
// errors.Is(err, ErrInjected) and errors.Is(err, syscall.EIO) hold, and it is
// an *fs.PathError (an *os.LinkError for Rename) as the os package returns.
var ErrInjected = errors.New("injected fault")

// Fault says how one operation fails. The zero Fault injects nothing.
type Fault struct {
	// Err is the os-like cause the operation fails with, such as
	// syscall.EIO, syscall.ENOSPC or io.ErrShortWrite. A nil Err means no
	// fault.
	Err error
	// Written applies to OpWrite and OpWriteAt: that many bytes of the
	// buffer (at most all of them) are passed to the inner file before the
	// error is returned with n = the bytes the inner file took. With 0 the
	// write fails having written nothing.
	Written int
}

// Hook decides, for each operation of a FaultFS, whether it fails. FaultFS
// calls it with its lock held, so calls are serialised (a hook may keep
// state without locking) and must not call back into the FaultFS.
type Hook func(op Op, name string) Fault

// FaultFS wraps an FS and injects the faults a Hook asks for. An operation
// that is given a fault is not performed on the inner FS, except that
//
//   - a faulted Write or WriteAt first writes Fault.Written bytes (a short
//     write), and
//   - a faulted Close or Unmap still closes or unmaps the inner file (so
//     nothing leaks) and then reports the error.
//
// In particular a faulted Sync does not sync, so with a MemFS underneath the
// data is lost by a later Crash, as after a real fsync error. Without a hook
// FaultFS is a transparent wrapper. It is safe for concurrent use.
type FaultFS struct {
	inner FS

	mu       sync.Mutex
	hook     Hook
	calls    [faultOpCount]int
	injected int
}

var _ FS = (*FaultFS)(nil)

// NewFaultFS returns a FaultFS over inner, with no hook.
func NewFaultFS(inner FS) *FaultFS { return &FaultFS{inner: inner} }

// Inner returns the wrapped FS.
func (f *FaultFS) Inner() FS { return f.inner }

// SetHook installs h for all later operations (nil removes it).
func (f *FaultFS) SetHook(h Hook) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.hook = h
}

// Calls returns how many times op has been called (faulted or not).
func (f *FaultFS) Calls(op Op) int {
	f.mu.Lock()
	defer f.mu.Unlock()
	if op <= 0 || op >= faultOpCount {
		return 0
	}
	return f.calls[op]
}

// Injected returns how many faults have been injected.
func (f *FaultFS) Injected() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.injected
}

// fault counts the call and asks the hook about it.
func (f *FaultFS) fault(op Op, name string) Fault {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls[op]++
	if f.hook == nil {
		return Fault{}
	}
	ft := f.hook(op, name)
	if ft.Err != nil {
		f.injected++
	}
	return ft
}

// injectedError carries ErrInjected and the os-like cause.
type injectedError struct{ cause error }

func (e *injectedError) Error() string {
	if e.cause == ErrInjected {
		return ErrInjected.Error()
	}
	return ErrInjected.Error() + ": " + e.cause.Error()
}

func (e *injectedError) Unwrap() []error { return []error{ErrInjected, e.cause} }

// inject returns the error for a fault, or nil if there is none.
func (f *FaultFS) inject(op Op, name string) error {
	ft := f.fault(op, name)
	if ft.Err == nil {
		return nil
	}
	return faultPathErr(op, name, ft.Err)
}

func faultPathErr(op Op, name string, cause error) error {
	return &fs.PathError{Op: op.String(), Path: name, Err: &injectedError{cause}}
}

// OpenFile opens a file of the inner FS unless OpOpen is faulted.
func (f *FaultFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	if err := f.inject(OpOpen, name); err != nil {
		return nil, err
	}
	file, err := f.inner.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &faultFile{fs: f, inner: file, name: name}, nil
}

// Remove removes a file unless OpRemove is faulted.
func (f *FaultFS) Remove(name string) error {
	if err := f.inject(OpRemove, name); err != nil {
		return err
	}
	return f.inner.Remove(name)
}

// Rename renames a file unless OpRename is faulted; the error is then an
// *os.LinkError.
func (f *FaultFS) Rename(oldname, newname string) error {
	if ft := f.fault(OpRename, oldname); ft.Err != nil {
		return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: &injectedError{ft.Err}}
	}
	return f.inner.Rename(oldname, newname)
}

// MkdirAll creates directories unless OpMkdirAll is faulted.
func (f *FaultFS) MkdirAll(dir string, perm fs.FileMode) error {
	if err := f.inject(OpMkdirAll, dir); err != nil {
		return err
	}
	return f.inner.MkdirAll(dir, perm)
}

// ReadDir lists a directory unless OpReadDir is faulted.
func (f *FaultFS) ReadDir(dir string) ([]string, error) {
	if err := f.inject(OpReadDir, dir); err != nil {
		return nil, err
	}
	return f.inner.ReadDir(dir)
}

// SyncDir syncs a directory unless OpSyncDir is faulted.
func (f *FaultFS) SyncDir(dir string) error {
	if err := f.inject(OpSyncDir, dir); err != nil {
		return err
	}
	return f.inner.SyncDir(dir)
}

// RemoveAll removes a tree unless OpRemoveAll is faulted.
func (f *FaultFS) RemoveAll(dir string) error {
	if err := f.inject(OpRemoveAll, dir); err != nil {
		return err
	}
	return f.inner.RemoveAll(dir)
}

// faultFile is a File of a FaultFS.
type faultFile struct {
	fs    *FaultFS
	inner File
	name  string
}

var _ File = (*faultFile)(nil)

func (f *faultFile) ReadAt(p []byte, off int64) (int, error) {
	if err := f.fs.inject(OpReadAt, f.name); err != nil {
		return 0, err
	}
	return f.inner.ReadAt(p, off)
}

// write performs a Write or WriteAt, short if the fault says so.
func (f *faultFile) write(op Op, p []byte, do func([]byte) (int, error)) (int, error) {
	ft := f.fs.fault(op, f.name)
	if ft.Err == nil {
		return do(p)
	}
	n := 0
	if w := min(max(ft.Written, 0), len(p)); w > 0 {
		var err error
		if n, err = do(p[:w]); err != nil {
			return n, err
		}
	}
	return n, faultPathErr(op, f.name, ft.Err)
}

func (f *faultFile) Write(p []byte) (int, error) {
	return f.write(OpWrite, p, f.inner.Write)
}

func (f *faultFile) WriteAt(p []byte, off int64) (int, error) {
	return f.write(OpWriteAt, p, func(b []byte) (int, error) { return f.inner.WriteAt(b, off) })
}

func (f *faultFile) Seek(offset int64, whence int) (int64, error) {
	if err := f.fs.inject(OpSeek, f.name); err != nil {
		return 0, err
	}
	return f.inner.Seek(offset, whence)
}

func (f *faultFile) Sync() error {
	if err := f.fs.inject(OpSync, f.name); err != nil {
		return err
	}
	return f.inner.Sync()
}

func (f *faultFile) Truncate(size int64) error {
	if err := f.fs.inject(OpTruncate, f.name); err != nil {
		return err
	}
	return f.inner.Truncate(size)
}

func (f *faultFile) Size() (int64, error) {
	if err := f.fs.inject(OpSize, f.name); err != nil {
		return 0, err
	}
	return f.inner.Size()
}

func (f *faultFile) Close() error {
	ierr := f.fs.inject(OpClose, f.name)
	err := f.inner.Close()
	if ierr != nil {
		return ierr
	}
	return err
}

func (f *faultFile) Map(size int) ([]byte, error) {
	if err := f.fs.inject(OpMap, f.name); err != nil {
		return nil, err
	}
	return f.inner.Map(size)
}

func (f *faultFile) Unmap(b []byte) error {
	ierr := f.fs.inject(OpUnmap, f.name)
	err := f.inner.Unmap(b)
	if ierr != nil {
		return ierr
	}
	return err
}

// Rule is a declarative Hook: it injects Fault into the Nth and following
// calls (Count of them, or all) of the operations in Ops whose name ends with
// Suffix. For example, to make the third write to a store file fail after
// writing 5 bytes:
//
//	fs.SetHook(Rule{Ops: []Op{OpWrite}, Suffix: ".store", Nth: 3, Count: 1,
//		Fault: Fault{Err: syscall.ENOSPC, Written: 5}}.Hook())
type Rule struct {
	Ops    []Op   // operations it applies to; empty means all
	Suffix string // only names ending with it; empty means all
	Nth    int    // 1-based index, among matching calls, of the first to fail; 0 means 1
	Count  int    // how many matching calls fail from the Nth on; 0 means all
	Fault  Fault
}

// Hook returns a Hook applying r. Each Hook counts matching calls from zero,
// from when it is created.
func (r Rule) Hook() Hook {
	seen := 0
	first := max(r.Nth, 1)
	return func(op Op, name string) Fault {
		if !r.matches(op, name) {
			return Fault{}
		}
		seen++
		if seen < first || (r.Count > 0 && seen >= first+r.Count) {
			return Fault{}
		}
		return r.Fault
	}
}

func (r Rule) matches(op Op, name string) bool {
	if !strings.HasSuffix(name, r.Suffix) {
		return false
	}
	if len(r.Ops) == 0 {
		return true
	}
	for _, o := range r.Ops {
		if o == op {
			return true
		}
	}
	return false
}

// Hooks combines hooks: every hook sees every call (so counting hooks stay
// in step) and the first fault any of them returns, in order, is injected.
func Hooks(hooks ...Hook) Hook {
	return func(op Op, name string) Fault {
		var ft Fault
		for _, h := range hooks {
			if x := h(op, name); x.Err != nil && ft.Err == nil {
				ft = x
			}
		}
		return ft
	}
}
