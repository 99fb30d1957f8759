// Package raftfsm is natlog's Raft glue: the FSM that applies Raft commands
// to named logcore logs, its snapshots, the Raft log and stable store on
// natlog's own files, and the Raft transport over NATS. It knows nothing of
// client subjects or request formats.
//
// # FSM
//
// FSM holds named logcore logs under Dir/logs/<name>/ (a metadata file
// written once at creation, and the log's segments). A Raft entry's payload
// is a Command (command.go): the leader's time and a list of ops (append,
// create, delete), so that one entry carries many client requests. Apply is
// deterministic: records are stamped with the command's time, and
// Natlog-Msg-Id deduplication ages ids by that time too, with the window
// and bound the leader put in the command. The leader also fills in a new
// log's settings, so that no replica resolves them from its own
// configuration (see CommandVersion).
//
// Exactly once across restarts: the last record of every applied append
// carries a Natlog-Raft-Index header, "<index>.<op>". On open, each log's
// newest record with it says which ops it already holds, and replayed
// entries at or below that are skipped. An append is one logcore batch,
// atomic across a crash if it fits in one segment: entries of
// CommandVersion 1 refuse larger ones (ErrTooLarge, the same on every
// replica), and records after the newest header (a larger append of an
// older entry that a crash cut) are cut on open, so Raft's replay writes
// the append again whole. The FSM's logs need no fsync of their
// own (Raft's log holds the entries); Persist fsyncs them before a snapshot
// is handed to Raft, the one point after which Raft stops replaying.
// Raft should run with NoSnapshotRestoreOnStart: the FSM recovers from its
// own files, and restart cost does not grow with the data.
//
// Snapshots (snapshot.go) are a consistent cut taken on the applying
// goroutine (each log's lowest and next offset; the logs' retention waits
// until the snapshot is released). As a stream they are a header and the
// logs' frames; SnapshotStore (snapstore.go) keeps the node's own snapshots
// as hard links to the segment files instead, made by Persist, and composes
// the stream when Raft opens one to send it. Restore
// builds the new logs beside the old ones and swaps the directories,
// finishing an interrupted swap on the next open.
//
// # Transport
//
// NewNATSTransport builds a raft.NetworkTransport on NATSStreamLayer, a
// raft.StreamLayer over a *nats.Conn alone (see transport.go): a node's Raft
// address is its node id, connections are pairs of subjects under
// <prefix>._raft.<cluster>., data is chunked below the NATS max payload,
// sequence-checked, flow-controlled by a credit window, and kept alive by
// pings. Give it its own NATS connection, so client traffic cannot starve
// heartbeats.
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
//	raft/snapshots/    SnapshotStore (raft.FileSnapshotStore's files)
//	raft/snapshot-links/ the segment files its snapshots link
//
// All file access goes through logcore.FS, so tests run the stores on
// logcore.MemFS and simulate power loss with MemFS.Crash.
package raftfsm
