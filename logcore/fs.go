package logcore

import (
	"errors"
	"io"
	"io/fs"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// FS is the file system a Log uses. All of logcore's file access goes through
// it, so tests can substitute a crash simulator (see MemFS) or a fault
// injector (see FaultFS). Implementations must be safe for concurrent use.
type FS interface {
	// OpenFile opens a file as os.OpenFile does (flags os.O_RDWR,
	// os.O_CREATE, os.O_EXCL, os.O_RDONLY are used).
	OpenFile(name string, flag int, perm fs.FileMode) (File, error)
	// Remove removes a file. The removal is durable only after SyncDir.
	Remove(name string) error
	// Rename renames a file. The rename is durable only after SyncDir.
	Rename(oldname, newname string) error
	// MkdirAll creates a directory and its parents, durably.
	MkdirAll(dir string, perm fs.FileMode) error
	// ReadDir lists the names of the entries of a directory.
	ReadDir(dir string) ([]string, error)
	// SyncDir makes creations, removals and renames in dir durable.
	SyncDir(dir string) error
	// RemoveAll removes a directory tree.
	RemoveAll(dir string) error
}

// File is an open file of an FS.
type File interface {
	io.ReaderAt
	io.WriterAt
	// Write appends at the file's write position (files are used either
	// with Write or with WriteAt, never both).
	io.Writer
	// Seek is used once after open to put the write position at the end.
	io.Seeker
	// Sync makes the file's data durable (fdatasync).
	Sync() error
	// Truncate changes the file's size.
	Truncate(size int64) error
	// Size returns the file's current size.
	Size() (int64, error)
	Close() error
	// Map maps the first size bytes of the file (which is at least that
	// long) for reading and writing. Writes to the mapping are file writes:
	// durable after Sync. The mapping is valid until Unmap or Close.
	Map(size int) ([]byte, error)
	// Unmap releases a mapping made by Map.
	Unmap(b []byte) error
}

// OSFS is the real file system.
type OSFS struct{}

var _ FS = OSFS{}

func (OSFS) OpenFile(name string, flag int, perm fs.FileMode) (File, error) {
	f, err := os.OpenFile(name, flag, perm)
	if err != nil {
		return nil, err
	}
	return &osFile{f}, nil
}

func (OSFS) Remove(name string) error { return os.Remove(name) }

func (OSFS) Rename(oldname, newname string) error { return os.Rename(oldname, newname) }

func (o OSFS) MkdirAll(dir string, perm fs.FileMode) error {
	dir = filepath.Clean(dir)
	// Find the directories that do not exist yet, so that each new entry
	// can be made durable by syncing its parent.
	var created []string
	for d := dir; ; d = filepath.Dir(d) {
		if _, err := os.Stat(d); err == nil {
			break
		} else if !errors.Is(err, fs.ErrNotExist) {
			return err
		}
		created = append(created, d)
		if filepath.Dir(d) == d {
			break
		}
	}
	if len(created) == 0 {
		return nil
	}
	if err := os.MkdirAll(dir, perm); err != nil {
		return err
	}
	for _, d := range created {
		if err := o.SyncDir(filepath.Dir(d)); err != nil {
			return err
		}
	}
	return nil
}

func (OSFS) ReadDir(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	names := make([]string, 0, len(entries))
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names, nil
}

func (OSFS) SyncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	err = d.Sync()
	if cerr := d.Close(); err == nil {
		err = cerr
	}
	return err
}

func (OSFS) RemoveAll(dir string) error { return os.RemoveAll(dir) }

type osFile struct{ *os.File }

func (f *osFile) Sync() error {
	for {
		err := unix.Fdatasync(int(f.Fd()))
		if err != unix.EINTR {
			if err != nil {
				return &os.PathError{Op: "fdatasync", Path: f.Name(), Err: err}
			}
			return nil
		}
	}
}

func (f *osFile) Size() (int64, error) {
	fi, err := f.Stat()
	if err != nil {
		return 0, err
	}
	return fi.Size(), nil
}

func (f *osFile) Map(size int) ([]byte, error) {
	if size == 0 {
		return nil, nil
	}
	b, err := unix.Mmap(int(f.Fd()), 0, size, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, &os.PathError{Op: "mmap", Path: f.Name(), Err: err}
	}
	return b, nil
}

func (f *osFile) Unmap(b []byte) error {
	if len(b) == 0 {
		return nil
	}
	return unix.Munmap(b)
}
