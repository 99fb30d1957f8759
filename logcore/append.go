package logcore

import (
	"errors"
	"fmt"
	"os"
	"runtime"
	"time"
)

// Append appends one record and returns its offset. rec.Offset is ignored;
// a zero rec.Time is stamped with Config.Now. With SyncAlways the record is
// durable when Append returns nil. An error wrapping ErrFailed leaves the
// outcome indefinite; any other error means nothing was appended.
func (l *Log) Append(rec Record) (uint64, error) {
	one := [1]Record{rec}
	return l.AppendBatch(one[:])
}

// AppendBatch appends records in order with consecutive offsets and returns
// the first one's offset. It is acknowledged as a whole: with SyncAlways all
// are durable when it returns nil (one fsync for the batch). It is also
// atomic across a crash: after one, either the whole batch is in the log or
// none of it, provided the batch fits in one segment (a batch that does not
// fit in the active segment starts a new one; a batch larger than a segment
// spans several, and a crash may keep a prefix of it). The records' Offset
// fields are ignored and the slice is not modified.
func (l *Log) AppendBatch(recs []Record) (uint64, error) {
	if len(recs) == 0 {
		return 0, fmt.Errorf("logcore: empty batch")
	}
	var total int64
	for i := range recs {
		size := int64(FrameSize(&recs[i]))
		if size > l.cfg.MaxSegmentBytes || size-frameHeaderSize > MaxRecordBytes {
			return 0, fmt.Errorf("%w: record %d frame of %d bytes exceeds segment size %d", ErrRecordTooLarge, i, size, l.cfg.MaxSegmentBytes)
		}
		total += size
	}
	l.mu.Lock()
	if err := l.writableLocked(); err != nil {
		l.mu.Unlock()
		return 0, err
	}
	if err := l.unparkLocked(); err != nil {
		l.mu.Unlock()
		return 0, err
	}
	l.active.lastUsed.Store(l.tick())
	if l.next+uint64(len(recs)) > maxOffset {
		l.mu.Unlock()
		return 0, fmt.Errorf("logcore: offset space exhausted")
	}
	// Keep the batch in one segment if it fits in one.
	if s := l.active; len(recs) > 1 && s.count > 0 && total <= l.cfg.MaxSegmentBytes && uint64(len(recs)) <= uint64(s.idx.capacity()) &&
		(s.size+total > l.cfg.MaxSegmentBytes || uint64(s.count)+uint64(len(recs)) > uint64(s.idx.capacity())) {
		if err := l.rollLocked(); err != nil {
			l.mu.Unlock()
			return 0, err
		}
	}
	if !l.fitsLocked(int64(FrameSize(&recs[0]))) {
		if err := l.rollLocked(); err != nil {
			l.mu.Unlock()
			return 0, err
		}
	}
	// Reserve the space of the batch (its part in this segment) before
	// writing any of it, so that a full disk refuses it whole: the error
	// is definite and the log goes on.
	if err := l.reserveLocked(min(total, l.cfg.MaxSegmentBytes-l.active.size), len(recs)); err != nil {
		l.mu.Unlock()
		return 0, err
	}
	first, gen := l.next, l.gen
	var now int64
	for i := range recs {
		r := recs[i]
		r.Offset = l.next
		if r.Time == 0 {
			if now == 0 {
				now = l.cfg.Now().UnixNano()
			}
			r.Time = now
		}
		var nextSize int64
		if i < len(recs)-1 {
			nextSize = int64(FrameSize(&recs[i+1]))
		}
		if err := l.writeLocked(&r, nextSize); err != nil {
			l.mu.Unlock()
			return 0, err
		}
	}
	end := l.next
	if l.cfg.Sync != SyncAlways {
		l.publish(&l.visible, end)
	}
	l.mu.Unlock()
	if l.cfg.Sync == SyncAlways {
		if err := l.syncTo(end, gen); err != nil {
			return 0, err
		}
	}
	return first, nil
}

// writableLocked reports why the log cannot take appends, if it cannot.
func (l *Log) writableLocked() error {
	if l.closed {
		return ErrClosed
	}
	return l.failed
}

// failLocked records a write-path I/O error: the log takes no more appends.
func (l *Log) failLocked(err error) error {
	if l.failed == nil {
		l.failed = fmt.Errorf("%w: %w", ErrFailed, err)
		l.logger.Error("logcore: log failed; refusing appends until reopened", "dir", l.dir, "err", err)
	}
	return l.failed
}

// writeLocked buffers one record (offset and time set) in the active
// segment, rolling to a new segment first if it would not fit. nextSize is
// the frame size of the next record of its batch (0 if r is the last): if
// that one will go into the same segment, r's frame is marked as continued.
// A segment never ends with a continued frame.
func (l *Log) writeLocked(r *Record, nextSize int64) error {
	s := l.active
	size := int64(FrameSize(r))
	if !l.fitsLocked(size) {
		if err := l.rollLocked(); err != nil {
			return err
		}
		s = l.active
	}
	if err := l.reserveLocked(size, 1); err != nil {
		// Only the part of a batch that rolled to a new segment gets
		// here with its space not reserved; the part before is durable.
		return l.failLocked(err)
	}
	more := nextSize > 0 && s.size+size+nextSize <= l.cfg.MaxSegmentBytes && s.count+1 < s.idx.capacity()
	pos := s.size
	s.buf = appendFrame(s.buf, r, more)
	s.idx.put(s.count, uint64(pos))
	s.size += size
	if e, ok := s.tt.add(r.Time, s.count, s.size); ok {
		s.pendTimes = appendTimeEntry(s.pendTimes, e)
		s.times = append(s.times, e)
	}
	s.count++
	l.next++
	if len(s.buf) >= l.cfg.WriteBufferBytes {
		return l.flushLocked()
	}
	return nil
}

// fitsLocked reports whether a frame of size bytes fits in the active
// segment (an empty segment takes any frame the size checks let through).
func (l *Log) fitsLocked(size int64) bool {
	s := l.active
	return s.count == 0 || s.size+size <= l.cfg.MaxSegmentBytes && s.count < s.idx.capacity()
}

// flushLocked writes the active segment's buffered frames and time index
// entries to its files.
func (l *Log) flushLocked() error {
	s := l.active
	if len(s.buf) > 0 {
		n, err := s.store.Write(s.buf)
		if err != nil || n != len(s.buf) {
			if err == nil {
				err = fmt.Errorf("short write: %d of %d bytes", n, len(s.buf))
			}
			return l.failLocked(fmt.Errorf("write %s: %w", s.path(storeExt), err))
		}
		s.buf = s.buf[:0]
		s.flushed.Store(s.size)
	}
	// The time index is derived from the store: entries it could not
	// take now (a full disk: each segment's file needs a block of its
	// own) stay pending, in memory and for the next flush; the seal
	// writes them or fails, and after a crash recovery rebuilds them.
	if err := writeTimesLocked(s); err != nil && !s.timesLag {
		s.timesLag = true
		l.logger.Warn("logcore: time index entries wait for room", "segment", s.path(timeIndexExt), "err", err)
	}
	l.flushedNext.Store(l.next)
	return nil
}

// writeTimesLocked writes the segment's pending time index entries.
func writeTimesLocked(s *segment) error {
	if len(s.pendTimes) == 0 {
		return nil
	}
	if _, err := s.timeFile.WriteAt(s.pendTimes, s.timeOnFile); err != nil {
		return fmt.Errorf("write %s: %w", s.path(timeIndexExt), err)
	}
	s.timeOnFile += int64(len(s.pendTimes))
	s.pendTimes = s.pendTimes[:0]
	s.timesLag = false
	return nil
}

// zeroBlock is what reservations write, never modified: a 1 MiB buffer
// allocated per step cost a tenth of the CPU of batch appends (clearing it,
// and the scavenger returning it).
var zeroBlock [256 << 10]byte

// reserveLocked makes sure the active segment has file space for bytes
// more store bytes and n more index entries before they are buffered, so
// that a full disk is found before anything is written. The index file is
// grown with a hole and its entries are stored through a mapping: a store
// into a hole on a full disk kills the process (SIGBUS), so index space is
// always written first (index.reserve). Under SyncAlways the store is
// filled with zeros ahead of the data, Config.PrewriteBytes at a time:
// then an fsync overwrites blocks that exist instead of allocating new
// ones and growing the file, and a write of data into them cannot run out
// of space. Under the other policies fsyncs are rare and the zeros would
// double the bytes written, so the store's space is not reserved: a full
// disk fails the write of the buffer (ErrFailed).
func (l *Log) reserveLocked(bytes int64, n int) error {
	s := l.active
	if c := s.idx.capacity(); s.count < c {
		if err := s.idx.reserve(s.count, s.count+uint32(min(n, int(c-s.count)))); err != nil {
			l.stats.reserveFailures.Add(1)
			return fmt.Errorf("logcore: %s: %w", s.path(indexExt), err)
		}
	}
	step := l.cfg.PrewriteBytes
	need := s.size + bytes
	if step <= 0 || l.cfg.Sync != SyncAlways || need <= s.prewritten {
		return nil
	}
	// Zeros never go over data on file; over buffered data they do (the
	// buffer's write replaces them).
	at := max(s.prewritten, s.flushed.Load())
	end := max(need, min(s.size+step, l.cfg.MaxSegmentBytes))
	for at < end {
		w, err := s.store.WriteAt(zeroBlock[:min(int64(len(zeroBlock)), end-at)], at)
		at += int64(max(w, 0))
		if err != nil {
			s.prewritten = max(s.prewritten, at)
			if at >= need {
				return nil // short of a step ahead, but this append fits
			}
			l.stats.reserveFailures.Add(1)
			return fmt.Errorf("logcore: reserve space in %s: %w", s.path(storeExt), err)
		}
	}
	s.prewritten = end
	return nil
}

// syncTo makes every record below end durable, sharing fsyncs with
// concurrent callers (group commit). One caller at a time leads a round: it
// flushes and fsyncs everything appended so far, while the others wait for
// the round to end. The end of a round wakes all waiters at once; those
// whose records it covered return, and one of the rest leads the next round.
//
// gen is l.gen when the records were appended: if a TruncateFrom ran since,
// they may be gone and the caller gets ErrTruncated.
func (l *Log) syncTo(end, gen uint64) error {
	for {
		if l.genNow.Load() != gen {
			return ErrTruncated
		}
		if l.durable.Load() >= end {
			return nil
		}
		l.roundMu.Lock()
		if l.durable.Load() >= end && l.genNow.Load() == gen {
			l.roundMu.Unlock()
			return nil
		}
		if ch := l.round; ch != nil {
			l.roundWaiters++
			l.roundMu.Unlock()
			<-ch // a round is running: wait for it, then look again
			continue
		}
		ch := make(chan struct{})
		l.round = ch
		woke := l.lastWoke
		l.roundMu.Unlock()

		// Let the appenders woken by the last round append before this
		// one flushes: a yield costs microseconds, an fsync hundreds.
		// With no one else waiting (a single writer, such as a Raft log
		// or a committer that batches for its callers) the yield would
		// only delay the fsync, by as long as other goroutines run.
		if woke > 0 {
			runtime.Gosched()
		}
		err := l.syncRound(gen)

		l.roundMu.Lock()
		l.round = nil
		l.lastWoke, l.roundWaiters = l.roundWaiters, 0
		close(ch)
		l.roundMu.Unlock()
		if err != nil {
			if errors.Is(err, ErrClosed) && l.durable.Load() >= end && l.genNow.Load() == gen {
				return nil // Close made them durable
			}
			return err
		}
	}
}

// syncRound flushes and fsyncs all records appended so far and publishes
// them as durable. It holds syncMu, which keeps Close and TruncateFrom out.
func (l *Log) syncRound(gen uint64) error {
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	l.mu.Lock()
	if l.closed {
		l.mu.Unlock()
		return ErrClosed
	}
	if l.failed != nil {
		l.mu.Unlock()
		return l.failed
	}
	if l.gen != gen {
		l.mu.Unlock()
		return ErrTruncated
	}
	if err := l.unparkLocked(); err != nil {
		l.mu.Unlock()
		return err
	}
	if err := l.flushLocked(); err != nil {
		l.mu.Unlock()
		return err
	}
	s, target := l.active, l.next
	// Sync without the writer lock, so appends go on into the buffer
	// meanwhile, but with the segment's files held (fmu shared): an
	// append may roll meanwhile, and then the cache or the file budget
	// may close the sealed segment's files (they only try fmu). Close,
	// TruncateFrom and park, which close the active segment, hold syncMu.
	s.fmu.RLock()
	l.mu.Unlock()
	err := l.syncFile(s.store)
	s.fmu.RUnlock()
	if err != nil {
		l.mu.Lock()
		err = l.failLocked(fmt.Errorf("fsync %s: %w", s.path(storeExt), err))
		l.mu.Unlock()
		return err
	}
	l.publish(&l.durable, target)
	if l.cfg.Sync == SyncAlways {
		l.publish(&l.visible, target)
	}
	return nil
}

// syncFile fsyncs a store and reports it to Config.OnSync.
func (l *Log) syncFile(f File) error {
	start := time.Now()
	err := f.Sync()
	l.stats.syncs.Add(1)
	if l.cfg.OnSync != nil {
		l.cfg.OnSync(time.Since(start), err)
	}
	return err
}

// publish raises a published position to v (never lowers it) and wakes
// readers waiting for new records if it is the visible one.
func (l *Log) publish(p interface {
	Load() uint64
	CompareAndSwap(old, new uint64) bool
}, v uint64) {
	for {
		cur := p.Load()
		if cur >= v {
			return
		}
		if p.CompareAndSwap(cur, v) {
			break
		}
	}
	if p == &l.visible && l.waiters.Load() > 0 {
		l.notifyMu.Lock()
		close(l.notifyCh)
		l.notifyCh = make(chan struct{})
		l.notifyMu.Unlock()
	}
}

// rollLocked seals the active segment and starts a new one at l.next. The
// sealed segment is flushed and fsynced (store, index cut to its length,
// time index) before the new segment's files exist, so after a crash every
// segment but the last is complete, whatever the sync policy.
func (l *Log) rollLocked() error {
	s := l.active
	if err := l.flushLocked(); err != nil {
		return err
	}
	if err := l.sealFilesLocked(s); err != nil {
		return l.failLocked(err)
	}
	l.publish(&l.durable, l.next)
	if l.cfg.Sync == SyncAlways {
		l.publish(&l.visible, l.next)
	}
	ns, err := l.createSegment(l.next)
	if err != nil {
		return l.failLocked(err)
	}
	s.storeBytes.Store(s.size)
	s.maxTime.Store(s.tt.max)
	s.buf = nil
	s.sealed.Store(true)
	l.segsMu.Lock()
	l.segs = append(l.segs, ns)
	l.segsMu.Unlock()
	l.active = ns
	l.cacheAdd(s)
	l.stats.rolls.Add(1)
	return nil
}

// sealFilesLocked makes a segment's files final: store fsynced, the sealing
// time index entry written and fsynced, the index cut to its length and
// fsynced. The files stay open.
func (l *Log) sealFilesLocked(s *segment) error {
	if s.prewritten > s.size {
		if err := s.store.Truncate(s.size); err != nil {
			return fmt.Errorf("cut prewritten zeros of %s: %w", s.path(storeExt), err)
		}
		s.prewritten = s.size
	}
	if err := l.syncFile(s.store); err != nil {
		return fmt.Errorf("fsync %s: %w", s.path(storeExt), err)
	}
	timesErr := writeTimesLocked(s)
	if e, ok := s.tt.final(s.count, s.size); ok {
		s.times = append(s.times, e)
		if timesErr == nil {
			if _, err := s.timeFile.WriteAt(appendTimeEntry(nil, e), s.timeOnFile); err != nil {
				timesErr = fmt.Errorf("write %s: %w", s.path(timeIndexExt), err)
			} else {
				s.timeOnFile += timeEntryWidth
			}
		}
	}
	if timesErr != nil {
		// A full disk. The time index is derived from the store: an
		// empty one is rebuilt from it when a lookup needs it (and by
		// Open, for the last segment), so the seal goes on without.
		l.logger.Warn("logcore: sealing a segment without its time index; it is rebuilt from the store when needed",
			"segment", s.path(timeIndexExt), "err", timesErr)
		if err := s.timeFile.Truncate(0); err != nil {
			return fmt.Errorf("cut %s: %w", s.path(timeIndexExt), err)
		}
		s.timeOnFile, s.pendTimes = 0, s.pendTimes[:0]
	}
	if err := s.timeFile.Sync(); err != nil {
		return fmt.Errorf("fsync %s: %w", s.path(timeIndexExt), err)
	}
	if err := s.idx.cut(s.count); err != nil {
		return fmt.Errorf("cut %s: %w", s.path(indexExt), err)
	}
	return nil
}

// createSegment creates the files of a new, empty active segment and makes
// them durable in the directory.
func (l *Log) createSegment(base uint64) (*segment, error) {
	s := l.newSegment(base)
	s.tt = newTimeTracker()
	var err error
	cleanup := func() {
		s.closeFiles()
		l.fs.Remove(s.path(storeExt))
		l.fs.Remove(s.path(indexExt))
		l.fs.Remove(s.path(timeIndexExt))
	}
	if s.store, err = l.fs.OpenFile(s.path(storeExt), os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o644); err != nil {
		return nil, fmt.Errorf("create %s: %w", s.path(storeExt), err)
	}
	idxFile, err := l.fs.OpenFile(s.path(indexExt), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		cleanup()
		return nil, fmt.Errorf("create %s: %w", s.path(indexExt), err)
	}
	if s.idx, err = openIndexFile(idxFile, l.cfg.MaxIndexBytes); err != nil {
		idxFile.Close()
		cleanup()
		return nil, fmt.Errorf("map %s: %w", s.path(indexExt), err)
	}
	if s.timeFile, err = l.fs.OpenFile(s.path(timeIndexExt), os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644); err != nil {
		cleanup()
		return nil, fmt.Errorf("create %s: %w", s.path(timeIndexExt), err)
	}
	if err := l.fs.SyncDir(l.dir); err != nil {
		cleanup()
		return nil, fmt.Errorf("fsync dir %s: %w", l.dir, err)
	}
	l.track(s)
	return s, nil
}

// Sync flushes and fsyncs every record appended so far. It is what
// SyncInterval does in the background, for callers of the weaker policies.
func (l *Log) Sync() error {
	l.mu.Lock()
	next, gen := l.next, l.gen
	l.mu.Unlock()
	return l.syncTo(next, gen)
}

// Close flushes and fsyncs all records, cuts the active index to its length
// (so the next Open needs no scan), stops background work and closes all
// files. Readers waiting in Wait return ErrClosed.
func (l *Log) Close() error {
	if !l.isClosed.CompareAndSwap(false, true) {
		return ErrClosed
	}
	close(l.stopBg)
	l.bgDone.Wait()
	l.adminMu.Lock()
	defer l.adminMu.Unlock()
	l.syncMu.Lock()
	defer l.syncMu.Unlock()
	l.mu.Lock()
	var errs []error
	s := l.active
	if l.failed == nil {
		if err := l.unparkLocked(); err != nil {
			// The files stay as parked: whole, but with the active
			// index at full size, which the next Open scans.
			errs = append(errs, err)
		} else if err := l.flushLocked(); err != nil {
			errs = append(errs, err)
		} else if err := l.sealFilesLocked(s); err != nil {
			errs = append(errs, err)
		} else {
			l.publish(&l.durable, l.next)
		}
	} else {
		errs = append(errs, l.failed)
	}
	l.closed = true
	l.mu.Unlock()

	l.segsMu.RLock()
	segs := l.segs
	l.segsMu.RUnlock()
	for _, s := range segs {
		s.fmu.Lock()
		if err := s.closeFiles(); err != nil {
			errs = append(errs, err)
		}
		s.deleted = true // no reads after Close
		s.fmu.Unlock()
	}
	l.notifyMu.Lock()
	close(l.notifyCh)
	l.notifyCh = make(chan struct{})
	l.notifyMu.Unlock()
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("logcore: close %s: %w", l.dir, err)
	}
	return nil
}
