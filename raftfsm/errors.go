package raftfsm

import "errors"

// Errors returned by the Raft stores. Callers compare with errors.Is unless a
// comment says otherwise; returned errors are wrapped with the index, file or
// cause.
var (
	// ErrKeyNotFound is returned by StableStore.Get and GetUint64 for a key
	// that was never set. Its text is exactly "not found", and it is
	// returned unwrapped, because hashicorp/raft recognises a missing key
	// by comparing err.Error() with "not found" (NewRaft, HasExistingState
	// and requestVote); any other text makes Raft refuse to start or to
	// vote. It is the same convention as raft-boltdb's ErrKeyNotFound.
	ErrKeyNotFound = errors.New("not found")

	// ErrStableCorrupt is returned by OpenStableStore when the stable store
	// file fails its checksum or does not parse. Nothing is guessed: the
	// node must not start with a term or vote it cannot trust (voting twice
	// in a term breaks Raft). Recovery is an operator's decision.
	ErrStableCorrupt = errors.New("raftfsm: stable store file is corrupt")

	// ErrStableFailed is returned by Set and SetUint64 after a rewrite of
	// the stable store failed once its new file had been renamed into
	// place: what survives a crash is then unknown, so the store refuses
	// further writes until it is reopened. The write that saw the failure
	// has an indefinite outcome; reads keep returning the last acknowledged
	// values.
	ErrStableFailed = errors.New("raftfsm: stable store failed after an I/O error; reopen it")

	// ErrClosed is returned by every method of a closed StableStore. (A
	// closed LogStore returns logcore.ErrClosed, wrapped.)
	ErrClosed = errors.New("raftfsm: store closed")

	// ErrNotContiguous is returned by LogStore.StoreLogs for a batch whose
	// indexes are not consecutive, or that holds index 0 or a nil entry.
	// It is definite: nothing was stored. hashicorp/raft never sends such
	// a batch.
	ErrNotContiguous = errors.New("raftfsm: log entries are not contiguous")

	// ErrRangeNotSupported is returned by LogStore.DeleteRange for a range
	// strictly inside the log (neither a prefix nor a suffix). It is
	// definite: nothing was deleted. hashicorp/raft deletes only prefixes
	// (compaction) and suffixes (conflicts).
	ErrRangeNotSupported = errors.New("raftfsm: only a prefix or a suffix of the log can be deleted")

	// ErrBadEntry is wrapped, together with logcore.ErrCorrupt, by
	// LogStore.GetLog when a stored record is not a valid entry encoding
	// (see the entry format in logcodec.go). No entry is returned.
	ErrBadEntry = errors.New("raftfsm: bad log entry encoding")
)
