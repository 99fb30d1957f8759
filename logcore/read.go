package logcore

import (
	"context"
	"errors"
	"fmt"
	"io"
	"runtime"
	"sort"
)

// LowestOffset returns the offset of the oldest record kept (NextOffset if
// the log is empty).
func (l *Log) LowestOffset() uint64 { return l.lowest.Load() }

// NextOffset returns the offset that follows the newest readable record:
// the log end offset. With SyncAlways every record below it is durable.
func (l *Log) NextOffset() uint64 { return l.visible.Load() }

// HighestOffset returns the newest readable record's offset; ok is false if
// the log has no readable record.
func (l *Log) HighestOffset() (off uint64, ok bool) {
	next, low := l.visible.Load(), l.lowest.Load()
	if next <= low {
		return 0, false
	}
	return next - 1, true
}

// rangeErr returns the error for a read of off outside the log.
func (l *Log) rangeErr(off uint64) error {
	return &OffsetError{Offset: off, Lowest: l.lowest.Load(), Next: l.visible.Load()}
}

// ensureFlushed makes sure records below end are in the file (under the
// weaker sync policies they may still be in the write buffer).
func (l *Log) ensureFlushed(end uint64) error {
	if l.flushedNext.Load() >= end {
		return nil
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.flushedNext.Load() >= end {
		return nil
	}
	if l.closed {
		return ErrClosed
	}
	if l.failed != nil {
		return l.failed
	}
	return l.flushLocked()
}

// segmentFor returns the segment holding off, acquired for reading (its
// fmu held shared, files open); release it with s.fmu.RUnlock. It returns an
// OffsetError if off is not readable.
func (l *Log) segmentFor(off uint64) (*segment, error) {
	for {
		if l.isClosed.Load() {
			return nil, ErrClosed
		}
		if off < l.lowest.Load() || off >= l.visible.Load() {
			return nil, l.rangeErr(off)
		}
		l.segsMu.RLock()
		i := sort.Search(len(l.segs), func(i int) bool { return l.segs[i].base > off }) - 1
		if i < 0 {
			l.segsMu.RUnlock()
			return nil, l.rangeErr(off)
		}
		s := l.segs[i]
		l.segsMu.RUnlock()
		s.fmu.RLock()
		if s.deleted {
			s.fmu.RUnlock()
			runtime.Gosched()
			continue // removed or replaced since: look again
		}
		if s.store != nil {
			s.lastUsed.Store(l.tick())
			// Check again: a truncation may have run before fmu.
			if off < l.lowest.Load() || off >= l.visible.Load() {
				s.fmu.RUnlock()
				return nil, l.rangeErr(off)
			}
			return s, nil
		}
		s.fmu.RUnlock()
		if err := l.openCold(s); err != nil {
			return nil, err
		}
	}
}

// openCold opens a sealed segment's files and puts it in the cache.
func (l *Log) openCold(s *segment) error {
	if !s.sealed.Load() {
		// The active segment, parked by the file budget.
		l.mu.Lock()
		defer l.mu.Unlock()
		if s != l.active {
			return nil // sealed or replaced since: look again
		}
		return l.unparkLocked()
	}
	s.fmu.Lock()
	if s.store != nil || s.deleted {
		s.fmu.Unlock()
		return nil
	}
	err := s.openSealed(l.fs, l)
	if err == nil {
		l.track(s)
	}
	s.fmu.Unlock()
	if err != nil {
		return fmt.Errorf("logcore: open segment %d: %w", s.base, err)
	}
	l.cacheAdd(s)
	return nil
}

// cacheAdd notes that a sealed segment's files are open and closes the
// least recently used ones beyond MaxOpenSegments (skipping any in use).
func (l *Log) cacheAdd(s *segment) {
	s.lastUsed.Store(l.tick())
	l.cacheMu.Lock()
	defer l.cacheMu.Unlock()
	if s.fmu.TryRLock() {
		// The file budget may have closed it since it was opened (or
		// sealed): then it is not cached, and the next use reopens it.
		closed := s.store == nil
		s.fmu.RUnlock()
		if closed {
			return
		}
	}
	l.openSegs = append(l.openSegs, s)
	for len(l.openSegs) > l.cfg.MaxOpenSegments {
		victim := -1
		for i, o := range l.openSegs {
			if victim < 0 || o.lastUsed.Load() < l.openSegs[victim].lastUsed.Load() {
				victim = i
			}
		}
		v := l.openSegs[victim]
		if !v.fmu.TryLock() {
			return // in use; try again on the next open
		}
		if v.sealed.Load() {
			if err := v.closeFiles(); err != nil {
				l.logger.Warn("logcore: closing cold segment", "segment", v.base, "err", err)
			}
		}
		v.fmu.Unlock()
		l.openSegs = append(l.openSegs[:victim], l.openSegs[victim+1:]...)
	}
}

// cacheRemove drops a segment from the cache (it was deleted or became
// active again). Callers hold cacheMu's order position: no fmu held.
func (l *Log) cacheRemove(s *segment) {
	l.cacheMu.Lock()
	defer l.cacheMu.Unlock()
	for i, o := range l.openSegs {
		if o == s {
			l.openSegs = append(l.openSegs[:i], l.openSegs[i+1:]...)
			return
		}
	}
}

// recordEnd returns the store position after the record rel of s, if it is
// known without reading the store: the next index entry, or the end of a
// sealed store. Otherwise it returns limit, an upper bound. Callers hold
// s.fmu shared and rel is readable.
func (l *Log) recordEnd(s *segment, rel uint32, vis uint64) (end int64, exact bool) {
	if s.sealed.Load() {
		if rel+1 < s.indexed() {
			return int64(s.idx.pos(rel + 1)), true
		}
		return s.storeBytes.Load(), true
	}
	if uint64(rel)+1 < vis-s.base {
		return int64(s.idx.pos(rel + 1)), true
	}
	return s.flushed.Load(), false
}

// Read returns the record at off. Its Value and Headers are the caller's.
// It fails with an *OffsetError (ErrOffsetOutOfRange) outside
// [LowestOffset, NextOffset), and with ErrCorrupt if the stored frame does
// not check out.
func (l *Log) Read(off uint64) (Record, error) {
	// Decide on one load of visible: checking it again after it grew could
	// take a record still in the write buffer past ensureFlushed.
	if off >= l.visible.Load() {
		return Record{}, l.rangeErr(off)
	}
	if err := l.ensureFlushed(off + 1); err != nil {
		return Record{}, err
	}
	s, err := l.segmentFor(off)
	if err != nil {
		return Record{}, err
	}
	defer s.fmu.RUnlock()
	rel := uint32(off - s.base)
	if s.sealed.Load() && rel >= s.indexed() || rel >= s.idx.capacity() {
		return Record{}, corruptf("offset %d missing from segment %d", off, s.base)
	}
	pos := int64(s.idx.pos(rel))
	end, exact := l.recordEnd(s, rel, l.visible.Load())
	if end <= pos {
		return Record{}, corruptf("offset %d: index position %d past the store's end %d", off, pos, end)
	}
	if exact {
		b := make([]byte, end-pos)
		if _, err := s.store.ReadAt(b, pos); err != nil && !errors.Is(err, io.EOF) {
			return Record{}, fmt.Errorf("logcore: read offset %d: %w", off, err)
		}
		rec, n, err := DecodeFrame(b)
		if err == nil && n != len(b) {
			err = corruptf("frame of %d bytes where the index says %d", n, len(b))
		}
		if err == nil && rec.Offset != off {
			err = corruptf("position %d holds offset %d", pos, rec.Offset)
		}
		if err != nil {
			if errors.Is(err, errTorn) {
				err = corruptf("frame cut short")
			}
			return Record{}, fmt.Errorf("logcore: read offset %d of segment %d: %w", off, s.base, err)
		}
		return rec, nil
	}
	rec, err := readFrameAt(s.store, pos, end, off)
	if err != nil {
		return Record{}, fmt.Errorf("logcore: read offset %d of segment %d: %w", off, s.base, err)
	}
	return rec, nil
}

// ReadBatch returns consecutive records from off: at most maxRecords, and
// no more than maxBytes of frames, except that the first record is returned
// whatever its size (so a large record never blocks a reader). It returns no
// records and no error if off is NextOffset, and an *OffsetError outside
// [LowestOffset, NextOffset]. The records alias one buffer per segment read.
func (l *Log) ReadBatch(off uint64, maxRecords int, maxBytes int) ([]Record, error) {
	recs, _, err := l.ReadBatchInto(nil, off, maxRecords, maxBytes)
	return recs, err
}

// ReadBatchInto is ReadBatch reading into buf's spare capacity (from
// buf[len(buf)]) where the records fit, so that a reader can reuse one
// buffer across reads instead of allocating one per read. It returns the
// buffer the records were read into last (buf, extended, or a larger
// one when they did not fit); the records alias it (and buf), so the
// caller may reuse it only once done with them.
func (l *Log) ReadBatchInto(buf []byte, off uint64, maxRecords int, maxBytes int) ([]Record, []byte, error) {
	if maxRecords <= 0 {
		return nil, buf, nil
	}
	if vis := l.visible.Load(); off == vis && off >= l.lowest.Load() {
		return nil, buf, nil
	}
	var out []Record
	budget := int64(maxBytes)
	for len(out) < maxRecords {
		vis := l.visible.Load()
		if len(out) > 0 && off >= vis {
			break
		}
		if err := l.ensureFlushed(min(vis, off+uint64(maxRecords-len(out)))); err != nil {
			return out, buf, err
		}
		s, err := l.segmentFor(off)
		if err != nil {
			if len(out) > 0 && errors.Is(err, ErrOffsetOutOfRange) {
				break
			}
			return out, buf, err
		}
		recs, raw, err := l.readRun(s, off, maxRecords-len(out), budget, len(out) == 0, buf)
		s.fmu.RUnlock()
		buf = extend(buf, raw)
		out = append(out, recs...)
		if err != nil {
			return out, buf, err
		}
		off += uint64(len(recs))
		budget -= int64(len(raw))
		if budget <= 0 || len(recs) == 0 {
			break
		}
	}
	return out, buf, nil
}

// extend returns buf with raw, which readRun read either into buf's spare
// capacity (buf grows over it) or into a new buffer (which replaces buf).
func extend(buf, raw []byte) []byte {
	if len(raw) == 0 {
		return buf
	}
	if n := len(buf); cap(buf)-n >= len(raw) && &buf[:n+1][n] == &raw[0] {
		return buf[:n+len(raw)]
	}
	return raw
}

// readRun reads up to n records from off within one segment in one read,
// bounded by budget bytes (but at least one record if first), into buf's
// spare capacity if the run fits there (else into a new buffer, with room
// to spare for the next reads into it).
func (l *Log) readRun(s *segment, off uint64, n int, budget int64, first bool, buf []byte) ([]Record, []byte, error) {
	// Readable here means visible and in the file: under the weaker sync
	// policies records become visible while still in the write buffer,
	// and the caller flushed only up to the visible offset it saw.
	vis := min(l.visible.Load(), l.flushedNext.Load())
	rel := uint32(off - s.base)
	var last uint64 // records in the segment readable now
	if s.sealed.Load() {
		last = uint64(s.indexed())
	} else {
		last = vis - s.base
	}
	if uint64(rel) >= last || rel >= s.idx.capacity() {
		return nil, nil, corruptf("offset %d missing from segment %d", off, s.base)
	}
	lastRel := uint32(min(uint64(rel)+uint64(n), last)) // exclusive
	start := int64(s.idx.pos(rel))
	// endOf returns the store position where record r-1 ends. For the
	// last readable record of the active segment that is not indexed yet,
	// and it returns the flushed size, an upper bound.
	endOf := func(r uint32) int64 {
		switch {
		case uint64(r) < last:
			return int64(s.idx.pos(r))
		case s.sealed.Load():
			return s.storeBytes.Load()
		}
		return s.flushed.Load()
	}
	// Binary search the largest k in [1, lastRel-rel] with size within budget.
	lo, hi := 1, int(lastRel-rel)
	if e := endOf(lastRel); e-start <= budget {
		lo = hi
	} else {
		for lo < hi {
			mid := (lo + hi + 1) / 2
			e := endOf(rel + uint32(mid))
			if e-start <= budget {
				lo = mid
			} else {
				hi = mid - 1
			}
		}
		if !first {
			if e := endOf(rel + uint32(lo)); e-start > budget {
				return nil, nil, nil
			}
		}
	}
	k := uint32(lo)
	end := endOf(rel + k)
	if end <= start {
		return nil, nil, corruptf("segment %d: index position %d past the store's end %d", s.base, start, end)
	}
	var b []byte
	if need := int(end - start); cap(buf)-len(buf) >= need {
		b = buf[len(buf) : len(buf)+need]
	} else if buf != nil {
		b = make([]byte, need, max(need, 2*cap(buf)))
	} else {
		b = make([]byte, need)
	}
	if _, err := s.store.ReadAt(b, start); err != nil && !errors.Is(err, io.EOF) {
		return nil, nil, fmt.Errorf("logcore: read segment %d: %w", s.base, err)
	}
	recs := make([]Record, 0, k)
	p := 0
	for i := uint32(0); i < k; i++ {
		rec, sz, err := DecodeFrame(b[p:])
		if err == nil && rec.Offset != off+uint64(i) {
			err = corruptf("position %d holds offset %d", start+int64(p), rec.Offset)
		}
		if err != nil {
			if errors.Is(err, errTorn) {
				err = corruptf("frame cut short")
			}
			return recs, b[:p], fmt.Errorf("logcore: read offset %d of segment %d: %w", off+uint64(i), s.base, err)
		}
		recs = append(recs, rec)
		p += sz
	}
	return recs, b[:p], nil
}

// Wait blocks until a record at off is readable (NextOffset > off), ctx is
// done (ctx.Err()), or the log is closed (ErrClosed). It is how readers long-
// poll for new records.
func (l *Log) Wait(ctx context.Context, off uint64) error {
	l.waiters.Add(1)
	defer l.waiters.Add(-1)
	for {
		l.notifyMu.Lock()
		ch := l.notifyCh
		l.notifyMu.Unlock()
		if l.visible.Load() > off {
			return nil
		}
		if l.isClosed.Load() {
			return ErrClosed
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}
