package logcore

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// Log is a segmented commit log in one directory. See the package doc for
// the file format, recovery and durability. All methods are safe for
// concurrent use.
//
// Lock order: adminMu, syncMu, mu, segsMu, segment.fmu, cacheMu.
type Log struct {
	dir    string
	cfg    Config
	fs     FS
	logger *slog.Logger

	// adminMu serialises structural changes: truncation, retention, Close.
	adminMu sync.Mutex

	// syncMu is held by the goroutine that fsyncs for a group of appenders
	// (see syncTo), and by Close and TruncateFrom to keep such fsyncs out.
	syncMu sync.Mutex

	// roundMu guards round, the channel closed when the running group
	// commit round ends (nil when none runs).
	roundMu sync.Mutex
	round   chan struct{}
	// roundWaiters counts the goroutines waiting for the running round
	// (guarded by roundMu); lastWoke is how many the last round woke.
	roundWaiters int
	lastWoke     int

	// mu is the writer lock: it guards the active segment's write state,
	// next, failed and closed.
	mu     sync.Mutex
	active *segment
	next   uint64 // offset of the next append
	failed error  // set after an I/O error on the write path
	gen    uint64 // TruncateFrom count, to fail appends it removed
	closed bool

	segsMu sync.RWMutex
	segs   []*segment // guarded by segsMu; sorted by base, last is active

	// Published positions, each monotonic except across TruncateFrom:
	// records below visible may be read; below flushedNext they are in
	// the file; below durable they are fsynced.
	visible     atomic.Uint64
	flushedNext atomic.Uint64
	durable     atomic.Uint64
	lowest      atomic.Uint64
	genNow      atomic.Uint64 // gen, readable without mu

	// Wake-ups for readers waiting for new records.
	waiters  atomic.Int32
	notifyMu sync.Mutex
	notifyCh chan struct{}

	// The cache of open sealed segments.
	cacheMu  sync.Mutex
	openSegs []*segment
	clock    atomic.Uint64
	isClosed atomic.Bool
	holds    atomic.Int32 // cuts (MarkCut) not yet released: retention waits
	stopBg   chan struct{}
	bgDone   sync.WaitGroup
	stats    stats
}

// Open opens the log in dir, creating it if needed, and recovers it after a
// crash: see the package doc. It fails with ErrCorrupt if the active
// segment is damaged before its tail.
func Open(dir string, cfg Config) (*Log, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	cfg.fillDefaults()
	l := &Log{dir: dir, cfg: cfg, fs: cfg.FS, logger: cfg.Logger, notifyCh: make(chan struct{}), stopBg: make(chan struct{})}
	if err := l.fs.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("logcore: create %s: %w", dir, err)
	}
	names, err := l.fs.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("logcore: list %s: %w", dir, err)
	}
	bases := map[uint64]bool{}
	var orphans []string
	for _, name := range names {
		base, ext, ok := parseSegmentName(name)
		if !ok {
			continue
		}
		if ext == storeExt {
			bases[base] = true
		}
	}
	for _, name := range names {
		if base, ext, ok := parseSegmentName(name); ok && ext != storeExt && !bases[base] {
			orphans = append(orphans, name)
		}
	}
	for _, name := range orphans {
		// An index without its store: left by a crash while a segment
		// was being created or deleted. It indexes nothing.
		l.logger.Warn("logcore: removing index without a store", "file", name)
		if err := l.fs.Remove(dir + string(os.PathSeparator) + name); err != nil {
			return nil, fmt.Errorf("logcore: remove orphan %s: %w", name, err)
		}
	}
	sorted := make([]uint64, 0, len(bases))
	for b := range bases {
		sorted = append(sorted, b)
	}
	slices.Sort(sorted)
	if len(sorted) == 0 {
		sorted = append(sorted, cfg.InitialOffset)
	}
	for i, b := range sorted {
		s := l.newSegment(b)
		if i < len(sorted)-1 {
			next := sorted[i+1]
			if next-b > math.MaxUint32 {
				return nil, corruptf("segment %d spans %d records, more than an index can hold", b, next-b)
			}
			s.count = uint32(next - b)
			s.sealed.Store(true)
		}
		l.segs = append(l.segs, s)
	}
	active := l.segs[len(l.segs)-1]
	if err := l.openActive(active, len(names) > 0 && len(bases) > 0); err != nil {
		l.closeAll()
		return nil, err
	}
	if len(orphans) > 0 {
		if err := l.fs.SyncDir(dir); err != nil {
			l.closeAll()
			return nil, err
		}
	}
	l.active = active
	l.next = active.base + uint64(active.count)
	l.visible.Store(l.next)
	l.flushedNext.Store(l.next)
	l.durable.Store(l.next)
	l.lowest.Store(l.segs[0].base)
	// Only now may the budget park the active segment: park reads the
	// fields above (under l.mu, which Open does not take).
	l.track(active)
	l.startBackground()
	return l, nil
}

// openActive opens (creating if needed) the last segment for appends,
// recovering it if it was not closed cleanly.
func (l *Log) openActive(s *segment, existed bool) error {
	created := false
	store, err := l.fs.OpenFile(s.path(storeExt), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("logcore: open %s: %w", s.path(storeExt), err)
	}
	s.store = store
	size, err := store.Size()
	if err != nil {
		return err
	}
	if !existed {
		created = true
	}
	idxFile, err := l.fs.OpenFile(s.path(indexExt), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return fmt.Errorf("logcore: open %s: %w", s.path(indexExt), err)
	}
	timeFile, err := l.fs.OpenFile(s.path(timeIndexExt), os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		idxFile.Close()
		return fmt.Errorf("logcore: open %s: %w", s.path(timeIndexExt), err)
	}
	s.timeFile = timeFile

	if ok, err := l.trustCleanActive(s, store, size, idxFile, timeFile); err != nil {
		idxFile.Close()
		return err
	} else if !ok {
		if err := l.recoverActive(s, store, size, idxFile, timeFile); err != nil {
			idxFile.Close()
			return err
		}
	}
	if _, err := store.Seek(s.size, 0); err != nil {
		return err
	}
	s.flushed.Store(s.size)
	s.prewritten = s.size
	s.maxTime.Store(s.tt.max)
	if created {
		if err := l.fs.SyncDir(l.dir); err != nil {
			return err
		}
	}
	return nil
}

// trustCleanActive checks whether the active segment was closed cleanly: its
// index cut to exactly its entries, whose last one points at a valid frame of
// the right offset that ends exactly at the end of the store, and a time
// index that fits. If so it opens the segment without a scan.
func (l *Log) trustCleanActive(s *segment, store File, size int64, idxFile, timeFile File) (bool, error) {
	idxSize, err := idxFile.Size()
	if err != nil {
		return false, err
	}
	if idxSize%indexEntryWidth != 0 || idxSize > l.cfg.MaxIndexBytes || idxSize/indexEntryWidth > math.MaxUint32 {
		return false, nil
	}
	count := uint32(idxSize / indexEntryWidth)
	if count == 0 {
		if size != 0 {
			return false, nil
		}
	} else if count == uint32(l.cfg.MaxIndexBytes/indexEntryWidth) {
		// A full-size index is what a crash leaves; scan.
		return false, nil
	}
	x, err := openIndexFile(idxFile, l.cfg.MaxIndexBytes)
	if err != nil {
		return false, err
	}
	ok := true
	if count > 0 {
		// Every entry in order (a pass over the mapping, no store
		// reads), then the last one's frame.
		ok = indexInOrder(x, count, size)
		rel, pos := x.entry(count - 1)
		if !ok || rel != count-1 || pos >= uint64(size) {
			ok = false
		} else {
			rec, n, err := decodeAt(store, int64(pos), size)
			ok = err == nil && rec.Offset == s.base+uint64(count-1) && int64(pos)+int64(n) == size
		}
	}
	var times []timeEntry
	if ok {
		tsize, err := timeFile.Size()
		if err != nil {
			x.close()
			return false, err
		}
		b := make([]byte, tsize)
		if _, err := timeFile.ReadAt(b, 0); err != nil && tsize > 0 {
			ok = false
		} else {
			times, ok = parseTimeIndex(b, count)
			// A clean close ends the time index with an entry for the
			// last record; one cut short (a seal on a full disk cuts it
			// to nothing) is rebuilt by the scan.
			ok = ok && (count == 0 || len(times) > 0 && times[len(times)-1].rel == count-1)
		}
	}
	if !ok {
		// Drop the mapping but keep the file for recoverActive.
		x.file.Unmap(x.mmap)
		return false, nil
	}
	s.idx, s.count, s.size, s.times = x, count, size, times
	s.timeOnFile = int64(len(times)) * timeEntryWidth
	// The tracker restarts from the last entry: the sealing entry of a
	// clean close holds the maximum.
	tt := newTimeTracker()
	if n := len(times); n > 0 {
		tt.max, tt.lastT = times[n-1].t, times[n-1].t
		if times[n-1].rel == count-1 {
			tt.lastPos = size
		} else {
			tt.lastPos = int64(x.pos(times[n-1].rel + 1))
		}
	}
	s.tt = tt
	return true, nil
}

// recoverActive rebuilds the active segment from its store: cuts a torn
// tail, rebuilds the index and time index. See the package doc.
func (l *Log) recoverActive(s *segment, store File, size int64, idxFile, timeFile File) error {
	start := time.Now()
	res, err := scanStore(store, size, s.base)
	if err != nil {
		return fmt.Errorf("logcore: recover %s: %w", s.path(storeExt), err)
	}
	if uint64(len(res.positions)) > uint64(l.cfg.MaxIndexBytes/indexEntryWidth) {
		return fmt.Errorf("%w: segment %s holds %d records, more than MaxIndexBytes allows", ErrInvalidConfig, s.path(storeExt), len(res.positions))
	}
	if res.valid < size {
		// Space written ahead as zeros holds no record: it is
		// trimmed quietly (reserveLocked). Anything else is a torn write.
		zero, err := allZero(store, res.valid, size)
		if err != nil {
			return fmt.Errorf("logcore: recover %s: %w", s.path(storeExt), err)
		}
		if zero {
			l.logger.Debug("logcore: trimmed space written ahead", "segment", s.path(storeExt), "valid_bytes", res.valid, "trimmed_bytes", size-res.valid)
		} else {
			l.logger.Warn("logcore: cut torn tail", "segment", s.path(storeExt), "valid_bytes", res.valid, "cut_bytes", size-res.valid)
			l.stats.tornTails.Add(1)
			l.stats.tornBytes.Add(size - res.valid)
		}
		if err := store.Truncate(res.valid); err != nil {
			return err
		}
		if err := store.Sync(); err != nil {
			return err
		}
	}
	x, err := writeIndex(idxFile, res.positions, l.cfg.MaxIndexBytes)
	if err != nil {
		return err
	}
	b := make([]byte, 0, len(res.times)*timeEntryWidth)
	for _, e := range res.times {
		b = appendTimeEntry(b, e)
	}
	if err := timeFile.Truncate(0); err != nil {
		x.close()
		return err
	}
	if _, err := timeFile.WriteAt(b, 0); err != nil {
		x.close()
		return err
	}
	if err := timeFile.Sync(); err != nil {
		x.close()
		return err
	}
	s.idx, s.count, s.size, s.times, s.tt = x, uint32(len(res.positions)), res.valid, res.times, res.tracker
	s.timeOnFile = int64(len(b))
	l.stats.recoveries.Add(1)
	l.logger.Info("logcore: recovered active segment", "segment", s.path(storeExt), "records", len(res.positions), "took", time.Since(start))
	return nil
}

// decodeAt reads and decodes the frame at pos of a store of size bytes.
func decodeAt(f File, pos, size int64) (Record, int, error) {
	hdr := make([]byte, frameHeaderSize)
	if pos+frameHeaderSize > size {
		return Record{}, 0, errTorn
	}
	if _, err := f.ReadAt(hdr, pos); err != nil {
		return Record{}, 0, err
	}
	n, err := frameLength(hdr)
	if err != nil {
		return Record{}, 0, err
	}
	if pos+frameHeaderSize+int64(n) > size {
		return Record{}, 0, errTorn
	}
	b := make([]byte, frameHeaderSize+n)
	if _, err := f.ReadAt(b, pos); err != nil {
		return Record{}, 0, err
	}
	return DecodeFrame(b)
}

func (l *Log) startBackground() {
	if l.cfg.Sync == SyncInterval {
		l.bgDone.Add(1)
		go l.syncLoop()
	}
	l.bgDone.Add(1)
	go l.retentionLoop()
}

// syncLoop fsyncs every SyncInterval under the interval policy.
func (l *Log) syncLoop() {
	defer l.bgDone.Done()
	t := time.NewTicker(l.cfg.SyncInterval)
	defer t.Stop()
	for {
		select {
		case <-l.stopBg:
			return
		case <-t.C:
			if err := l.Sync(); err != nil && !errors.Is(err, ErrClosed) {
				l.logger.Error("logcore: background fsync failed", "dir", l.dir, "err", err)
			}
		}
	}
}

// closeAll closes every open segment (used when Open fails).
func (l *Log) closeAll() {
	for _, s := range l.segs {
		s.fmu.Lock()
		s.closeFiles()
		s.fmu.Unlock()
	}
}

// Dir returns the log's directory.
func (l *Log) Dir() string { return l.dir }

// Config returns the log's configuration.
func (l *Log) Config() Config { return l.cfg }

// allZero reports whether bytes [from, to) of f are all zero.
func allZero(f File, from, to int64) (bool, error) {
	buf := make([]byte, min(to-from, scanChunk))
	for pos := from; pos < to; {
		want := min(int64(len(buf)), to-pos)
		n, err := f.ReadAt(buf[:want], pos)
		for _, b := range buf[:n] {
			if b != 0 {
				return false, nil
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return true, nil // the file ends sooner: nothing more
			}
			return false, err
		}
		pos += int64(n)
	}
	return true, nil
}
