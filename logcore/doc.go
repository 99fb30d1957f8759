// Package logcore is natlog's storage engine: a segmented, checksummed,
// crash-safe commit log.
//
// # Layout
//
// A Log is a directory of segments. A segment holds the records from its base
// offset up to the next segment's base and is three files named by that base
// offset, zero-padded to 20 digits so that names sort as numbers:
//
//	00000000000000000000.store      frames, append-only
//	00000000000000000000.index      offset -> store position, memory-mapped
//	00000000000000000000.timeindex  running max timestamp -> offset, sparse
//
// The last segment is the active one and takes appends; a new segment starts
// when the next record would not fit in the active one's store or index.
// Sealed segments never change until they are deleted whole.
//
// # Store frames
//
// A store is a sequence of frames, each
//
//	[length uint32 BE][crc uint32 BE][payload: length bytes]
//
// where crc is CRC-32C (Castagnoli) over the 4 length bytes followed by the
// payload. The length's top bit is not part of the length: it is set on every
// frame of a batch (AppendBatch) but the batch's last, and recovery keeps a
// batch only if its last frame is there, so a batch is atomic across a crash.
// A segment never ends with such a frame: a batch that does not fit in the
// active segment starts a new one. The payload is one record:
//
//	[offset uint64 BE][time int64 BE, Unix nanoseconds]
//	[header count uvarint] { [key length uvarint][key] [value length uvarint][value] }
//	[value: the rest of the payload]
//
// While a segment is active its store runs ahead of the data with zeros
// (Config.PrewriteBytes at a time), so that an fsync overwrites blocks that
// already exist instead of growing the file; a seal or a clean Close cuts
// the zeros, and after a crash recovery cuts them with the torn tail.
//
// # Index files
//
// An index entry is 12 bytes, [relative offset uint32 BE][position uint64 BE],
// one per record, in offset order. While a segment is active its index file is
// grown to Config.MaxIndexBytes and memory-mapped; a clean Close or a roll to
// a new segment cuts it to its real length. A time index entry is 12 bytes,
// [time int64 BE][relative offset uint32 BE], and says that the records of the
// segment up to and including that offset have no timestamp above that time;
// entries are written when the running maximum grows and at least
// timeIndexInterval store bytes have passed since the last entry.
//
// Both indexes are caches of the store: they are never trusted over it.
//
// # Recovery
//
// Sealed segments were fsynced (store and index) before the next segment was
// created, so Open does not read them; their files are opened lazily on first
// use, and an index whose length disagrees with the segment's record count is
// rebuilt from the store then. The active segment is trusted without a scan
// only if it was closed cleanly (its index cut to its exact length, its last
// entry pointing at a valid frame that ends exactly at the end of the store).
// Otherwise its store is scanned from the start, frame by frame:
//
//   - a frame that is cut short by the end of the file, or fails its checksum
//     with no valid frame anywhere after it, is a torn tail: it and everything
//     after it are cut off, with the frames before it of the same unfinished
//     batch, logged and counted in Stats.TornTails;
//   - a frame that fails its checksum with a valid frame after it is
//     corruption before the tail: Open fails with ErrCorrupt rather than drop
//     records that may have been acknowledged;
//
// and the index and time index are rebuilt from the frames that survive. Cost
// of recovery is bounded by the size of one segment, not of the log.
//
// Every read verifies the frame's checksum and offset; a record that fails is
// reported as ErrCorrupt and never returned as data.
//
// # Durability
//
// See SyncPolicy. With SyncAlways (the default) Append returns only after the
// record's bytes are on stable storage; concurrent appenders share fsyncs
// (group commit), and records become visible to readers only once durable.
// After a failed write or fsync the log refuses further appends (ErrFailed)
// until it is reopened, since the state of the file is then unknown.
//
// A full disk is found before anything is written: an append first
// reserves its file space (index space always, store space with
// SyncAlways and PrewriteBytes, the default: the zeros above), by writing
// it. If that fails, the append
// returns the error (wrapping syscall.ENOSPC), nothing of it was written,
// and the log takes appends again once there is room. Space is written
// rather than mapped for a reason: the index file is grown with a hole, and
// a store through the mapping into a hole on a full disk is answered with
// SIGBUS, which kills the process. The time index is derived from the
// store: its entries wait in memory while the disk is full, and a segment
// sealed then goes without (an empty time index is rebuilt from the store
// when a lookup needs it). Only what cannot be reserved ahead can still
// fail a log on a full disk: the creation of a new segment's files, and
// with the other policies (or PrewriteBytes 0) the write of the buffer.
//
// # Open files
//
// A log keeps its active segment's three files open, and those of up to
// Config.MaxOpenSegments sealed segments it read recently (opened on first
// use, the least recently used closed beyond that). Logs that share a
// FileBudget (Config.Files) are bounded together: opening a segment beyond
// the budget closes the files of the least recently used segments of any of
// them, sealed ones as above, and the active segment of an idle log too
// ("parked": its buffer written, its files closed, reopened by the next
// append, fsync or read, with nothing lost: under SyncAlways only a log
// with every record fsynced is parked). A process with thousands of logs
// needs one; without it each log would hold at least three descriptors for
// as long as it is open. A segment in use is never closed, so the bound is
// exceeded while more segments than it are busy at once. An append to a
// parked log that cannot reopen its files (no descriptor left) fails
// without writing anything, and the log goes on.
//
// # Concurrency
//
// A Log is safe for concurrent use: appends are serialised internally, reads
// run concurrently with each other and with appends, and a reader never sees
// a record that is partly written.
package logcore
