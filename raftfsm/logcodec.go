package raftfsm

import (
	"encoding/binary"
	"fmt"
	"math"
	"time"

	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
)

// Entry encoding. A raft.Log is stored as one logcore record whose offset is
// the entry's Raft index (so the log needs no index of its own) and whose
// value is, in version 1:
//
//	[version uint8 = 1][type uint8][flags uint8][term uvarint]
//	[appended at: seconds int64 BE, nanoseconds uint32 BE]   if flags&flagAppendedAt
//	[extensions length uvarint][extensions]                  if flags&flagExtensions
//	[data: the rest of the value]
//
// The time format is pinned: AppendedAt is stored as Unix seconds and
// nanoseconds (time.Time.Unix and Nanosecond), so every instant Go can
// represent round-trips; the monotonic clock reading and the location are
// not stored, and a decoded AppendedAt is in UTC. A zero AppendedAt
// (time.Time{}) is not stored and decodes as zero, so IsZero still holds.
// Empty Data or Extensions decode as nil. The record's logcore timestamp is
// AppendedAt in Unix nanoseconds when that is set and representable, for the
// log's time index only; decoding never reads it.
//
// Integrity is logcore's job: every frame carries a CRC-32C and its offset.
// A value that does not parse (an unknown version or flag, a varint or length
// that runs past the end) is reported as ErrBadEntry, never returned.
const (
	entryVersion1 = 1

	flagAppendedAt = 1 << 0
	flagExtensions = 1 << 1
	knownFlags     = flagAppendedAt | flagExtensions

	entryFixedSize = 3 // version, type, flags
)

// entrySize returns an upper bound of l's encoded size.
func entrySize(l *raft.Log) int {
	return entryFixedSize + binary.MaxVarintLen64 + 12 + binary.MaxVarintLen64 + len(l.Extensions) + len(l.Data)
}

// appendEntry appends l's encoding (without its index) to dst.
func appendEntry(dst []byte, l *raft.Log) []byte {
	var flags byte
	if !l.AppendedAt.IsZero() {
		flags |= flagAppendedAt
	}
	if len(l.Extensions) > 0 {
		flags |= flagExtensions
	}
	dst = append(dst, entryVersion1, byte(l.Type), flags)
	dst = binary.AppendUvarint(dst, l.Term)
	if flags&flagAppendedAt != 0 {
		dst = binary.BigEndian.AppendUint64(dst, uint64(l.AppendedAt.Unix()))
		dst = binary.BigEndian.AppendUint32(dst, uint32(l.AppendedAt.Nanosecond()))
	}
	if flags&flagExtensions != 0 {
		dst = binary.AppendUvarint(dst, uint64(len(l.Extensions)))
		dst = append(dst, l.Extensions...)
	}
	return append(dst, l.Data...)
}

// decodeEntry decodes the value b of the record at index into l. l's Data and
// Extensions alias b. It never panics.
func decodeEntry(index uint64, b []byte, l *raft.Log) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: index %d: %s: %w", ErrBadEntry, index, fmt.Sprintf(format, args...), logcore.ErrCorrupt)
	}
	if len(b) < entryFixedSize {
		return bad("%d bytes, shorter than the %d-byte header", len(b), entryFixedSize)
	}
	if b[0] != entryVersion1 {
		return bad("unsupported encoding version %d", b[0])
	}
	typ, flags := raft.LogType(b[1]), b[2]
	if flags&^knownFlags != 0 {
		return bad("unknown flags %#x", flags)
	}
	b = b[entryFixedSize:]
	term, n := binary.Uvarint(b)
	if n <= 0 {
		return bad("bad term varint")
	}
	b = b[n:]
	var at time.Time
	if flags&flagAppendedAt != 0 {
		if len(b) < 12 {
			return bad("appended-at time cut short")
		}
		sec := int64(binary.BigEndian.Uint64(b))
		nsec := binary.BigEndian.Uint32(b[8:])
		if nsec >= 1e9 {
			return bad("appended-at nanoseconds %d out of range", nsec)
		}
		at = time.Unix(sec, int64(nsec)).UTC()
		b = b[12:]
	}
	var ext []byte
	if flags&flagExtensions != 0 {
		size, n := binary.Uvarint(b)
		if n <= 0 || size == 0 || size > uint64(len(b)-n) {
			return bad("bad extensions length")
		}
		ext = b[n : n+int(size) : n+int(size)]
		b = b[n+int(size):]
	}
	var data []byte
	if len(b) > 0 {
		data = b
	}
	*l = raft.Log{Index: index, Term: term, Type: typ, Data: data, Extensions: ext, AppendedAt: at}
	return nil
}

// recordTime is the logcore timestamp stored with l: AppendedAt in Unix
// nanoseconds, or 0 (logcore then stamps the time of the append) when it is
// unset or outside what UnixNano can represent.
func recordTime(l *raft.Log) int64 {
	if l.AppendedAt.IsZero() {
		return 0
	}
	const limit = math.MaxInt64/int64(time.Second) - 1
	if sec := l.AppendedAt.Unix(); sec < -limit || sec > limit {
		return 0
	}
	return l.AppendedAt.UnixNano()
}
