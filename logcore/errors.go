package logcore

import (
	"errors"
	"fmt"
)

// Errors returned by a Log. Callers compare with errors.Is; the errors
// returned are wrapped with the file, offset or cause.
var (
	// ErrOffsetOutOfRange is returned by reads of an offset below
	// LowestOffset or at or above NextOffset. Nothing was read. The error
	// is an *OffsetError that says what the valid range is.
	ErrOffsetOutOfRange = errors.New("logcore: offset out of range")

	// ErrCorrupt means stored bytes failed their checksum or do not
	// describe the record they should. On a read, no data is returned for
	// that record; on Open, the log refused to start rather than drop
	// records after the damage. Repair is an operator's (or a Raft
	// peer's) job; the log never silently skips such a record.
	ErrCorrupt = errors.New("logcore: corrupt data")

	// ErrClosed is returned by every operation on a closed Log.
	ErrClosed = errors.New("logcore: log closed")

	// ErrFailed is returned by appends after a write or fsync failed. The
	// log refuses all further appends until it is closed and reopened,
	// because after a failed fsync the state of the file is unknown and a
	// retry could report unsynced data as durable. Records acknowledged
	// before the failure are unaffected; the append that saw the failure
	// has an indefinite outcome (it may or may not survive a crash).
	ErrFailed = errors.New("logcore: log failed after an I/O error; reopen it")

	// ErrRecordTooLarge is returned by Append when one record's frame
	// would not fit in an empty segment. Nothing was written.
	ErrRecordTooLarge = errors.New("logcore: record too large")

	// ErrTruncated is returned by an append whose records were removed by
	// TruncateFrom before they were made durable. They are not in the log.
	ErrTruncated = errors.New("logcore: records truncated before they were durable")

	// ErrInvalidConfig is returned by Config.Validate and Open.
	ErrInvalidConfig = errors.New("logcore: invalid config")
)

// OffsetError is the error for a read outside the log. It matches
// ErrOffsetOutOfRange with errors.Is.
type OffsetError struct {
	Offset uint64 // the offset asked for
	Lowest uint64 // the lowest offset in the log
	Next   uint64 // the offset the next append will get
}

func (e *OffsetError) Error() string {
	if e.Next == e.Lowest {
		return fmt.Sprintf("offset %d out of range: log is empty, next offset %d", e.Offset, e.Next)
	}
	return fmt.Sprintf("offset %d out of range [%d, %d]", e.Offset, e.Lowest, e.Next-1)
}

// Is makes errors.Is(err, ErrOffsetOutOfRange) hold.
func (e *OffsetError) Is(target error) bool { return target == ErrOffsetOutOfRange }

// corruptf returns an error wrapping ErrCorrupt.
func corruptf(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrCorrupt, fmt.Sprintf(format, args...))
}
