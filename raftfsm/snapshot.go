package raftfsm

import (
	"bufio"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
)

// A snapshot is a consistent cut of the FSM: for each log, its metadata and
// its records from its lowest to its next offset at the moment Raft asked
// for the snapshot. The stream is
//
//	[header length uint32 BE][header: msgpack snapshotHeader]
//	then, for each log in the header's order, its records as logcore frames
//
// Persist streams the records straight from the logs (nothing is buffered
// whole); Restore streams them into new logs beside the old ones and swaps
// the directories, so a crash never leaves a half-restored state.

const snapshotVersion = 1

type snapshotHeader struct {
	Version int           `msgpack:"v"`
	Logs    []snapshotLog `msgpack:"l"`
	// Applied is the FSM's AppliedIndex at the cut (0 in snapshots
	// written before it was kept).
	Applied uint64 `msgpack:"a,omitempty"`
	// Dedup is the FSM's dedup settings at the cut (the leader's, see
	// FSM.dedup), so that a node restoring the snapshot rebuilds its
	// tables over the leader's window; nil in snapshots written before it
	// was kept.
	Dedup *dedupSettings `msgpack:"d,omitempty"`
}

type snapshotLog struct {
	Name   string  `msgpack:"n"`
	Meta   logMeta `msgpack:"m"`
	Lowest uint64  `msgpack:"lo"`
	Next   uint64  `msgpack:"nx"`
}

type cutSnapshot struct {
	f      *FSM
	header snapshotHeader
	logs   []*logcore.Log
	// cuts hold each log's retention until Release, so that the records
	// of the cut stay in the logs' files until Persist has linked or
	// copied them.
	cuts []*logcore.Cut
	// linkDir, if not empty, holds hard links to the logs' store files,
	// and stores lists them per log (see SnapshotStore).
	linkDir string
	stores  [][]linkedStore
}

// snapshotLinksDir holds the links of snapshots being persisted:
// Dir/snapshot.tmp/<n>.
const snapshotLinksDir = "snapshot.tmp"

// Snapshot captures the cut: each log's next offset (logcore.MarkCut),
// holding the logs' retention until Release. Raft calls it on the applying
// goroutine, so no entry is applied meanwhile; it costs no I/O. Persist
// then runs concurrently with Apply.
func (f *FSM) Snapshot() (raft.FSMSnapshot, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	// A failed Restore left the logs incomplete: a snapshot of them would
	// lose records for good.
	if f.broken != nil {
		return nil, fmt.Errorf("raftfsm: snapshot: a snapshot restore failed on this replica; restart the node: %w", f.broken)
	}
	// A log that failed to apply an entry lacks records the snapshot's
	// applied index would claim: Raft would compact the entries away and
	// a restart could not re-apply them. No snapshot until the node is
	// repaired (a restart re-applies the entries after the last one).
	if failed := sortedKeys(f.failed); len(failed) > 0 {
		return nil, fmt.Errorf("raftfsm: snapshot: log %s failed on this replica: %w", failed[0], f.failed[failed[0]])
	}
	dedup := f.dedup
	s := &cutSnapshot{f: f, header: snapshotHeader{Version: snapshotVersion, Applied: f.applied.Load(), Dedup: &dedup}}
	for _, name := range sortedKeys(f.logs) {
		fl := f.logs[name]
		c, err := fl.log.MarkCut()
		if err != nil {
			s.Release()
			return nil, fmt.Errorf("raftfsm: snapshot: log %s: %w", name, err)
		}
		s.cuts = append(s.cuts, c)
		s.header.Logs = append(s.header.Logs, snapshotLog{Name: name, Meta: fl.meta, Lowest: fl.log.LowestOffset(), Next: c.Next})
		s.logs = append(s.logs, fl.log)
	}
	return s, nil
}

// link hard-links the store files of the cut into a new directory under
// Dir/snapshot.tmp (a link per segment).
func (s *cutSnapshot) link() error {
	f := s.f
	s.linkDir = f.path(snapshotLinksDir, strconv.FormatUint(f.snapSeq.Add(1), 10))
	if err := f.fs.RemoveAll(s.linkDir); err != nil {
		return err
	}
	if err := f.fs.MkdirAll(s.linkDir, 0o755); err != nil {
		return err
	}
	for i, c := range s.cuts {
		cut, err := c.Link(s.linkDir, strconv.Itoa(i)+"-")
		if err != nil {
			return fmt.Errorf("log %s: %w", s.header.Logs[i].Name, err)
		}
		s.header.Logs[i].Lowest = cut.Lowest
		files := make([]linkedStore, len(cut.Stores))
		for j, st := range cut.Stores {
			files[j] = linkedStore{Name: st.Name, Size: st.Size}
		}
		s.stores = append(s.stores, files)
	}
	return nil
}

// linkAdopter is a sink that can keep a snapshot as linked files
// (SnapshotStore's).
type linkAdopter interface {
	adoptLinks(dir string, m linkManifest) (wrote bool, err error)
}

// Persist writes the snapshot. It first fsyncs the logs: once Raft has the
// snapshot it may compact its log and will not replay those entries again.
// If the file system can hard-link, it links the cut's store files (a link
// per segment): a SnapshotStore's sink takes them and a manifest, any other
// sink gets the stream copied from them; otherwise the stream is copied
// from the logs.
func (s *cutSnapshot) Persist(sink raft.SnapshotSink) error {
	err := s.persist(sink)
	if err != nil {
		sink.Cancel()
		return err
	}
	return sink.Close()
}

func (s *cutSnapshot) persist(sink raft.SnapshotSink) error {
	for _, l := range s.logs {
		if err := l.Sync(); err != nil {
			return fmt.Errorf("raftfsm: snapshot: sync %s: %w", l.Dir(), err)
		}
	}
	// The logs on disk now hold the cut: say so before the snapshot
	// exists (see FSM.Covers).
	if err := s.f.noteCovered(s.header.Applied); err != nil {
		return fmt.Errorf("raftfsm: snapshot: %w", err)
	}
	if _, ok := s.f.fs.(logcore.Linker); ok {
		if err := s.link(); err != nil {
			s.f.cfg.Logger.Warn("raftfsm: snapshot: cannot link the logs' files; copying them", "err", err)
			s.f.fs.RemoveAll(s.linkDir)
			s.linkDir, s.stores = "", nil
		}
	}
	if s.linkDir != "" {
		m := linkManifest{Header: s.header, Stores: s.stores}
		if ls, ok := sink.(linkAdopter); ok {
			wrote, err := ls.adoptLinks(s.linkDir, m)
			if wrote || err == nil {
				return err
			}
			s.f.cfg.Logger.Warn("raftfsm: snapshot: cannot keep the linked files; copying them", "err", err)
		}
		// Copy from the links (the sink cannot keep them).
		if _, err := os.Stat(s.linkDir); err == nil {
			lr, err := newLinkReader(s.linkDir, m)
			if err != nil {
				return err
			}
			defer lr.Close()
			_, err = io.Copy(sink, lr)
			return err
		}
	}
	bw := bufio.NewWriterSize(sink, 256<<10)
	hdr := mustMarshal(s.header)
	if err := binary.Write(bw, binary.BigEndian, uint32(len(hdr))); err != nil {
		return err
	}
	if _, err := bw.Write(hdr); err != nil {
		return err
	}
	for i, l := range s.logs {
		h := s.header.Logs[i]
		if _, err := io.Copy(bw, l.NewReader(h.Lowest, h.Next)); err != nil {
			return fmt.Errorf("raftfsm: snapshot of log %s: %w", h.Name, err)
		}
	}
	return bw.Flush()
}

// Release lets the logs' retention go on, and removes the links Persist
// made if it did not hand them to the snapshot store.
func (s *cutSnapshot) Release() {
	for _, c := range s.cuts {
		c.Release()
	}
	if s.linkDir != "" {
		if err := s.f.fs.RemoveAll(s.linkDir); err != nil {
			s.f.cfg.Logger.Warn("raftfsm: snapshot: removing links", "dir", s.linkDir, "err", err)
		}
	}
}

// Restore replaces the FSM's state with a snapshot's. The new logs are built
// under Dir/restore.tmp, marked complete, then swapped in for Dir/logs.
//
// A failure before the old logs are closed leaves the FSM as it was. One
// after (the swap or the opening of the new logs) leaves it without a
// whole state: the FSM is then broken (see FSM.broken) until the node
// restarts, which finishes the swap, or a later Restore completes.
func (f *FSM) Restore(rc io.ReadCloser) error {
	defer rc.Close()
	tmp := f.path("restore.tmp")
	if err := f.fs.RemoveAll(tmp); err != nil {
		return err
	}
	if err := f.fs.MkdirAll(filepath.Join(tmp, "logs"), 0o755); err != nil {
		return err
	}
	hdr, err := f.buildFromSnapshot(bufio.NewReaderSize(rc, 256<<10), filepath.Join(tmp, "logs"))
	if err != nil {
		f.fs.RemoveAll(tmp)
		return fmt.Errorf("raftfsm: restore: %w", err)
	}
	if err := logcore.WriteFileAtomic(f.fs, filepath.Join(tmp, "COMPLETE"), nil); err != nil {
		f.fs.RemoveAll(tmp)
		return fmt.Errorf("raftfsm: restore: %w", err)
	}
	// The covered index must not claim more than the new logs hold: lower
	// it before the swap (the old logs hold at least as much), raise it
	// after.
	if hdr.Applied < f.covered.Load() {
		if err := f.setCovered(hdr.Applied, true); err != nil {
			f.fs.RemoveAll(tmp)
			return fmt.Errorf("raftfsm: restore: %w", err)
		}
	}
	if err := f.closeLogs(); err != nil {
		f.cfg.Logger.Warn("raftfsm: closing logs before restore", "err", err)
	}
	broken := func(err error) error {
		f.closeLogs()
		f.mu.Lock()
		f.broken = err
		f.mu.Unlock()
		f.cfg.Logger.Error("raftfsm: snapshot restore failed after closing the logs; applying nothing until a restart", "err", err)
		return fmt.Errorf("raftfsm: restore: %w", err)
	}
	if err := f.finishRestore(); err != nil {
		return broken(err)
	}
	if hdr.Dedup != nil && hdr.Dedup.Window != 0 && hdr.Dedup.Max > 0 {
		f.noteDedup(*hdr.Dedup) // before openLogs rebuilds the tables
	}
	f.mu.Lock()
	f.failed = map[string]error{}
	f.mu.Unlock()
	if err := f.openLogs(); err != nil {
		return broken(err)
	}
	f.mu.Lock()
	f.broken = nil
	f.mu.Unlock()
	f.setApplied(hdr.Applied)
	if err := f.setCovered(hdr.Applied, true); err != nil {
		return fmt.Errorf("raftfsm: restore: %w", err)
	}
	return nil
}

// readSnapshotHeader reads a snapshot stream's header.
func readSnapshotHeader(r io.Reader) (snapshotHeader, error) {
	var hdr snapshotHeader
	var n uint32
	if err := binary.Read(r, binary.BigEndian, &n); err != nil {
		return hdr, fmt.Errorf("snapshot header: %w", err)
	}
	if n > 64<<20 {
		return hdr, fmt.Errorf("snapshot header of %d bytes", n)
	}
	hb := make([]byte, n)
	if _, err := io.ReadFull(r, hb); err != nil {
		return hdr, fmt.Errorf("snapshot header: %w", err)
	}
	if err := unmarshal(hb, &hdr); err != nil {
		return hdr, fmt.Errorf("snapshot header: %w", err)
	}
	if hdr.Version != snapshotVersion {
		return hdr, fmt.Errorf("snapshot version %d, want %d", hdr.Version, snapshotVersion)
	}
	return hdr, nil
}

// SnapshotApplied reads the applied index (FSM.AppliedIndex at the cut)
// from the start of a snapshot written by Persist; 0 for a snapshot
// written before it was kept.
func SnapshotApplied(r io.Reader) (uint64, error) {
	hdr, err := readSnapshotHeader(r)
	return hdr.Applied, err
}

// buildFromSnapshot writes the snapshot's logs under dir and returns the
// snapshot's header.
func (f *FSM) buildFromSnapshot(r io.Reader, dir string) (snapshotHeader, error) {
	hdr, err := readSnapshotHeader(r)
	if err != nil {
		return hdr, err
	}
	fr := logcore.NewFrameReader(r)
	for _, h := range hdr.Logs {
		if !validName(h.Name) || h.Next < h.Lowest {
			return hdr, fmt.Errorf("snapshot log %q: bad header", h.Name)
		}
		ldir := filepath.Join(dir, h.Name)
		if err := f.fs.MkdirAll(ldir, 0o755); err != nil {
			return hdr, err
		}
		if err := logcore.WriteFileAtomic(f.fs, filepath.Join(ldir, "meta"), mustMarshal(h.Meta)); err != nil {
			return hdr, err
		}
		cfg := f.logConfig(h.Meta.Settings)
		cfg.InitialOffset = h.Lowest
		cfg.Sync = logcore.SyncNeverUnsafe
		l, err := logcore.Open(filepath.Join(ldir, "segments"), cfg)
		if err != nil {
			return hdr, err
		}
		err = copyRecords(fr, l, h)
		if err == nil {
			err = l.Sync()
		}
		if cerr := l.Close(); err == nil {
			err = cerr
		}
		if err != nil {
			return hdr, fmt.Errorf("snapshot log %s: %w", h.Name, err)
		}
	}
	return hdr, nil
}

// copyRecords appends the next h.Next-h.Lowest records of the stream to l,
// checking that they are the offsets the header promised.
func copyRecords(fr *logcore.FrameReader, l *logcore.Log, h snapshotLog) error {
	batch := make([]logcore.Record, 0, 512)
	flush := func() error {
		if len(batch) == 0 {
			return nil
		}
		_, err := l.AppendBatch(batch)
		batch = batch[:0]
		return err
	}
	for off := h.Lowest; off < h.Next; off++ {
		rec, err := fr.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return err
		}
		if rec.Offset != off {
			return fmt.Errorf("record %d where %d was due", rec.Offset, off)
		}
		batch = append(batch, rec)
		if len(batch) == cap(batch) {
			if err := flush(); err != nil {
				return err
			}
		}
	}
	return flush()
}

// finishRestore completes a restore whose new logs are complete (marked by
// restore.tmp/COMPLETE), or discards an incomplete one. Every step is
// repeatable, so a crash at any point is finished on the next open.
func (f *FSM) finishRestore() error {
	tmp := f.path("restore.tmp")
	marker, err := f.fs.OpenFile(filepath.Join(tmp, "COMPLETE"), os.O_RDONLY, 0)
	if errors.Is(err, os.ErrNotExist) {
		return f.fs.RemoveAll(tmp)
	}
	if err != nil {
		return err
	}
	marker.Close()
	newLogs := filepath.Join(tmp, "logs")
	if names, err := f.fs.ReadDir(tmp); err == nil && slices.Contains(names, "logs") {
		old := f.path("logs.old")
		if err := f.fs.RemoveAll(old); err != nil {
			return err
		}
		if err := f.fs.Rename(f.path("logs"), old); err != nil && !errors.Is(err, os.ErrNotExist) {
			return err
		}
		if err := f.fs.Rename(newLogs, f.path("logs")); err != nil {
			return err
		}
		if err := f.fs.SyncDir(f.cfg.Dir); err != nil {
			return err
		}
		if err := f.fs.RemoveAll(old); err != nil {
			return err
		}
	}
	if err := f.fs.RemoveAll(tmp); err != nil {
		return err
	}
	return f.fs.SyncDir(f.cfg.Dir)
}

func sortedKeys[V any](m map[string]V) []string {
	return slices.Sorted(maps.Keys(m))
}
