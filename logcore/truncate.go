package logcore

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"sort"
)

// TruncateFrom removes every record at or above off, so that the next append
// gets offset off: what Raft needs to drop a conflicting, uncommitted tail.
// off must be in [LowestOffset, NextOffset]. The removal is durable when it
// returns. Appends that were waiting for an fsync of removed records fail
// with ErrTruncated. It costs a scan of the segment that holds off.
func (l *Log) TruncateFrom(off uint64) error {
	defer l.lockAll()()
	if err := l.writableLocked(); err != nil {
		return err
	}
	if err := l.unparkLocked(); err != nil {
		return err
	}
	if off > l.next || off < l.lowest.Load() {
		return &OffsetError{Offset: off, Lowest: l.lowest.Load(), Next: l.next}
	}
	if off == l.next {
		return nil
	}
	if err := l.flushLocked(); err != nil {
		return err
	}
	l.segsMu.RLock()
	i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].base > off }) - 1
	victims := append([]*segment(nil), l.segs[i+1:]...)
	s := l.segs[i]
	l.segsMu.RUnlock()

	// Position of off in s, while s's files are still open. A sealed
	// segment's files may be closed again between the open and the lock
	// (the cache, the file budget): open them until they are there.
	s.fmu.Lock()
	for s.sealed.Load() && s.idx == nil {
		s.fmu.Unlock()
		if err := l.openCold(s); err != nil {
			return l.failLocked(err)
		}
		s.fmu.Lock()
	}
	rel := uint32(off - s.base)
	if s.idx == nil || rel >= s.idx.capacity() {
		s.fmu.Unlock()
		return l.failLocked(corruptf("segment %d has no index entry for offset %d", s.base, off))
	}
	cut := int64(s.idx.pos(rel))
	var prev int64 = -1 // position of the frame that becomes the last one
	if rel > 0 {
		prev = int64(s.idx.pos(rel - 1))
	}
	s.deleted = true
	closeErr := s.closeFiles()
	s.fmu.Unlock()
	l.cacheRemove(s)
	if closeErr != nil {
		return l.failLocked(closeErr)
	}

	// Remove the later segments, newest first, so that a crash part way
	// leaves a log that ends at a segment boundary.
	for j := len(victims) - 1; j >= 0; j-- {
		if err := l.deleteSegment(victims[j]); err != nil {
			return l.failLocked(err)
		}
	}
	if err := l.fs.SyncDir(l.dir); err != nil {
		return l.failLocked(err)
	}
	// Cut the store, then reopen the segment as the active one: its
	// index no longer matches, so recovery rebuilds it from the store.
	f, err := l.fs.OpenFile(s.path(storeExt), os.O_RDWR, 0)
	if err != nil {
		return l.failLocked(err)
	}
	// The frame before the cut may be continued by a frame of its batch
	// that is being cut off: make it the end of its batch first, durably,
	// so that recovery keeps it whether or not the truncation lands.
	if prev >= 0 {
		err = endBatchAt(f, prev, cut)
	}
	if err == nil {
		err = f.Truncate(cut)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return l.failLocked(fmt.Errorf("cut %s: %w", s.path(storeExt), err))
	}
	ns := l.newSegment(s.base)
	recovered := l.stats.recoveries.Load()
	if err := l.openActive(ns, true); err != nil {
		return l.failLocked(err)
	}
	l.stats.recoveries.Store(recovered) // a truncation is not a crash recovery
	l.track(ns)
	if uint64(ns.count) != uint64(rel) {
		ns.closeFiles() // never installed: not left open (nor counted)
		return l.failLocked(corruptf("segment %d holds %d records after truncation, want %d", s.base, ns.count, rel))
	}
	l.segsMu.Lock()
	l.segs = append(l.segs[:i:i], ns)
	l.segsMu.Unlock()
	l.active = ns
	l.next = off
	l.gen++
	l.genNow.Store(l.gen)
	l.visible.Store(off)
	l.flushedNext.Store(off)
	l.durable.Store(off)
	return nil
}

// Reader streams the raw frames (see the package doc) of a range of
// records, checking each one's checksum on the way. It is how a snapshot
// ships a log: ReadFrames decodes the stream.
type Reader struct {
	l        *Log
	next, to uint64
	buf      []byte // read, not yet returned
	scratch  []byte // the buffer of the last read, reused by the next
}

// NewReader returns a Reader of the records from from up to, not including,
// to; to is capped at NextOffset when the reader is made, so the stream is a
// consistent cut even while appends go on. Records removed by retention
// while it reads make it fail with ErrOffsetOutOfRange.
func (l *Log) NewReader(from, to uint64) *Reader {
	return &Reader{l: l, next: from, to: min(to, l.visible.Load())}
}

// Read implements io.Reader.
func (r *Reader) Read(p []byte) (int, error) {
	for len(r.buf) == 0 {
		if r.next >= r.to {
			return 0, io.EOF
		}
		if err := r.l.ensureFlushed(r.to); err != nil {
			return 0, err
		}
		s, err := r.l.segmentFor(r.next)
		if err != nil {
			return 0, err
		}
		recs, raw, err := r.l.readRun(s, r.next, int(min(r.to-r.next, 1<<16)), 1<<20, true, r.scratch[:0])
		s.fmu.RUnlock()
		if err != nil {
			return 0, err
		}
		r.next += uint64(len(recs))
		r.buf, r.scratch = raw, raw[:0] // r.buf is drained before the next read reuses it

	}
	n := copy(p, r.buf)
	r.buf = r.buf[n:]
	return n, nil
}

// ReadFrames decodes a stream of frames, as a Reader makes, calling fn for
// each record in order. A damaged or cut-short stream is an error wrapping
// ErrCorrupt; fn's error stops the reading and is returned.
func ReadFrames(r io.Reader, fn func(Record) error) error {
	fr := NewFrameReader(r)
	for {
		rec, err := fr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if err := fn(rec); err != nil {
			return err
		}
	}
}

// FrameReader decodes a stream of frames, as a Reader makes, one record at
// a time. A damaged or cut-short stream is an error wrapping ErrCorrupt.
type FrameReader struct {
	r   io.Reader
	hdr [frameHeaderSize]byte
	buf bytes.Buffer
}

// NewFrameReader returns a FrameReader over r. It reads no more of r than
// the frames it is asked for.
func NewFrameReader(r io.Reader) *FrameReader { return &FrameReader{r: r} }

// Next returns the next record, or io.EOF at a clean end of the stream.
// The record's Value and Headers are the caller's.
func (fr *FrameReader) Next() (Record, error) {
	if _, err := io.ReadFull(fr.r, fr.hdr[:]); err != nil {
		if err == io.EOF {
			return Record{}, io.EOF
		}
		return Record{}, corruptf("frame header: %v", err)
	}
	n, err := frameLength(fr.hdr[:])
	if err != nil {
		return Record{}, err
	}
	// Grow the buffer as bytes arrive, so that a damaged length field
	// costs no more memory than the stream holds.
	fr.buf.Reset()
	fr.buf.Write(fr.hdr[:])
	if got, err := io.CopyN(&fr.buf, fr.r, int64(n)); err != nil {
		return Record{}, corruptf("frame payload: %d of %d bytes: %v", got, n, err)
	}
	rec, _, err := DecodeFrame(fr.buf.Bytes())
	if err != nil {
		return Record{}, err
	}
	rec.Value = append([]byte(nil), rec.Value...)
	return rec, nil
}

// Reset removes every record and makes next the offset of the next append,
// below or above the current one: what a Raft log store needs when a
// snapshot replaces its whole log. Appends waiting for an fsync fail with
// ErrTruncated. If it crashes part way, the log reopens holding a suffix of
// its old segments, or empty at Config.InitialOffset; never with a gap.
func (l *Log) Reset(next uint64) error {
	if next > maxOffset {
		return fmt.Errorf("%w: offset %d too large", ErrInvalidConfig, next)
	}
	defer l.lockAll()()
	if err := l.writableLocked(); err != nil {
		return err
	}
	l.segsMu.Lock()
	old := l.segs
	l.segsMu.Unlock()
	// Oldest first, so that a crash leaves a suffix of the log.
	for _, s := range old {
		if err := l.deleteSegment(s); err != nil {
			return l.failLocked(err)
		}
		if err := l.fs.SyncDir(l.dir); err != nil {
			return l.failLocked(err)
		}
	}
	ns, err := l.createSegment(next)
	if err != nil {
		return l.failLocked(err)
	}
	l.segsMu.Lock()
	l.segs = []*segment{ns}
	l.segsMu.Unlock()
	l.active = ns
	l.next = next
	l.gen++
	l.genNow.Store(l.gen)
	l.lowest.Store(next)
	l.visible.Store(next)
	l.flushedNext.Store(next)
	l.durable.Store(next)
	return nil
}

// endBatchAt clears the continuation bit of the frame at [pos, end) of f,
// rewriting its checksum, and fsyncs f if it changed anything.
func endBatchAt(f File, pos, end int64) error {
	b := make([]byte, end-pos)
	if _, err := f.ReadAt(b, pos); err != nil {
		return err
	}
	field := binary.BigEndian.Uint32(b)
	if field&frameContinues == 0 {
		return nil
	}
	binary.BigEndian.PutUint32(b, field&^frameContinues)
	binary.BigEndian.PutUint32(b[4:], frameCRC(b[:4], b[frameHeaderSize:]))
	if _, err := f.WriteAt(b[:frameHeaderSize], pos); err != nil {
		return err
	}
	return f.Sync()
}
