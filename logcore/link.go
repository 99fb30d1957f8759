package logcore

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync/atomic"
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

// ErrLinkUnsupported is returned by Cut.Link when the log's FS is not a
// Linker.
var ErrLinkUnsupported = errors.New("logcore: file system cannot hard-link")

// LinkedStore is one segment's store file linked by Cut.Link: Size bytes
// of it, from its start, are the frames of the records from Base up to the
// next LinkedStore's Base (or the cut's next offset).
type LinkedStore struct {
	Base uint64
	// Name is the link's file name in the directory given to Link.
	Name string
	Size int64
}

// StoreCut is a cut of a log linked by Cut.Link: its records
// [Lowest, Next) are the frames of Stores, in order.
type StoreCut struct {
	Lowest, Next uint64
	Stores       []LinkedStore
}

// Cut is a point in a log taken by MarkCut: the records appended so far.
// Until Release, retention removes no segment (ApplyRetention skips its
// rounds), so the cut's files stay in place to be read or linked.
type Cut struct {
	l          *Log
	Next       uint64 // the next append's offset at the cut
	activeBase uint64
	activeSize int64
	released   atomic.Bool
}

// MarkCut takes a cut of the log: the records appended so far (Next
// includes appends still waiting for their fsync, so it may be above
// NextOffset). Sealed segments are final and appends only add to the
// active one, so the bytes below the cut do not change afterwards, unless
// TruncateFrom cuts below it (it truncates the same files). Retention waits
// for Release; TruncateBefore, TruncateFrom and Reset do not.
func (l *Log) MarkCut() (*Cut, error) {
	l.adminMu.Lock()
	defer l.adminMu.Unlock()
	if l.isClosed.Load() {
		return nil, ErrClosed
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.failed != nil {
		return nil, l.failed
	}
	l.holds.Add(1)
	return &Cut{l: l, Next: l.next, activeBase: l.active.base, activeSize: l.active.size}, nil
}

// Release lets retention remove segments again. It is idempotent.
func (c *Cut) Release() {
	if c.released.CompareAndSwap(false, true) {
		c.l.holds.Add(-1)
	}
}

// Link hard-links the store file of every segment of the cut into dir
// (which must exist; the links are named prefix + the segment's file name)
// and says which bytes of each file hold the cut's records. Records still
// in the write buffer reach the files only with the next Sync: call Sync,
// and SyncDir(dir), before relying on the links. It fails with
// ErrLinkUnsupported if the FS cannot hard-link.
func (c *Cut) Link(dir, prefix string) (StoreCut, error) {
	l := c.l
	linker, ok := l.fs.(Linker)
	if !ok {
		return StoreCut{}, ErrLinkUnsupported
	}
	if c.released.Load() {
		return StoreCut{}, errors.New("logcore: link of a released cut")
	}
	l.adminMu.Lock()
	defer l.adminMu.Unlock()
	if l.isClosed.Load() {
		return StoreCut{}, ErrClosed
	}
	l.segsMu.RLock()
	segs := append([]*segment(nil), l.segs...)
	l.segsMu.RUnlock()

	cut := StoreCut{Lowest: segs[0].base, Next: c.Next}
	for _, s := range segs {
		if s.base > c.activeBase {
			break
		}
		size := c.activeSize
		if s.base < c.activeBase {
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
	}
	if len(cut.Stores) == 0 || cut.Stores[len(cut.Stores)-1].Base != c.activeBase {
		return StoreCut{}, fmt.Errorf("logcore: the cut's segment %d is gone (truncated since)", c.activeBase)
	}
	return cut, nil
}
