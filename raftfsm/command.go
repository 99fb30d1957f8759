package raftfsm

import (
	"errors"
	"fmt"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

// A Raft command is one Raft log entry's payload: a Command, msgpack-encoded
// with the field names in the tags below. One entry carries many client
// requests (the leader batches them), applied in order.

// OpKind says what an Op does.
type OpKind uint8

const (
	// OpAppend appends Records to Log (creating it with Settings if it does
	// not exist and Settings is set).
	OpAppend OpKind = 1
	// OpCreate creates Log with Settings; creating a log that exists is a
	// no-op that succeeds.
	OpCreate OpKind = 2
	// OpDelete deletes Log and its records.
	OpDelete OpKind = 3
)

// CommandVersion is the Version of the commands this package's callers
// make. Version 1 entries are made under these rules, which the FSM
// enforces, identically on every replica:
//   - the leader fills in DedupWindow and DedupMax;
//   - an op's Settings are concrete: MaxSegmentBytes is set (an OpCreate
//     without Settings, or with MaxSegmentBytes 0, is ErrBadCommand);
//   - an append whose records take more than the log's segment size is
//     refused with ErrTooLarge (see AppendBytes), so that every append
//     is one logcore batch within one segment.
//
// Version 0 entries (made before it was kept) are applied as they always
// were: replayed old entries must give the state that replicas which
// applied them before the upgrade hold.
const CommandVersion = 1

// Command is the payload of one Raft entry.
type Command struct {
	// Version is the rules the entry was made under (see CommandVersion).
	Version uint8 `msgpack:"v,omitempty"`
	// Time is the leader's clock when it made the entry, Unix
	// nanoseconds. It stamps the records and ages deduplication ids, so
	// that every replica stores and decides the same.
	Time int64 `msgpack:"t"`
	Ops  []Op  `msgpack:"o"`
	// DedupWindow (nanoseconds) and DedupMax are the leader's
	// deduplication settings, so that every replica answers a retried
	// Natlog-Msg-Id alike whatever its own configuration says (see
	// FSMConfig.DedupWindow). A command without them (0: written before
	// they were carried) uses the applying node's FSMConfig values, as
	// such entries always did; replicas configured alike agree on them.
	DedupWindow int64 `msgpack:"dw,omitempty"`
	DedupMax    int   `msgpack:"dm,omitempty"`
}

// Op is one operation of a Command.
type Op struct {
	Kind    OpKind   `msgpack:"k"`
	Log     string   `msgpack:"l"`
	Records []Record `msgpack:"r,omitempty"`
	// MsgID makes an append idempotent within the dedup window: a later
	// append with the same id to the same log is answered with the first
	// one's offsets and writes nothing.
	MsgID string `msgpack:"m,omitempty"`
	// Expected, if set, makes the append conditional: it happens only if
	// the log's next offset is *Expected.
	Expected *uint64 `msgpack:"e,omitempty"`
	// Settings are the log's settings for OpCreate, and for an OpAppend
	// that may create the log.
	Settings *LogSettings `msgpack:"s,omitempty"`
}

// Record is a record to append: the FSM stamps its time and offset.
type Record struct {
	Headers []Header `msgpack:"h,omitempty"`
	Value   []byte   `msgpack:"v"`
}

// Header is one record header.
type Header struct {
	Key   string `msgpack:"k"`
	Value string `msgpack:"v"`
}

// LogSettings are a log's own settings, chosen when it is created and the
// same on every replica: the leader puts concrete values in the entry.
// Zero retention fields mean no such retention. A zero MaxSegmentBytes is
// the one field resolved at apply time, from the applying node's
// FSMConfig.Log: entries written before the leader filled it in (the
// sidecar's auto-created logs) keep that behaviour, so such a log's
// segment size, and with it which appends are too large, is each node's
// own; give every node the same segment size while such logs exist.
type LogSettings struct {
	MaxSegmentBytes   int64 `msgpack:"seg,omitempty"`
	RetentionBytes    int64 `msgpack:"rb,omitempty"`
	RetentionAge      int64 `msgpack:"ra,omitempty"` // nanoseconds
	RetentionSegments int   `msgpack:"rs,omitempty"`
}

// RetentionAgeDuration returns RetentionAge as a time.Duration.
func (s LogSettings) RetentionAgeDuration() time.Duration { return time.Duration(s.RetentionAge) }

// Result is the outcome of one Op, in the order of the Command's Ops.
type Result struct {
	// First is the offset of the first record appended (or, for a
	// duplicate, of the first record the original append wrote).
	First uint64
	// Count is the number of records appended.
	Count int
	// Duplicate is true if MsgID was seen within the window.
	Duplicate bool
	// Err, if not nil, says why the Op did nothing: it wraps one of the
	// errors below. The other Ops of the Command are not affected.
	Err error
}

// Errors an Op's Result may carry. Each is definite: the Op wrote nothing.
var (
	// ErrUnknownLog: the log does not exist (and the Op could not create it).
	ErrUnknownLog = errors.New("raftfsm: unknown log")
	// ErrExpectedOffset: a conditional append found another next offset;
	// the error is an *ExpectedOffsetError.
	ErrExpectedOffset = errors.New("raftfsm: expected offset mismatch")
	// ErrBadCommand: the entry does not decode or an Op is malformed.
	ErrBadCommand = errors.New("raftfsm: bad command")
	// ErrTooLarge: the append's records, as the FSM stores them, take more
	// than the log's segment size. Decided by the op and the log's
	// settings alone, so every replica refuses it alike; nothing was
	// written. (logcore keeps a batch whole across a crash only if it
	// fits in one segment; see AppendBytes.)
	ErrTooLarge = errors.New("raftfsm: append larger than the log's segment size")
	// ErrStorage: the log's storage failed on this replica. The FSM stops
	// applying to that log (it would diverge); see FSM.Failed.
	ErrStorage = errors.New("raftfsm: storage failure")
)

// ExpectedOffsetError is the Result.Err of a conditional append that did
// not happen. It matches ErrExpectedOffset.
type ExpectedOffsetError struct {
	Log            string
	Expected, Next uint64
}

func (e *ExpectedOffsetError) Error() string {
	return fmt.Sprintf("log %s: expected next offset %d, but it is %d", e.Log, e.Expected, e.Next)
}

// Is makes errors.Is(err, ErrExpectedOffset) hold.
func (e *ExpectedOffsetError) Is(target error) bool { return target == ErrExpectedOffset }

// EncodeCommand encodes c as a Raft entry's payload.
func EncodeCommand(c *Command) ([]byte, error) { return msgpack.Marshal(c) }

// DecodeCommand decodes a Raft entry's payload. It never panics.
func DecodeCommand(b []byte) (*Command, error) {
	var c Command
	if err := unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrBadCommand, err)
	}
	return &c, nil
}
