package logcore

import (
	"fmt"
	"math"
	"os"
	"sync"
	"sync/atomic"
)

// FileBudget bounds the segments whose files are open across all the logs
// that share it (Config.Files). A log keeps the files of its active
// segment open while it is used, and those of up to MaxOpenSegments sealed
// segments; with thousands of logs in one process that is thousands of
// descriptors, and a process that reaches its open-file limit cannot even
// accept a connection. With a budget, opening a segment beyond it first
// closes the files of the least recently used segments of any log: a
// sealed segment is closed as the per-log cache closes one, and an idle
// log's active segment is parked (its buffer written, its files closed;
// the next append, fsync or read reopens them). Parking loses nothing:
// under SyncAlways only a segment whose records are all fsynced is parked,
// and under the other policies the page cache keeps what was written until
// the next fsync of the file, from whichever descriptor.
//
// The bound is soft: a segment in use (a reader inside it, an append or
// fsync running) is never closed, so while more segments than the budget
// are busy at once, more are open. Each open segment holds up to three
// descriptors (store, index, time index).
type FileBudget struct {
	max       int
	clock     atomic.Uint64 // ticks for least-recently-used order
	evictions atomic.Int64

	mu   sync.Mutex
	open map[*segment]*Log // segments with open files; guarded by mu
}

// NewFileBudget returns a budget of maxSegments open segments (at least 1).
func NewFileBudget(maxSegments int) *FileBudget {
	return &FileBudget{max: max(maxSegments, 1), open: map[*segment]*Log{}}
}

// Max returns the budget's bound.
func (b *FileBudget) Max() int { return b.max }

// OpenSegments returns how many segments have open files now.
func (b *FileBudget) OpenSegments() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return len(b.open)
}

// Evictions returns how many segments' files the budget has closed.
func (b *FileBudget) Evictions() int64 { return b.evictions.Load() }

// add notes that s, of log l, has open files, and closes others' files if
// that is beyond the budget. Callers may hold l's locks: everything the
// budget does to other segments only tries their locks.
func (b *FileBudget) add(s *segment, l *Log) {
	s.lastUsed.Store(b.clock.Add(1))
	b.mu.Lock()
	b.open[s] = l
	over := len(b.open) > b.max
	b.mu.Unlock()
	if over {
		b.shrink(s)
	}
}

// remove notes that s's files are closed.
func (b *FileBudget) remove(s *segment) {
	b.mu.Lock()
	delete(b.open, s)
	b.mu.Unlock()
}

// shrinkAttempts bounds the segments shrink tries per call: when they are
// all busy, the budget is exceeded until a later open tries again.
const shrinkAttempts = 16

// shrink closes the files of the least recently used segments other than
// keep until the budget holds, skipping those in use.
func (b *FileBudget) shrink(keep *segment) {
	tried := map[*segment]bool{keep: true}
	for range shrinkAttempts {
		b.mu.Lock()
		if len(b.open) <= b.max {
			b.mu.Unlock()
			return
		}
		var victim *segment
		var vl *Log
		for s, l := range b.open {
			if !tried[s] && (victim == nil || s.lastUsed.Load() < victim.lastUsed.Load()) {
				victim, vl = s, l
			}
		}
		b.mu.Unlock()
		if victim == nil {
			return
		}
		tried[victim] = true
		if vl.release(victim) {
			b.evictions.Add(1)
		} else {
			// In use, or never closable (a failed log's active
			// segment): to the back of the line, so that the next
			// shrinks try others instead of the same few.
			victim.lastUsed.Store(b.clock.Add(1))
		}
	}
}

// tick returns the next tick of the clock that orders segment use: the
// budget's when the log has one (segments of all its logs compete), else
// the log's own.
func (l *Log) tick() uint64 {
	if b := l.cfg.Files; b != nil {
		return b.clock.Add(1)
	}
	return l.clock.Add(1)
}

// track notes that s's files were just opened, for the budget if there is
// one. Callers hold s.fmu exclusively (or s is not visible to others yet),
// so that a concurrent closeFiles cannot slip between the open and the
// note.
func (l *Log) track(s *segment) {
	if s.files != nil {
		s.files.add(s, l)
	}
}

// newSegment returns the (file-less) segment at base of the log.
func (l *Log) newSegment(base uint64) *segment {
	s := &segment{dir: l.dir, base: base, files: l.cfg.Files}
	s.storeBytes.Store(-1)
	s.maxTime.Store(math.MinInt64)
	return s
}

// release closes s's files for the budget if nothing uses s now, and
// reports whether it did. It only tries locks: the budget calls it from
// any goroutine, which may hold locks of this log or others.
func (l *Log) release(s *segment) bool {
	if !s.sealed.Load() {
		return l.park(s)
	}
	if !l.cacheMu.TryLock() {
		return false
	}
	defer l.cacheMu.Unlock()
	if !s.fmu.TryLock() {
		return false
	}
	defer s.fmu.Unlock()
	if !s.sealed.Load() || s.store == nil {
		return false
	}
	if err := s.closeFiles(); err != nil {
		l.logger.Warn("logcore: closing cold segment", "segment", s.base, "err", err)
	}
	for i, o := range l.openSegs {
		if o == s {
			l.openSegs = append(l.openSegs[:i], l.openSegs[i+1:]...)
			break
		}
	}
	return true
}

// park closes the files of the active segment s if the log is idle: no
// append, fsync round, truncation or reader running, and under SyncAlways
// no appender waiting for an fsync. Its buffer is written first. The next
// append, fsync (SyncInterval's included), truncation or read of it
// reopens the files (unparkLocked).
func (l *Log) park(s *segment) bool {
	if !l.syncMu.TryLock() {
		return false
	}
	defer l.syncMu.Unlock()
	if !l.mu.TryLock() {
		return false
	}
	defer l.mu.Unlock()
	if s != l.active || s.parked || s.store == nil || l.closed || l.failed != nil {
		return false
	}
	if l.cfg.Sync == SyncAlways && l.durable.Load() < l.next {
		return false // appenders wait for the next fsync round
	}
	if err := l.flushLocked(); err != nil || len(s.pendTimes) > 0 {
		return false
	}
	if !s.fmu.TryLock() {
		return false
	}
	defer s.fmu.Unlock()
	s.idxBacked = s.idx.backed
	if err := s.closeFiles(); err != nil {
		l.logger.Warn("logcore: closing idle active segment", "segment", s.base, "err", err)
	}
	s.parked = true
	return true
}

// unparkLocked reopens the active segment's files if the budget closed
// them. A failure (no descriptor left, say) is returned as it is: nothing
// was written, and the log goes on. l.mu held.
func (l *Log) unparkLocked() error {
	s := l.active
	if !s.parked {
		return nil
	}
	if l.closed {
		return ErrClosed
	}
	s.fmu.Lock()
	defer s.fmu.Unlock()
	if err := l.reopenActive(s); err != nil {
		return err
	}
	s.parked = false
	l.track(s)
	return nil
}

// reopenActive opens the files of a parked active segment again, as they
// were when it was parked. Callers hold s.fmu exclusively.
func (l *Log) reopenActive(s *segment) error {
	store, err := l.fs.OpenFile(s.path(storeExt), os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("logcore: reopen %s: %w", s.path(storeExt), err)
	}
	if _, err := store.Seek(s.size, 0); err != nil {
		store.Close()
		return fmt.Errorf("logcore: reopen %s: %w", s.path(storeExt), err)
	}
	idxFile, err := l.fs.OpenFile(s.path(indexExt), os.O_RDWR, 0)
	if err != nil {
		store.Close()
		return fmt.Errorf("logcore: reopen %s: %w", s.path(indexExt), err)
	}
	x, err := openIndexFile(idxFile, l.cfg.MaxIndexBytes)
	if err != nil {
		idxFile.Close()
		store.Close()
		return fmt.Errorf("logcore: reopen %s: %w", s.path(indexExt), err)
	}
	x.backed = s.idxBacked
	timeFile, err := l.fs.OpenFile(s.path(timeIndexExt), os.O_RDWR, 0)
	if err != nil {
		x.close()
		store.Close()
		return fmt.Errorf("logcore: reopen %s: %w", s.path(timeIndexExt), err)
	}
	s.store, s.idx, s.timeFile = store, x, timeFile
	return nil
}
