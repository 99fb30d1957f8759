package raftfsm

import (
	"errors"
	"fmt"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
)

var (
	_ raft.LogStore          = (*LogStore)(nil)
	_ raft.MonotonicLogStore = (*LogStore)(nil)
)

// LogStore is a raft.LogStore on a logcore.Log: the Raft log on natlog's own
// storage. Each entry is one record whose offset is the entry's Raft index
// (see logcodec.go for the record format), so the log is dense: it holds the
// entries FirstIndex..LastIndex with no gap.
//
// Contract, as hashicorp/raft expects it:
//
//   - FirstIndex and LastIndex return 0 when the log is empty.
//   - GetLog of an index that is not in the log returns raft.ErrLogNotFound
//     itself, unwrapped: Raft's replication compares the error with == to
//     decide to send a snapshot instead.
//   - StoreLogs is durable when it returns nil (with logcore.SyncAlways, the
//     default): one fsync for the whole batch, shared with no one else since
//     Raft has a single writer. Its batch must be contiguous. Storing index i
//     replaces the entry at i and removes every entry after it (a conflict);
//     storing an index above LastIndex+1 (after a snapshot was installed)
//     removes every entry first, since the log cannot hold a gap and Raft
//     never needs entries that a snapshot covers.
//   - DeleteRange(min, max) removes a suffix (max >= LastIndex) exactly and
//     durably. For a prefix (min <= FirstIndex: compaction after a snapshot)
//     it removes the whole segments below max+1 and leaves the entries of the
//     segment that holds max+1, so FirstIndex may stay at or below max: Raft
//     tolerates this (it only needs the entries after max to remain), and
//     the next compaction removes them. A range that covers the whole log
//     empties it. A range strictly inside the log is refused with
//     ErrRangeNotSupported.
//
// A LogStore is safe for concurrent use. StoreLogs and DeleteRange are
// serialised by a mutex (each reads the log's extent and then changes it);
// FirstIndex and LastIndex take the same mutex so that they see a consistent
// extent; GetLog takes no lock of its own.
type LogStore struct {
	log *logcore.Log

	// mu serialises StoreLogs, DeleteRange, FirstIndex and LastIndex.
	mu sync.Mutex
}

// OpenLogStore opens, or creates, the Raft log in dir. cfg configures the
// underlying logcore.Log (start from logcore.DefaultConfig). Its
// InitialOffset is ignored: a new log starts at Raft's first index, 1. It
// must not set Retention: only Raft decides what to delete. A cfg.Sync
// weaker than logcore.SyncAlways makes StoreLogs return before the entries
// are durable, which breaks Raft's safety after a power loss (a node may
// forget entries it acknowledged to a leader); it is for benchmarks only.
func OpenLogStore(dir string, cfg logcore.Config) (*LogStore, error) {
	if cfg.Retention != (logcore.Retention{}) {
		return nil, fmt.Errorf("%w: a Raft log store must not set Retention", logcore.ErrInvalidConfig)
	}
	cfg.InitialOffset = 1
	l, err := logcore.Open(dir, cfg)
	if err != nil {
		return nil, fmt.Errorf("raftfsm: open log store: %w", err)
	}
	return &LogStore{log: l}, nil
}

// Close closes the log. Entries stored by StoreLogs are already durable.
func (s *LogStore) Close() error {
	return s.log.Close()
}

// FirstIndex returns the index of the oldest entry kept, or 0 if the log is
// empty.
func (s *LogStore) FirstIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	first, _, ok := s.extentLocked()
	if !ok {
		return 0, nil
	}
	return first, nil
}

// LastIndex returns the index of the newest entry, or 0 if the log is empty.
func (s *LogStore) LastIndex() (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	_, last, ok := s.extentLocked()
	if !ok {
		return 0, nil
	}
	return last, nil
}

// extentLocked returns the first and last index of the log; ok is false if
// the log is empty. The caller holds s.mu, so no write changes the extent
// between the two reads.
func (s *LogStore) extentLocked() (first, last uint64, ok bool) {
	low, next := s.log.LowestOffset(), s.log.NextOffset()
	if next <= low {
		return 0, 0, false
	}
	return low, next - 1, true
}

// GetLog reads the entry at index into l. It returns raft.ErrLogNotFound,
// unwrapped, if the log does not hold index, and an error wrapping
// logcore.ErrCorrupt (and ErrBadEntry if the record is not an entry) if the
// stored entry is damaged. l's Data and Extensions are the caller's.
func (s *LogStore) GetLog(index uint64, l *raft.Log) error {
	if index == 0 {
		return raft.ErrLogNotFound
	}
	rec, err := s.log.Read(index)
	if err != nil {
		if errors.Is(err, logcore.ErrOffsetOutOfRange) {
			return raft.ErrLogNotFound
		}
		return fmt.Errorf("raftfsm: read log entry %d: %w", index, err)
	}
	return decodeEntry(index, rec.Value, l)
}

// StoreLog stores one entry; see StoreLogs.
func (s *LogStore) StoreLog(l *raft.Log) error {
	return s.StoreLogs([]*raft.Log{l})
}

// StoreLogs stores a contiguous batch of entries and returns once they are
// durable. Whatever the log held at and after the batch's first index is
// replaced; if the batch starts above LastIndex+1 the log is emptied first
// (see LogStore). A batch that is not contiguous fails with ErrNotContiguous
// and stores nothing. On any other error the outcome is indefinite: the
// batch may survive a crash (logcore keeps a batch that fits in one segment
// whole or not at all, a larger one may leave a prefix), and entries after
// its first index may already have been removed.
func (s *LogStore) StoreLogs(logs []*raft.Log) error {
	if len(logs) == 0 {
		return nil
	}
	first := logs[0].Index
	size := 0
	for i, l := range logs {
		if l == nil || l.Index == 0 || l.Index != first+uint64(i) {
			return fmt.Errorf("%w: entry %d of %d in a batch starting at index %d", ErrNotContiguous, i, len(logs), first)
		}
		size += entrySize(l)
	}
	recs := make([]logcore.Record, len(logs))
	buf := make([]byte, 0, size)
	for i, l := range logs {
		start := len(buf)
		buf = appendEntry(buf, l)
		recs[i] = logcore.Record{Time: recordTime(l), Value: buf[start:len(buf):len(buf)]}
	}

	s.mu.Lock()
	defer s.mu.Unlock()
	low, next := s.log.LowestOffset(), s.log.NextOffset()
	switch {
	case first == next:
	case first < next && first > low:
		// A conflict: Raft normally removes the suffix itself with
		// DeleteRange first; doing it here keeps the log dense anyway.
		if err := s.log.TruncateFrom(first); err != nil {
			return fmt.Errorf("raftfsm: store logs from %d: remove suffix: %w", first, err)
		}
	default:
		// Above the next index (a snapshot was installed), at or below the
		// first one, or into an empty log that expects another index:
		// nothing kept can precede the batch without a gap.
		if err := s.log.Reset(first); err != nil {
			return fmt.Errorf("raftfsm: store logs from %d: reset log: %w", first, err)
		}
	}
	got, err := s.log.AppendBatch(recs)
	if err != nil {
		return fmt.Errorf("raftfsm: store logs %d..%d: %w", first, logs[len(logs)-1].Index, err)
	}
	if got != first {
		// Cannot happen while s.mu serialises every writer of s.log.
		return fmt.Errorf("raftfsm: store logs: entries %d..%d were stored at offset %d: %w",
			first, logs[len(logs)-1].Index, got, logcore.ErrCorrupt)
	}
	return nil
}

// DeleteRange deletes the entries min..max, inclusive; see LogStore for what
// a prefix deletion keeps. A range outside the log is no error. The deletion
// is durable when it returns nil. An error leaves the outcome indefinite
// (a failed prefix deletion may leave some old segments; a failed suffix
// deletion some of the suffix), except ErrRangeNotSupported, which deletes
// nothing.
func (s *LogStore) DeleteRange(min, max uint64) error {
	if min > max {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	first, last, ok := s.extentLocked()
	if !ok || max < first || min > last {
		return nil
	}
	var err error
	switch {
	case min <= first && max >= last:
		// Everything: keep the next index, which is where Raft appends
		// unless a snapshot moves it (StoreLogs resets again then).
		err = s.log.Reset(last + 1)
	case min <= first:
		err = s.log.TruncateBefore(max + 1)
	case max >= last:
		err = s.log.TruncateFrom(min)
	default:
		return fmt.Errorf("%w: asked for %d..%d of %d..%d", ErrRangeNotSupported, min, max, first, last)
	}
	if err != nil {
		return fmt.Errorf("raftfsm: delete log entries %d..%d: %w", min, max, err)
	}
	return nil
}

// IsMonotonic reports true: the log is dense by construction, so it tells
// Raft (raft.MonotonicLogStore) to delete all old entries after installing
// or restoring a snapshot rather than leave a gap before the next entry.
// Deleting the whole log costs one logcore.Reset, removing its segment files.
func (s *LogStore) IsMonotonic() bool { return true }
