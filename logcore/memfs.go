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
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
)

// MemFS is an in-memory FS for tests that simulates crashes exactly, in the
// spirit of pebble's strict MemFS. It is safe for concurrent use. Contract:
//
//   - Paths are cleaned with path/filepath and resolved from a single root:
//     the working directory is "/", so "db/x" and "/db/x" name the same file.
//   - Directories must exist (MkdirAll) before entries are created in them.
//     Errors are *fs.PathError (*os.LinkError for Rename) wrapping syscall
//     errnos, so errors.Is(err, fs.ErrNotExist) and fs.ErrExist work as with
//     the os package.
//   - Every file (inode) has current contents and synced contents. Write,
//     WriteAt, Truncate, O_TRUNC and stores through a mapping change only the
//     current contents; File.Sync copies them to the synced contents.
//   - Creating, removing and renaming entries changes the live namespace at
//     once, but each directory also has a durable view (name -> inode) that
//     changes only on SyncDir of that directory. MkdirAll is durable at once
//     (as OSFS.MkdirAll is); RemoveAll is like Remove: durable after SyncDir
//     of the parent.
//   - Crash simulates a power loss: see Crash and CrashOptions.
type MemFS struct {
	mu   sync.Mutex
	root *memNode
	gen  uint64 // incremented by Crash; Files of earlier generations are dead
	open int    // Files opened and not closed (of the current generation)
}

// OpenFiles returns how many Files are open: what a process would hold as
// file descriptors.
func (m *MemFS) OpenFiles() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.open
}

var _ FS = (*MemFS)(nil)

// ErrCrashed is wrapped by every error returned by a File that was open when
// its MemFS crashed. Those errors also match os.ErrClosed.
var ErrCrashed = errors.New("memfs: file system crashed")

var errFileCrashed = fmt.Errorf("%w: %w", ErrCrashed, os.ErrClosed)

// errMemMapped is returned by a write or truncate that would have to move the
// contents of a mapped file in memory.
var errMemMapped = errors.New("memfs: file is mapped and cannot grow beyond its mapped capacity")

const memMaxFileSize = 1 << 34 // a bad offset fails with EFBIG, not out of memory

// memNode is a directory or a file (inode).
type memNode struct {
	isDir bool
	// Directory: the live namespace and the durable one (as of the last
	// SyncDir). Both maps are non-nil for a directory.
	live, durable map[string]*memNode
	// File: data is the current contents (its backing array is aliased by
	// mappings, so it is never reallocated while maps > 0); synced is the
	// contents as of the last Sync and is never modified in place.
	data   []byte
	synced []byte
	maps   int
	// holes are the ranges of data that grew by a truncate (or by a
	// write past the end) and were not written since, sorted and
	// disjoint: on a real file system they have no blocks. A write call
	// fills them; a store through a mapping does not (see StoresInHoles).
	holes []memSpan
}

// memSpan is the byte range [from, to).
type memSpan struct{ from, to int }

// fill removes [from, to) from the holes.
func (n *memNode) fill(from, to int) {
	if len(n.holes) == 0 || from >= to {
		return
	}
	var out []memSpan
	for _, h := range n.holes {
		if h.to <= from || h.from >= to {
			out = append(out, h)
			continue
		}
		if h.from < from {
			out = append(out, memSpan{h.from, from})
		}
		if h.to > to {
			out = append(out, memSpan{to, h.to})
		}
	}
	n.holes = out
}

func newMemDir() *memNode {
	return &memNode{isDir: true, live: map[string]*memNode{}, durable: map[string]*memNode{}}
}

// NewMemFS returns an empty MemFS holding only the root directory "/".
func NewMemFS() *MemFS { return &MemFS{root: newMemDir()} }

// memSplit cleans name and splits it into path elements below the root.
func memSplit(name string) []string {
	p := filepath.Clean(filepath.Join(string(filepath.Separator), name))
	if p == string(filepath.Separator) {
		return nil
	}
	return strings.Split(p[1:], string(filepath.Separator))
}

// walkLocked returns the directory named by parts.
func (m *MemFS) walkLocked(parts []string) (*memNode, error) {
	n := m.root
	for _, p := range parts {
		if n = n.live[p]; n == nil {
			return nil, syscall.ENOENT
		} else if !n.isDir {
			return nil, syscall.ENOTDIR
		}
	}
	return n, nil
}

// parentLocked returns the directory holding name and name's last element.
func (m *MemFS) parentLocked(name string) (*memNode, string, error) {
	parts := memSplit(name)
	if len(parts) == 0 {
		return nil, "", syscall.EINVAL // the root has no parent
	}
	dir, err := m.walkLocked(parts[:len(parts)-1])
	if err != nil {
		return nil, "", err
	}
	return dir, parts[len(parts)-1], nil
}

// OpenFile opens or creates a file. Supported flags are the access modes
// (os.O_RDONLY, os.O_WRONLY, os.O_RDWR) and os.O_CREATE, os.O_EXCL,
// os.O_TRUNC and os.O_APPEND; perm is ignored. Opening a directory fails
// with EISDIR. A created file is in the live namespace only until SyncDir of
// its directory.
func (m *MemFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	dir, base, err := m.parentLocked(name)
	if err != nil {
		if err == syscall.EINVAL {
			err = syscall.EISDIR
		}
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	acc, n := flag&(os.O_RDONLY|os.O_WRONLY|os.O_RDWR), dir.live[base]
	switch {
	case n == nil && flag&os.O_CREATE == 0:
		err = syscall.ENOENT
	case n == nil:
		n = &memNode{}
		dir.live[base] = n
	case flag&(os.O_CREATE|os.O_EXCL) == os.O_CREATE|os.O_EXCL:
		err = syscall.EEXIST
	case n.isDir:
		err = syscall.EISDIR
	case flag&os.O_TRUNC != 0 && acc != os.O_RDONLY:
		err = n.resize(0, true)
	}
	if err != nil {
		return nil, &fs.PathError{Op: "open", Path: name, Err: err}
	}
	m.open++
	return &memFile{fs: m, node: n, name: name, gen: m.gen, read: acc != os.O_WRONLY,
		write: acc != os.O_RDONLY, append: flag&os.O_APPEND != 0}, nil
}

// Remove removes a file or an empty directory from the live namespace; the
// removal is durable after SyncDir of its directory.
func (m *MemFS) Remove(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	dir, base, err := m.parentLocked(name)
	if err != nil {
		return &fs.PathError{Op: "remove", Path: name, Err: err}
	}
	switch n := dir.live[base]; {
	case n == nil:
		err = syscall.ENOENT
	case n.isDir && len(n.live) > 0:
		err = syscall.ENOTEMPTY
	default:
		delete(dir.live, base)
		return nil
	}
	return &fs.PathError{Op: "remove", Path: name, Err: err}
}

// Rename renames a file or directory, replacing newname if it is a file (or
// an empty directory, when oldname is one). The change is live at once and
// durable in each of the two directories after SyncDir of that directory:
// syncing only one of them can leave the inode under both names, or neither,
// after a crash.
func (m *MemFS) Rename(oldname, newname string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	lerr := func(err error) error {
		return &os.LinkError{Op: "rename", Old: oldname, New: newname, Err: err}
	}
	odir, obase, err := m.parentLocked(oldname)
	if err != nil {
		return lerr(err)
	}
	ndir, nbase, err := m.parentLocked(newname)
	if err != nil {
		return lerr(err)
	}
	src := odir.live[obase]
	if src == nil {
		return lerr(syscall.ENOENT)
	}
	dst := ndir.live[nbase]
	if dst == src {
		return nil
	}
	if src.isDir {
		op, np := memSplit(oldname), memSplit(newname)
		switch {
		case len(np) > len(op) && slices.Equal(np[:len(op)], op):
			return lerr(syscall.EINVAL) // into its own subtree
		case dst != nil && !dst.isDir:
			return lerr(syscall.ENOTDIR)
		case dst != nil && len(dst.live) > 0:
			return lerr(syscall.ENOTEMPTY)
		}
	} else if dst != nil && dst.isDir {
		return lerr(syscall.EISDIR)
	}
	delete(odir.live, obase)
	ndir.live[nbase] = src
	return nil
}

// MkdirAll creates dir and its missing parents, durably at once. It fails
// with ENOTDIR if a path element is a file.
func (m *MemFS) MkdirAll(dir string, perm fs.FileMode) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	n := m.root
	for _, p := range memSplit(dir) {
		c := n.live[p]
		if c == nil {
			c = newMemDir()
			n.live[p] = c
			n.durable[p] = c
		} else if !c.isDir {
			return &fs.PathError{Op: "mkdir", Path: dir, Err: syscall.ENOTDIR}
		}
		n = c
	}
	return nil
}

// ReadDir returns the sorted names of the live entries of dir (files and
// directories).
func (m *MemFS) ReadDir(dir string) ([]string, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, err := m.walkLocked(memSplit(dir))
	if err != nil {
		return nil, &fs.PathError{Op: "readdir", Path: dir, Err: err}
	}
	return slices.Sorted(maps.Keys(d.live)), nil
}

// SyncDir makes dir's durable view equal to its live namespace.
func (m *MemFS) SyncDir(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	d, err := m.walkLocked(memSplit(dir))
	if err != nil {
		return &fs.PathError{Op: "sync", Path: dir, Err: err}
	}
	d.durable = maps.Clone(d.live)
	return nil
}

// RemoveAll removes dir (a directory tree or a file) from the live
// namespace of its parent; it is not an error if dir does not exist. As with
// Remove, the removal is durable after SyncDir of the parent; until then a
// crash brings the tree back as its directories' durable views describe it.
func (m *MemFS) RemoveAll(dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	parent, base, err := m.parentLocked(dir)
	switch err {
	case nil:
		delete(parent.live, base)
	case syscall.ENOENT:
	default:
		return &fs.PathError{Op: "removeall", Path: dir, Err: err}
	}
	return nil
}

// CrashOptions says what Crash does with the unsynced bytes appended to each
// file, that is its current bytes beyond its synced length. The zero value
// loses them all. With KeepUnsyncedPrefix or ZeroUnsyncedTail, lengths are
// drawn independently per file, visiting files in sorted path order, from
// Rand or, if Rand is nil, from a generator seeded with Seed, so a given seed
// gives the same surviving state for the same history.
//
// Overwrites within the synced length (WriteAt, stores through a mapping)
// and unsynced truncations are always lost.
type CrashOptions struct {
	// KeepUnsyncedPrefix keeps a random prefix (possibly empty or whole) of
	// the unsynced appended bytes, as in-order writeback would.
	KeepUnsyncedPrefix bool
	// ZeroUnsyncedTail extends the file, after any kept prefix, with a
	// random number of zero bytes (at most up to the current length) instead
	// of the data, as ext4's delayed allocation can leave after a crash.
	ZeroUnsyncedTail bool
	// Rand, if non-nil, is used instead of Seed.
	Rand *rand.Rand
	// Seed seeds the generator when Rand is nil.
	Seed int64
}

// Crash simulates a power loss and reboot:
//
//   - every File open before the crash becomes unusable: its methods return
//     an error wrapping ErrCrashed and os.ErrClosed. Its mappings remain valid
//     memory, but they no longer alias any file, so stores to them after the
//     crash never reach the surviving state;
//   - the namespace reverts to each directory's durable view, starting from
//     the root (directories and files reachable only through live entries
//     are gone);
//   - each surviving file's contents revert to its synced contents, plus
//     what opts keeps; the result is then the file's synced contents.
//
// Afterwards the MemFS is usable again; new OpenFile calls see the surviving
// state. Crash reads a file's current contents only beyond its synced length
// and only with KeepUnsyncedPrefix, so a goroutine still storing to a stale
// mapping does not race with it otherwise.
func (m *MemFS) Crash(opts CrashOptions) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.gen++
	m.open = 0 // every File open before is unusable
	rng := opts.Rand
	if rng == nil {
		rng = rand.New(rand.NewPCG(uint64(opts.Seed), 0x6d656d6673))
	}
	seen := map[*memNode]bool{m.root: true}
	var walk func(d *memNode)
	walk = func(d *memNode) {
		d.live = maps.Clone(d.durable)
		for _, name := range slices.Sorted(maps.Keys(d.durable)) {
			c := d.durable[name]
			if seen[c] {
				continue
			}
			seen[c] = true
			if c.isDir {
				walk(c)
			} else {
				c.crash(&opts, rng)
			}
		}
	}
	walk(m.root)
}

// crash replaces the file's contents by what survives a crash, in a new
// backing array so that stale mappings alias nothing.
func (n *memNode) crash(opts *CrashOptions, rng *rand.Rand) {
	s := len(n.synced)
	data := make([]byte, s, max(s, len(n.data)))
	copy(data, n.synced)
	if extra := len(n.data) - s; extra > 0 {
		keep := 0
		if opts.KeepUnsyncedPrefix {
			keep = rng.IntN(extra + 1)
			data = append(data, n.data[s:s+keep]...)
		}
		if opts.ZeroUnsyncedTail {
			data = append(data, make([]byte, rng.IntN(extra-keep+1))...)
		}
	}
	n.data = data
	n.synced = bytes.Clone(data)
	n.maps = 0
	// What survives is written data: the holes of before are gone (a
	// store into one before the crash is found by a check before it).
	n.holes = nil
}

// StoresInHoles returns the files (with the offset) that hold a non-zero
// byte in a hole: a range that grew by a truncate and was never written
// since. Only a store through a mapping puts bytes there. On a real file
// system such a store must allocate a block when it faults, and on a full
// disk the kernel answers with SIGBUS, which kills the process: space
// must be written (index.reserve) before entries are stored into it.
// Tests check it. (A store of zeros is not seen.)
func (m *MemFS) StoresInHoles() []string {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []string
	seen := map[*memNode]bool{}
	var walk func(dir string, d *memNode)
	walk = func(dir string, d *memNode) {
		for _, name := range slices.Sorted(maps.Keys(d.live)) {
			c, p := d.live[name], dir+"/"+name
			if seen[c] {
				continue
			}
			seen[c] = true
			if c.isDir {
				walk(p, c)
				continue
			}
			for _, h := range c.holes {
				if i := slices.IndexFunc(c.data[h.from:h.to], func(b byte) bool { return b != 0 }); i >= 0 {
					out = append(out, fmt.Sprintf("%s at %d", p, h.from+i))
					break
				}
			}
		}
	}
	walk("", m.root)
	return out
}

// lookupFileLocked returns the file named name.
func (m *MemFS) lookupFileLocked(op, name string) (*memNode, error) {
	dir, base, err := m.parentLocked(name)
	if err == nil {
		switch n := dir.live[base]; {
		case n == nil:
			err = syscall.ENOENT
		case n.isDir:
			err = syscall.EISDIR
		default:
			return n, nil
		}
	}
	return nil, &fs.PathError{Op: op, Path: name, Err: err}
}

// ReadFile returns a copy of the current contents of a file.
func (m *MemFS) ReadFile(name string) ([]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, err := m.lookupFileLocked("read", name)
	if err != nil {
		return nil, err
	}
	return bytes.Clone(n.data), nil
}

// Size returns the current size of a file.
func (m *MemFS) Size(name string) (int64, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	n, err := m.lookupFileLocked("stat", name)
	if err != nil {
		return 0, err
	}
	return int64(len(n.data)), nil
}

// WriteFile sets the current contents of a file to data, creating the file
// (in an existing directory) if needed; open Files see the change. If synced
// is true, the contents and the file's directory entry (only that entry) are
// made durable too, as if the file and its directory had been synced. It is
// meant for tests that damage or forge files. It fails if the file is mapped
// and data is longer than the mapped capacity.
func (m *MemFS) WriteFile(name string, data []byte, synced bool) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	dir, base, err := m.parentLocked(name)
	if err != nil {
		return &fs.PathError{Op: "write", Path: name, Err: err}
	}
	n := dir.live[base]
	if n == nil {
		n = &memNode{}
		dir.live[base] = n
	} else if n.isDir {
		err = syscall.EISDIR
	}
	if err == nil {
		err = n.resize(len(data), true)
	}
	if err != nil {
		return &fs.PathError{Op: "write", Path: name, Err: err}
	}
	copy(n.data, data)
	n.fill(0, len(data)) // written, not a hole
	if synced {
		n.synced = bytes.Clone(n.data)
		dir.durable[base] = n
	}
	return nil
}

// resize sets the current length of the file to size, zeroing any bytes it
// exposes. The backing array is reused when it is large enough (a mapping
// keeps aliasing it); otherwise it is reallocated, which fails while the file
// is mapped. exact allocates exactly size bytes instead of growing
// geometrically.
func (n *memNode) resize(size int, exact bool) error {
	if size < 0 || size > memMaxFileSize {
		return syscall.EFBIG
	}
	old := len(n.data)
	if size > cap(n.data) {
		if n.maps > 0 {
			return errMemMapped
		}
		c := size
		if !exact {
			c = max(size, 2*cap(n.data))
		}
		data := make([]byte, old, c)
		copy(data, n.data)
		n.data = data
	}
	n.data = n.data[:size]
	if size > old {
		clear(n.data[old:])
		n.holes = append(n.holes, memSpan{old, size})
	} else {
		n.fill(size, old)
	}
	return nil
}

// memFile is an open File of a MemFS. Its fields are guarded by fs.mu.
type memFile struct {
	fs                          *MemFS
	node                        *memNode
	name                        string
	gen                         uint64 // fs.gen when opened
	read, write, append, closed bool
	off                         int64
	maps                        [][]byte // live mappings made by Map
}

var _ File = (*memFile)(nil)

// lock locks the FS for op on f, or returns the error if op cannot run
// (leaving the FS unlocked): f is closed, crashed, or lacks the access mode
// (need is 'r', 'w' or 0).
func (f *memFile) lock(op string, need byte) error {
	f.fs.mu.Lock()
	var err error
	switch {
	case f.closed:
		err = os.ErrClosed
	case f.gen != f.fs.gen:
		err = errFileCrashed
	case need == 'r' && !f.read, need == 'w' && !f.write:
		err = syscall.EBADF
	default:
		return nil
	}
	f.fs.mu.Unlock()
	return f.err(op, err)
}

func (f *memFile) err(op string, err error) error {
	return &fs.PathError{Op: op, Path: f.name, Err: err}
}

// ReadAt reads from the current contents as os.File.ReadAt does: a read
// that ends past the end of the file returns the bytes read and io.EOF.
func (f *memFile) ReadAt(p []byte, off int64) (int, error) {
	if err := f.lock("read", 'r'); err != nil {
		return 0, err
	}
	defer f.fs.mu.Unlock()
	if off < 0 {
		return 0, f.err("readat", syscall.EINVAL)
	}
	if off >= int64(len(f.node.data)) {
		return 0, io.EOF
	}
	if n := copy(p, f.node.data[off:]); n < len(p) {
		return n, io.EOF
	}
	return len(p), nil
}

// writeAtLocked writes p at off, growing the file (zero-filling any gap).
func (f *memFile) writeAtLocked(op string, p []byte, off int64) (int, error) {
	if off < 0 {
		return 0, f.err(op, syscall.EINVAL)
	}
	end := off + int64(len(p))
	if end > memMaxFileSize {
		return 0, f.err(op, syscall.EFBIG)
	}
	if end > int64(len(f.node.data)) {
		if err := f.node.resize(int(end), false); err != nil {
			return 0, f.err(op, err)
		}
	}
	f.node.fill(int(off), int(end))
	return copy(f.node.data[off:], p), nil
}

// WriteAt writes p at off, extending the file if needed. As with os.File,
// it fails on a file opened with os.O_APPEND.
func (f *memFile) WriteAt(p []byte, off int64) (int, error) {
	if err := f.lock("write", 'w'); err != nil {
		return 0, err
	}
	defer f.fs.mu.Unlock()
	if f.append {
		return 0, errors.New("os: invalid use of WriteAt on file opened with O_APPEND")
	}
	return f.writeAtLocked("write", p, off)
}

// Write writes p at the file's offset (at its end with os.O_APPEND) and
// advances the offset.
func (f *memFile) Write(p []byte) (int, error) {
	if err := f.lock("write", 'w'); err != nil {
		return 0, err
	}
	defer f.fs.mu.Unlock()
	off := f.off
	if f.append {
		off = int64(len(f.node.data))
	}
	n, err := f.writeAtLocked("write", p, off)
	f.off = off + int64(n)
	return n, err
}

// Seek sets the offset for the next Write (io.SeekStart, io.SeekCurrent or
// io.SeekEnd); a resulting negative offset is an error.
func (f *memFile) Seek(offset int64, whence int) (int64, error) {
	if err := f.lock("seek", 0); err != nil {
		return 0, err
	}
	defer f.fs.mu.Unlock()
	switch whence {
	case io.SeekCurrent:
		offset += f.off
	case io.SeekEnd:
		offset += int64(len(f.node.data))
	case io.SeekStart:
	default:
		offset = -1
	}
	if offset < 0 {
		return 0, f.err("seek", syscall.EINVAL)
	}
	f.off = offset
	return offset, nil
}

// Sync makes the current contents the synced contents.
func (f *memFile) Sync() error {
	if err := f.lock("sync", 0); err != nil {
		return err
	}
	defer f.fs.mu.Unlock()
	f.node.synced = bytes.Clone(f.node.data)
	return nil
}

// Truncate sets the current size, zero-extending. While the file is mapped
// it fails if size exceeds the capacity the file had when first mapped.
func (f *memFile) Truncate(size int64) error {
	if err := f.lock("truncate", 'w'); err != nil {
		return err
	}
	defer f.fs.mu.Unlock()
	if size < 0 || size > memMaxFileSize {
		return f.err("truncate", syscall.EINVAL)
	}
	if err := f.node.resize(int(size), true); err != nil {
		return f.err("truncate", err)
	}
	return nil
}

// Size returns the current size.
func (f *memFile) Size() (int64, error) {
	if err := f.lock("stat", 0); err != nil {
		return 0, err
	}
	defer f.fs.mu.Unlock()
	return int64(len(f.node.data)), nil
}

// Close releases the File and its mappings (whose memory stays valid but no
// longer aliases the file once it is resized). Closing twice is an error.
func (f *memFile) Close() error {
	if err := f.lock("close", 0); err != nil {
		return err
	}
	defer f.fs.mu.Unlock()
	f.closed = true
	f.fs.open--
	f.node.maps -= len(f.maps)
	f.maps = nil
	return nil
}

// Map returns a slice aliasing the first size bytes of the current contents
// (nil for size 0, as OSFS does). It fails if the file is shorter than size
// or was opened read-only or write-only. While any mapping exists the file's
// backing array is never moved: a write or truncate that would need a larger
// one fails.
func (f *memFile) Map(size int) ([]byte, error) {
	if err := f.lock("mmap", 0); err != nil {
		return nil, err
	}
	defer f.fs.mu.Unlock()
	if !f.read || !f.write {
		return nil, f.err("mmap", syscall.EACCES)
	}
	if size < 0 || size > len(f.node.data) {
		return nil, f.err("mmap", fmt.Errorf("%w: mapping %d bytes of a %d-byte file", syscall.EINVAL, size, len(f.node.data)))
	}
	if size == 0 {
		return nil, nil
	}
	b := f.node.data[:size:size]
	f.maps = append(f.maps, b)
	f.node.maps++
	return b, nil
}

// Unmap releases a mapping returned by Map on this File.
func (f *memFile) Unmap(b []byte) error {
	if err := f.lock("munmap", 0); err != nil {
		return err
	}
	defer f.fs.mu.Unlock()
	if len(b) == 0 {
		return nil
	}
	for i, m := range f.maps {
		if &m[0] == &b[0] && len(m) == len(b) {
			f.maps = slices.Delete(f.maps, i, i+1)
			f.node.maps--
			return nil
		}
	}
	return f.err("munmap", syscall.EINVAL)
}
