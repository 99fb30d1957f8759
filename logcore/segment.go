package logcore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
)

const (
	storeExt     = ".store"
	indexExt     = ".index"
	timeIndexExt = ".timeindex"
)

// segmentName returns the file name stem of the segment at base.
func segmentName(base uint64) string { return fmt.Sprintf("%020d", base) }

// parseSegmentName returns the base offset of a segment file name and its
// extension, or ok false for a file that is not a segment's.
func parseSegmentName(name string) (base uint64, ext string, ok bool) {
	ext = filepath.Ext(name)
	switch ext {
	case storeExt, indexExt, timeIndexExt:
	default:
		return 0, "", false
	}
	stem := strings.TrimSuffix(name, ext)
	if len(stem) != 20 {
		return 0, "", false
	}
	base, err := strconv.ParseUint(stem, 10, 64)
	if err != nil || base > maxOffset {
		return 0, "", false
	}
	return base, ext, true
}

// segment is a run of records from base to the next segment's base.
//
// Its files are open while it is active, or while it is a sealed segment in
// the log's cache of open segments. fmu guards the files' lifetime: readers
// hold it shared while they use the files, and whoever opens or closes them
// holds it exclusively.
type segment struct {
	dir  string
	base uint64

	fmu     sync.RWMutex
	store   File        // nil while closed; guarded by fmu
	idx     *index      // nil while closed; guarded by fmu
	deleted bool        // guarded by fmu: files removed, reads must fail
	sealed  atomic.Bool // no more appends; count is final
	// count is the number of records; for a sealed segment it is final,
	// for the active one it is written under Log.mu and read by readers
	// only through the log's visible offset.
	count uint32

	// storeBytes is the store's size for sealed segments (-1: not known
	// yet); the active segment's size is size.
	storeBytes atomic.Int64
	// maxTime is the segment's newest timestamp, math.MinInt64 if not
	// known yet (sealed segments load it lazily).
	maxTime atomic.Int64
	// lastUsed is a tick of the log's clock, for the open-segment cache.
	lastUsed atomic.Uint64

	// The fields below belong to the active segment and are guarded by
	// Log.mu.
	size       int64        // store bytes including buf
	flushed    atomic.Int64 // store bytes written to the file
	buf        []byte       // frames not yet written to the file
	times      []timeEntry  // time index entries written
	timeFile   File         // open time index while active
	tt         timeTracker  // time index state
	prewritten int64        // store bytes on file: data, then prewritten zeros
	pendTimes  []byte       // time entries not yet written
	timeOnFile int64        // bytes of time index on file
	timesLag   bool         // pendTimes could not be written (reported once)
	// parked: the FileBudget closed the active segment's files while the
	// log was idle (see Log.park); idxBacked keeps the index's backed
	// meanwhile. Guarded by Log.mu (and set under fmu).
	parked    bool
	idxBacked int64

	// files is the budget the segment's open files count against, if any.
	files *FileBudget
}

// indexed returns how many records of a sealed segment its index holds:
// its count, unless records were missing when the index was rebuilt.
// Callers hold fmu shared with the files open.
func (s *segment) indexed() uint32 { return min(s.count, s.idx.capacity()) }

func (s *segment) path(ext string) string { return filepath.Join(s.dir, segmentName(s.base)+ext) }

// closeFiles closes the segment's files. Callers hold fmu exclusively.
func (s *segment) closeFiles() error {
	if s.files != nil && (s.store != nil || s.idx != nil || s.timeFile != nil) {
		s.files.remove(s)
	}
	var errs []error
	if s.idx != nil {
		errs = append(errs, s.idx.close())
		s.idx = nil
	}
	if s.store != nil {
		errs = append(errs, s.store.Close())
		s.store = nil
	}
	if s.timeFile != nil {
		errs = append(errs, s.timeFile.Close())
		s.timeFile = nil
	}
	return errors.Join(errs...)
}

// openSealed opens a sealed segment's store and index for reading. The index
// must hold exactly count entries whose last one points into the store;
// otherwise it is rebuilt from the store. Callers hold fmu exclusively.
func (s *segment) openSealed(fsys FS, l *Log) error {
	store, err := fsys.OpenFile(s.path(storeExt), os.O_RDONLY, 0)
	if err != nil {
		return err
	}
	storeSize, err := store.Size()
	if err != nil {
		store.Close()
		return err
	}
	s.storeBytes.Store(storeSize)
	f, err := fsys.OpenFile(s.path(indexExt), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		store.Close()
		return err
	}
	idxSize, err := f.Size()
	if err != nil {
		f.Close()
		store.Close()
		return err
	}
	want := int64(s.count) * indexEntryWidth
	if idxSize == want && s.count > 0 {
		x, err := openIndexFile(f, want)
		if err != nil {
			f.Close()
			store.Close()
			return err
		}
		if indexInOrder(x, s.count, storeSize) {
			s.store, s.idx = store, x
			return nil
		}
		x.close()
		f, err = fsys.OpenFile(s.path(indexExt), os.O_RDWR|os.O_CREATE, 0o644)
		if err != nil {
			store.Close()
			return err
		}
	}
	// Rebuild the index from the store.
	l.logger.Warn("logcore: rebuilding index of sealed segment", "segment", s.path(indexExt), "index_bytes", idxSize, "want_bytes", want)
	l.stats.indexRebuilds.Add(1)
	sc, err := scanStore(store, storeSize, s.base)
	if err != nil && !errors.Is(err, errTorn) {
		f.Close()
		store.Close()
		return err
	}
	if uint32(len(sc.positions)) < s.count {
		l.logger.Error("logcore: sealed segment is missing records", "segment", s.path(storeExt), "have", len(sc.positions), "want", s.count)
	}
	n := min(uint32(len(sc.positions)), s.count)
	x, err := writeIndex(f, sc.positions[:n], int64(n)*indexEntryWidth)
	if err != nil {
		f.Close()
		store.Close()
		return err
	}
	s.store, s.idx = store, x
	return nil
}

// writeIndex replaces f's contents with entries for positions, sized to
// size bytes (at least the entries), syncs it and maps it. The entries are
// written with write calls, not through the mapping, so that a full disk
// is an error (see index.backed).
func writeIndex(f File, positions []uint64, size int64) (*index, error) {
	if err := f.Truncate(0); err != nil {
		return nil, err
	}
	var b []byte
	var at int64
	for i, p := range positions {
		b = binary.BigEndian.AppendUint32(b, uint32(i))
		b = binary.BigEndian.AppendUint64(b, p)
		if len(b) >= 64<<10 || i == len(positions)-1 {
			if _, err := f.WriteAt(b, at); err != nil {
				return nil, err
			}
			at += int64(len(b))
			b = b[:0]
		}
	}
	x, err := openIndexFile(f, size)
	if err != nil {
		return nil, err
	}
	x.backed = at
	if err := f.Sync(); err != nil {
		x.file.Unmap(x.mmap)
		return nil, err
	}
	return x, nil
}

// readFrameAt reads the frame at pos, whose end is at most limit (the store
// size visible to the reader), and checks that it holds offset off.
func readFrameAt(store File, pos, limit int64, off uint64) (Record, error) {
	if pos+frameHeaderSize > limit {
		return Record{}, corruptf("offset %d: position %d past end of store %d", off, pos, limit)
	}
	// Read a guess of the frame's size in one call, then the rest.
	want := min(limit-pos, 512)
	b := make([]byte, want)
	if _, err := store.ReadAt(b, pos); err != nil && !(errors.Is(err, io.EOF)) {
		return Record{}, err
	}
	n, err := frameLength(b)
	if err != nil {
		return Record{}, fmt.Errorf("offset %d: %w", off, err)
	}
	if total := int64(frameHeaderSize + n); total > int64(len(b)) {
		if pos+total > limit {
			return Record{}, corruptf("offset %d: frame of %d bytes at %d runs past the store's end %d", off, total, pos, limit)
		}
		nb := make([]byte, total)
		copy(nb, b)
		if _, err := store.ReadAt(nb[len(b):], pos+int64(len(b))); err != nil && !errors.Is(err, io.EOF) {
			return Record{}, err
		}
		b = nb
	}
	rec, _, err := DecodeFrame(b)
	if err != nil {
		if errors.Is(err, errTorn) {
			err = corruptf("frame cut short")
		}
		return Record{}, fmt.Errorf("offset %d at position %d: %w", off, pos, err)
	}
	if rec.Offset != off {
		return Record{}, corruptf("position %d holds offset %d, want %d", pos, rec.Offset, off)
	}
	return rec, nil
}

// indexInOrder reports whether the first count entries of x could index a
// store of size bytes: relative offsets 0, 1, 2, ..., positions starting at
// 0, strictly increasing and inside the store. It reads only the mapping.
func indexInOrder(x *index, count uint32, size int64) bool {
	var prev uint64
	for i := uint32(0); i < count; i++ {
		rel, pos := x.entry(i)
		if rel != i || (i == 0 && pos != 0) || (i > 0 && pos <= prev) || pos >= uint64(size) {
			return false
		}
		prev = pos
	}
	return true
}
