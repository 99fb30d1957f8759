package logcore

import (
	"fmt"
	"log/slog"
	"time"
)

// SyncPolicy says when appended records are made durable (fsynced).
type SyncPolicy int

const (
	// SyncAlways fsyncs before Append returns: an acknowledged record
	// survives a crash or power loss. Concurrent appenders share one fsync
	// (group commit), so the cost is one fsync per batch, not per record.
	// Records become visible to readers only once durable. The default.
	SyncAlways SyncPolicy = iota
	// SyncInterval fsyncs in the background every Config.SyncInterval.
	// UNSAFE for acknowledged writes: a crash loses up to one interval of
	// appended records (never a record before the last completed fsync).
	SyncInterval
	// SyncNeverUnsafe leaves flushing to the operating system (fsyncs only
	// when a segment is sealed and on Close). UNSAFE: a power loss can lose
	// any number of recent records. For benchmarks and data that can be
	// rebuilt.
	SyncNeverUnsafe
)

// String returns the policy's name as ParseSyncPolicy accepts it.
func (p SyncPolicy) String() string {
	switch p {
	case SyncAlways:
		return "always"
	case SyncInterval:
		return "interval"
	case SyncNeverUnsafe:
		return "never"
	}
	return fmt.Sprintf("SyncPolicy(%d)", int(p))
}

// ParseSyncPolicy parses "always", "interval" or "never".
func ParseSyncPolicy(s string) (SyncPolicy, error) {
	switch s {
	case "always":
		return SyncAlways, nil
	case "interval":
		return SyncInterval, nil
	case "never":
		return SyncNeverUnsafe, nil
	}
	return 0, fmt.Errorf("%w: unknown sync policy %q (want always, interval or never)", ErrInvalidConfig, s)
}

// Retention bounds how much of the oldest data a log keeps. Retention
// removes whole sealed segments, oldest first, in the background; the active
// segment is never removed. A zero field means no bound of that kind.
type Retention struct {
	// MaxBytes bounds the total size of the store files.
	MaxBytes int64
	// MaxAge removes a sealed segment once its newest record is older.
	MaxAge time.Duration
	// MaxSegments bounds the number of segments.
	MaxSegments int
	// KeepWithin, if positive, keeps every segment holding a record whose
	// timestamp is within KeepWithin of the log's newest record, whatever
	// the bounds above say: what must survive a restart for state rebuilt
	// from the recent records (a deduplication window) to come back
	// whole. It goes by record times, not the local clock, so replicas of
	// a log keep the same segments for it. TruncateBefore ignores it.
	KeepWithin time.Duration
	// KeepLastSealed keeps the newest sealed segment, whatever the bounds
	// above say: the segment a roll fsynced, so that a crash leaves the
	// log's newest durable records even when its active segment is not
	// fsynced (SyncNeverUnsafe: a Raft FSM's logs, whose state after a
	// crash is told by their last records). TruncateBefore ignores it.
	KeepLastSealed bool
}

// Config configures a Log. Start from DefaultConfig.
type Config struct {
	// InitialOffset is the offset of the first record of a new log.
	InitialOffset uint64
	// MaxSegmentBytes is the largest a store file grows before a new
	// segment starts. A record that would take the store past it goes
	// into a new segment; a record larger than it on its own is refused
	// (ErrRecordTooLarge).
	MaxSegmentBytes int64
	// MaxIndexBytes is the size of an active segment's pre-allocated,
	// memory-mapped index, a multiple of 12 bytes; it bounds the number of
	// records per segment to MaxIndexBytes/12.
	MaxIndexBytes int64
	// Sync is the durability policy; see SyncPolicy.
	Sync SyncPolicy
	// SyncInterval is the period of background fsyncs with SyncInterval.
	SyncInterval time.Duration
	// Retention bounds the oldest data kept.
	Retention Retention
	// RetentionCheckInterval is how often retention runs.
	RetentionCheckInterval time.Duration
	// MaxOpenSegments bounds how many sealed segments keep their files
	// open at once (two or three descriptors each); colder ones are closed
	// and reopened on demand.
	MaxOpenSegments int
	// Files, if set, bounds the open segments of every log that shares it
	// (see FileBudget): a process with many logs needs one. Nil: each log
	// bounds only its own sealed segments (MaxOpenSegments).
	Files *FileBudget
	// WriteBufferBytes is the size of the buffer appends go through.
	WriteBufferBytes int
	// PrewriteBytes is how far ahead of the data the active store is
	// filled with zeros, so that an fsync overwrites blocks that exist
	// instead of allocating new ones and growing the file (on ext4 that
	// halves the fsync of a busy group-commit round). The zeros are cut
	// when a segment is sealed or closed, and by recovery. Used with
	// SyncAlways only (with the other policies fsyncs are rare and the zeros
	// would double the bytes written). 0 disables it.
	PrewriteBytes int64
	// FS is the file system; OSFS by default.
	FS FS
	// Logger receives recovery and retention events; slog.Default() if nil.
	Logger *slog.Logger
	// Now stamps records that arrive without a time and measures ages for
	// retention; time.Now by default.
	Now func() time.Time
	// OnSync, if set, is called after every fsync of a store with its
	// duration and error. It must be quick and must not call the Log.
	OnSync func(d time.Duration, err error)
}

// DefaultConfig returns the defaults: 64 MiB segments, an index for up to
// about 1 million records per segment, SyncAlways, no retention bounds
// (checked every 30 s once set), at most 64 sealed segments open.
func DefaultConfig() Config {
	return Config{
		MaxSegmentBytes:        64 << 20,
		MaxIndexBytes:          indexEntryWidth * (1 << 20),
		Sync:                   SyncAlways,
		SyncInterval:           100 * time.Millisecond,
		RetentionCheckInterval: 30 * time.Second,
		MaxOpenSegments:        64,
		WriteBufferBytes:       256 << 10,
		PrewriteBytes:          1 << 20,
	}
}

// Validate reports whether c is usable; it wraps ErrInvalidConfig.
func (c Config) Validate() error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(format, args...))
	}
	switch {
	case c.MaxSegmentBytes < frameHeaderSize+recordFixedSize+1:
		return bad("MaxSegmentBytes %d too small", c.MaxSegmentBytes)
	case c.MaxSegmentBytes > maxPosition:
		return bad("MaxSegmentBytes %d too large (at most %d)", c.MaxSegmentBytes, int64(maxPosition))
	case c.MaxIndexBytes < indexEntryWidth || c.MaxIndexBytes%indexEntryWidth != 0:
		return bad("MaxIndexBytes %d must be a positive multiple of %d", c.MaxIndexBytes, indexEntryWidth)
	case c.MaxIndexBytes/indexEntryWidth > 1<<32-1:
		return bad("MaxIndexBytes %d too large", c.MaxIndexBytes)
	case c.Sync < SyncAlways || c.Sync > SyncNeverUnsafe:
		return bad("unknown sync policy %d", int(c.Sync))
	case c.Sync == SyncInterval && c.SyncInterval <= 0:
		return bad("SyncInterval must be positive with the interval policy")
	case c.Retention.MaxBytes < 0 || c.Retention.MaxAge < 0 || c.Retention.MaxSegments < 0:
		return bad("negative retention bound")
	case c.RetentionCheckInterval <= 0:
		return bad("RetentionCheckInterval must be positive")
	case c.MaxOpenSegments < 1:
		return bad("MaxOpenSegments must be at least 1")
	case c.WriteBufferBytes < 0:
		return bad("negative WriteBufferBytes")
	case c.PrewriteBytes < 0:
		return bad("negative PrewriteBytes")
	case c.InitialOffset > maxOffset:
		return bad("InitialOffset too large")
	}
	return nil
}

func (c *Config) fillDefaults() {
	if c.FS == nil {
		c.FS = OSFS{}
	}
	if c.Logger == nil {
		c.Logger = slog.Default()
	}
	if c.Now == nil {
		c.Now = time.Now
	}
}

// MaxSegmentRecords returns how many records one segment holds at most: its
// index's capacity. A batch fits in a segment, and so stays whole across a
// crash, if it takes no more records than this and no more bytes than
// MaxSegmentBytes.
func (c Config) MaxSegmentRecords() int { return int(c.MaxIndexBytes / indexEntryWidth) }
