package logcore

import (
	"errors"
	"fmt"
	"math"
	"os"
	"slices"
	"sort"
	"sync/atomic"
	"time"
)

// stats are the log's counters.
type stats struct {
	tornTails       atomic.Int64
	tornBytes       atomic.Int64
	recoveries      atomic.Int64
	indexRebuilds   atomic.Int64
	syncs           atomic.Int64
	rolls           atomic.Int64
	retained        atomic.Int64 // segments removed by retention
	reserveFailures atomic.Int64
}

// Stats are counters of what a Log has done since Open.
type Stats struct {
	TornTails      int64 // torn tails cut by recovery
	TornBytes      int64 // bytes cut with them
	Recoveries     int64 // active segments rebuilt by scanning
	IndexRebuilds  int64 // sealed segment indexes rebuilt
	Syncs          int64 // store fsyncs
	Rolls          int64 // new segments started
	RetainedRemove int64 // segments removed by retention
	// ReserveFailures counts appends refused because the file space for
	// them could not be written first: a full disk. Nothing of them was
	// written and the log goes on.
	ReserveFailures int64
}

// Stats returns the log's counters.
func (l *Log) Stats() Stats {
	return Stats{
		TornTails:       l.stats.tornTails.Load(),
		TornBytes:       l.stats.tornBytes.Load(),
		Recoveries:      l.stats.recoveries.Load(),
		IndexRebuilds:   l.stats.indexRebuilds.Load(),
		Syncs:           l.stats.syncs.Load(),
		Rolls:           l.stats.rolls.Load(),
		RetainedRemove:  l.stats.retained.Load(),
		ReserveFailures: l.stats.reserveFailures.Load(),
	}
}

// Info describes a log's extent.
type Info struct {
	LowestOffset uint64 // oldest record kept
	NextOffset   uint64 // offset of the next record; the log end
	Records      uint64 // NextOffset - LowestOffset
	Segments     int
	Bytes        int64 // total size of the stores (records in the write buffer included)
	Sync         SyncPolicy
	Retention    Retention
}

// Info returns the log's extent. Bytes needs the size of each sealed store,
// which is read once per segment and then cached.
func (l *Log) Info() (Info, error) {
	if l.isClosed.Load() {
		return Info{}, ErrClosed
	}
	l.segsMu.RLock()
	segs := append([]*segment(nil), l.segs...)
	l.segsMu.RUnlock()
	var bytes int64
	for _, s := range segs[:len(segs)-1] {
		n, err := l.sealedSize(s)
		if err != nil {
			return Info{}, err
		}
		bytes += n
	}
	// The active store's size includes records still in the write
	// buffer: under SyncNever a log may keep its last 256 KiB there.
	l.mu.Lock()
	if act := l.active; act == segs[len(segs)-1] {
		bytes += act.size
	} else {
		bytes += segs[len(segs)-1].flushed.Load()
	}
	l.mu.Unlock()
	low, next := l.lowest.Load(), l.visible.Load()
	return Info{
		LowestOffset: low, NextOffset: next, Records: next - low,
		Segments: len(segs), Bytes: bytes, Sync: l.cfg.Sync, Retention: l.cfg.Retention,
	}, nil
}

// sealedSize returns a sealed segment's store size, reading it once.
func (l *Log) sealedSize(s *segment) (int64, error) {
	if n := s.storeBytes.Load(); n >= 0 {
		return n, nil
	}
	f, err := l.fs.OpenFile(s.path(storeExt), os.O_RDONLY, 0)
	if err != nil {
		return 0, err
	}
	defer f.Close()
	n, err := f.Size()
	if err != nil {
		return 0, err
	}
	s.storeBytes.Store(n)
	return n, nil
}

// sealedMaxTime returns a sealed segment's newest timestamp from the last
// entry of its time index (the sealing entry), reading it once. If the time
// index is unusable it scans the store.
func (l *Log) sealedMaxTime(s *segment) (int64, error) {
	if t := s.maxTime.Load(); t != math.MinInt64 {
		return t, nil
	}
	times, err := l.timeEntries(s)
	if err != nil {
		return 0, err
	}
	t := int64(math.MinInt64)
	if n := len(times); n > 0 {
		t = times[n-1].t
	}
	s.maxTime.Store(t)
	return t, nil
}

// timeEntries returns a sealed segment's time index, rebuilding it from the
// store if the file does not check out.
func (l *Log) timeEntries(s *segment) ([]timeEntry, error) {
	f, err := l.fs.OpenFile(s.path(timeIndexExt), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	size, err := f.Size()
	if err != nil {
		return nil, err
	}
	b := make([]byte, size)
	if _, err := f.ReadAt(b, 0); err != nil && size > 0 {
		return nil, err
	}
	if times, ok := parseTimeIndex(b, s.count); ok && (s.count == 0 || len(times) > 0 && times[len(times)-1].rel == s.count-1) {
		return times, nil
	}
	l.logger.Warn("logcore: rebuilding time index", "segment", s.path(timeIndexExt))
	store, err := l.fs.OpenFile(s.path(storeExt), os.O_RDONLY, 0)
	if err != nil {
		return nil, err
	}
	defer store.Close()
	ssize, err := store.Size()
	if err != nil {
		return nil, err
	}
	res, err := scanStore(store, ssize, s.base)
	if err != nil {
		return nil, err
	}
	times := res.times
	if e, ok := res.tracker.final(uint32(len(res.positions)), res.valid); ok {
		times = append(times, e)
	}
	out := make([]byte, 0, len(times)*timeEntryWidth)
	for _, e := range times {
		out = appendTimeEntry(out, e)
	}
	if err := f.Truncate(0); err == nil {
		if _, err := f.WriteAt(out, 0); err == nil {
			f.Sync()
		}
	}
	return times, nil
}

// OffsetForTime returns the offset of the first record whose timestamp is
// at or after t (Unix nanoseconds): every record before it is older. It
// returns NextOffset if there is none.
func (l *Log) OffsetForTime(t int64) (uint64, error) {
	l.segsMu.RLock()
	segs := append([]*segment(nil), l.segs...)
	l.segsMu.RUnlock()
	for _, s := range segs {
		var times []timeEntry
		if s.sealed.Load() {
			mt, err := l.sealedMaxTime(s)
			if err != nil {
				return 0, err
			}
			if mt < t {
				continue
			}
			if times, err = l.timeEntries(s); err != nil {
				return 0, err
			}
		} else {
			l.mu.Lock()
			times = append(times, s.times...)
			l.mu.Unlock()
		}
		k := sort.Search(len(times), func(i int) bool { return times[i].t >= t })
		from := s.base
		if k > 0 {
			from = s.base + uint64(times[k-1].rel) + 1
		}
		from = max(from, l.lowest.Load())
		for {
			recs, err := l.ReadBatch(from, 512, 1<<20)
			if err != nil {
				if errors.Is(err, ErrOffsetOutOfRange) && from < l.lowest.Load() {
					from = l.lowest.Load()
					continue
				}
				return 0, err
			}
			if len(recs) == 0 {
				return l.visible.Load(), nil
			}
			for _, r := range recs {
				if r.Time >= t {
					return r.Offset, nil
				}
			}
			from = recs[len(recs)-1].Offset + 1
			if s.sealed.Load() && from >= s.base+uint64(s.count) {
				break
			}
		}
	}
	return l.visible.Load(), nil
}

// TruncateBefore removes the sealed segments all of whose records are below
// off. It removes whole segments only, so LowestOffset may stay below off;
// the active segment is never removed.
func (l *Log) TruncateBefore(off uint64) error {
	l.adminMu.Lock()
	defer l.adminMu.Unlock()
	if l.isClosed.Load() {
		return ErrClosed
	}
	l.segsMu.RLock()
	n := 0
	for n < len(l.segs)-1 && l.segs[n+1].base <= off {
		n++
	}
	l.segsMu.RUnlock()
	return l.removeOldest(n)
}

// removeOldest removes the n oldest segments (never the active one).
// Callers hold adminMu.
func (l *Log) removeOldest(n int) error {
	if n <= 0 {
		return nil
	}
	l.segsMu.Lock()
	n = min(n, len(l.segs)-1)
	victims := append([]*segment(nil), l.segs[:n]...)
	l.segs = append([]*segment(nil), l.segs[n:]...)
	l.lowest.Store(l.segs[0].base)
	l.segsMu.Unlock()
	var errs []error
	for _, s := range victims {
		errs = append(errs, l.deleteSegment(s))
	}
	errs = append(errs, l.fs.SyncDir(l.dir))
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("logcore: remove segments: %w", err)
	}
	return nil
}

// retentionLoop applies Config.Retention every RetentionCheckInterval.
func (l *Log) retentionLoop() {
	defer l.bgDone.Done()
	r := l.cfg.Retention
	if r.MaxBytes == 0 && r.MaxAge == 0 && r.MaxSegments == 0 {
		return
	}
	t := time.NewTicker(l.cfg.RetentionCheckInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stopBg:
			return
		case <-t.C:
			if err := l.ApplyRetention(); err != nil && !errors.Is(err, ErrClosed) {
				l.logger.Error("logcore: retention", "dir", l.dir, "err", err)
			}
		}
	}
}

// ApplyRetention removes the oldest sealed segments that Config.Retention
// no longer keeps, and returns how many it removed. It runs in the
// background every RetentionCheckInterval; calling it directly is for tests
// and operators. Appends go on while it runs. While a cut (MarkCut) is
// held it removes nothing; the next round catches up.
func (l *Log) ApplyRetention() error {
	l.adminMu.Lock()
	defer l.adminMu.Unlock()
	if l.isClosed.Load() {
		return ErrClosed
	}
	if l.holds.Load() > 0 {
		return nil
	}
	r := l.cfg.Retention
	l.segsMu.RLock()
	segs := append([]*segment(nil), l.segs...)
	l.segsMu.RUnlock()
	sealed := len(segs) - 1
	n := 0
	if r.MaxSegments > 0 && len(segs) > r.MaxSegments {
		n = min(len(segs)-r.MaxSegments, sealed)
	}
	if r.MaxBytes > 0 {
		total := segs[sealed].flushed.Load()
		sizes := make([]int64, sealed)
		for i, s := range segs[:sealed] {
			sz, err := l.sealedSize(s)
			if err != nil {
				return err
			}
			sizes[i] = sz
			total += sz
		}
		k := 0
		for k < sealed && total > r.MaxBytes {
			total -= sizes[k]
			k++
		}
		n = max(n, k)
	}
	if r.MaxAge > 0 {
		cutoff := l.cfg.Now().Add(-r.MaxAge).UnixNano()
		k := 0
		for k < sealed {
			mt, err := l.sealedMaxTime(segs[k])
			if err != nil {
				return err
			}
			if mt >= cutoff {
				break
			}
			k++
		}
		n = max(n, k)
	}
	if n > 0 && r.KeepWithin > 0 {
		// The newest record's time: the active segment's, or if it is
		// empty the last sealed one's.
		l.mu.Lock()
		act := l.active
		newest, empty := act.tt.max, act.count == 0
		l.mu.Unlock()
		if empty {
			// The newest record is in the segment before the active
			// one (rolls since segs was taken only make it newer).
			l.segsMu.RLock()
			cur := l.segs
			l.segsMu.RUnlock()
			if i := slices.Index(cur, act); i > 0 {
				mt, err := l.sealedMaxTime(cur[i-1])
				if err != nil {
					return err
				}
				newest = mt
			}
		}
		floor := int64(math.MinInt64)
		if newest >= math.MinInt64+int64(r.KeepWithin) {
			floor = newest - int64(r.KeepWithin)
		}
		for k := range n {
			mt, err := l.sealedMaxTime(segs[k])
			if err != nil {
				return err
			}
			if mt >= floor {
				n = k
				break
			}
		}
	}
	if r.KeepLastSealed && n >= sealed {
		n = sealed - 1
	}
	if n <= 0 {
		return nil
	}
	l.logger.Info("logcore: retention removes segments", "dir", l.dir, "segments", n)
	l.stats.retained.Add(int64(n))
	return l.removeOldest(n)
}

// deleteSegment closes a segment's files, makes reads of it fail, and
// removes its files, the store first: a crash part way leaves at worst an
// index without a store, which Open removes. The caller syncs the directory.
func (l *Log) deleteSegment(s *segment) error {
	s.fmu.Lock()
	s.deleted = true
	err := s.closeFiles()
	s.fmu.Unlock()
	l.cacheRemove(s)
	for _, ext := range []string{storeExt, indexExt, timeIndexExt} {
		if rerr := l.fs.Remove(s.path(ext)); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

// lockAll takes the locks that keep every other writer out (structural
// changes, fsync rounds, appends) and returns the function that releases
// them.
func (l *Log) lockAll() (unlock func()) {
	l.adminMu.Lock()
	l.syncMu.Lock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		l.syncMu.Unlock()
		l.adminMu.Unlock()
	}
}
