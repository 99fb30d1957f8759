// Package raftfsm is natlog's Raft glue: the FSM that applies Raft commands
// to named logcore logs, its snapshots, the Raft log and stable store on
// natlog's own files, and the Raft transport over NATS. It knows nothing of
// client subjects or request formats.
//
// # Raft log store
//
// LogStore implements raft.LogStore (and raft.MonotonicLogStore) on a
// logcore.Log in a directory of its own. Each Raft entry is one logcore
// record whose offset is the Raft index, so the Raft log needs no index of
// its own and is always dense; the record format is in logcodec.go. Entries
// are durable when StoreLogs returns (logcore.SyncAlways: one fsync per
// batch). Deleting a suffix (a conflict) is exact and durable; deleting a
// prefix (compaction) removes whole segments, so a few entries may remain
// below the compaction point, which Raft tolerates.
//
// # Stable store
//
// StableStore implements raft.StableStore in one small checksummed file,
// rewritten with write-temp, fsync, rename and directory fsync on each Set;
// the format is in stable.go. A missing key is reported with ErrKeyNotFound,
// whose text is exactly "not found", as hashicorp/raft requires.
//
// # Layout
//
// A node's Raft state is expected under one directory, for example
//
//	raft/log/          the LogStore's segments (logcore)
//	raft/stable        the StableStore's file
//	raft/snapshots/    raft.FileSnapshotStore
//
// All file access goes through logcore.FS, so tests run the stores on
// logcore.MemFS and simulate power loss with MemFS.Crash.
package raftfsm
