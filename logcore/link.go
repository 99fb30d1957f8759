package logcore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// Linker is implemented by file systems that can hard-link a file. A hard
// link shares the file's data, so a log's sealed segments (which never
// change) and the written prefix of its active segment can be kept by
// another owner, such as a snapshot, without copying them.
type Linker interface {
	// Link makes newname a hard link to oldname. It is durable only after
	// SyncDir of newname's directory.
	Link(oldname, newname string) error
}

// Link makes newname a hard link to oldname.
func (OSFS) Link(oldname, newname string) error { return os.Link(oldname, newname) }

// ErrLinkUnsupported is returned by LinkStores when the log's FS is not a
// Linker.
var ErrLinkUnsupported = errors.New("logcore: file system cannot hard-link")

// LinkedStore is one segment's store file linked by LinkStores: Size bytes
// of it, from its start, are the frames of the records from Base up to the
// next LinkedStore's Base (or the cut's next offset).
type LinkedStore struct {
	Base uint64
	// Name is the link's file name in the directory given to LinkStores.
	Name string
	Size int64
}

// StoreCut is a consistent cut of a log made by LinkStores: its records
// [Lowest, Next) are the frames of Stores, in order.
type StoreCut struct {
	Lowest, Next uint64
	Stores       []LinkedStore
}

// LinkStores hard-links the store file of every segment into dir (which
// must exist; the links are named prefix + the segment's file name) and
// returns the cut: which bytes of each file hold the records appended so
// far (Next is the next append's offset; it includes appends still waiting
// for their fsync, so it may be above NextOffset). Sealed segments are final
// and appends only add to the active one, so the bytes below the cut do not
// change afterwards, unless TruncateFrom cuts below it: it truncates the
// same files, and later appends write other records at those positions
// (Reset removes the files, which leaves the links intact). Records still
// in the write buffer reach the files only with the next Sync: call Sync,
// and SyncDir(dir), before relying on the links. Retention and truncation
// wait until it returns, so it never links half a log. It fails with
// ErrLinkUnsupported if the FS cannot hard-link.
func (l *Log) LinkStores(dir, prefix string) (StoreCut, error) {
	linker, ok := l.fs.(Linker)
	if !ok {
		return StoreCut{}, ErrLinkUnsupported
	}
	l.adminMu.Lock()
	defer l.adminMu.Unlock()
	if l.isClosed.Load() {
		return StoreCut{}, ErrClosed
	}
	l.mu.Lock()
	if l.failed != nil {
		err := l.failed
		l.mu.Unlock()
		return StoreCut{}, err
	}
	next, active, activeSize := l.next, l.active, l.active.size
	l.mu.Unlock()
	l.segsMu.RLock()
	segs := append([]*segment(nil), l.segs...)
	l.segsMu.RUnlock()

	cut := StoreCut{Lowest: segs[0].base, Next: next}
	for _, s := range segs {
		var size int64
		if s == active {
			size = activeSize
		} else {
			n, err := l.sealedSize(s)
			if err != nil {
				return StoreCut{}, err
			}
			size = n
		}
		name := prefix + segmentName(s.base) + storeExt
		if err := linker.Link(s.path(storeExt), filepath.Join(dir, name)); err != nil {
			return StoreCut{}, fmt.Errorf("logcore: link %s: %w", s.path(storeExt), err)
		}
		cut.Stores = append(cut.Stores, LinkedStore{Base: s.base, Name: name, Size: size})
		if s == active {
			break
		}
	}
	return cut, nil
}
