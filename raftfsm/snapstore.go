package raftfsm

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"sync"

	"github.com/hashicorp/go-hclog"
	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
)

// SnapshotStore is a raft.SnapshotStore that keeps the FSM's own snapshots
// as hard links to the logs' segment files instead of copies: taking a
// snapshot costs a link per segment and a small manifest, whatever the size
// of the logs. The bytes travel only when Raft sends the snapshot to a
// follower: Open composes the same stream a copied snapshot holds, from the
// linked files.
//
// It wraps raft.FileSnapshotStore, which keeps each snapshot's metadata and
// its state file (raft/snapshots/<id>/{meta.json,state.bin}). The state file
// of a linked snapshot is a manifest (linkMagic, then the snapshot header and
// the linked files with the byte length of each that belongs to the cut); the
// links live in raft/snapshot-links/<id>/. A snapshot received from a leader
// is stored as the full stream, as FileSnapshotStore would. Link directories
// of snapshots that FileSnapshotStore no longer has on disk are removed when
// a snapshot is closed or cancelled, when a reader closes, and at open (not
// while a reader or sink has them).
//
// A linked segment keeps its disk space after retention removes it from the
// log, until no retained snapshot links it (the store keeps the newest
// retain snapshots).
type SnapshotStore struct {
	inner *raft.FileSnapshotStore
	dir   string // the directory given to NewSnapshotStore
	links string // dir/snapshot-links
	log   hclog.Logger

	mu    sync.Mutex
	inUse map[string]int // link directories with open readers or sinks
}

var _ raft.SnapshotStore = (*SnapshotStore)(nil)

// linkMagic starts the state file of a linked snapshot. A stream starts
// with its header's length, a uint32 that is never above 64 MiB; these 8
// bytes read as one far above that.
var linkMagic = []byte("NLSNAPLK")

const (
	linkDirName = "snapshot-links"
	// maxManifest bounds a manifest read from disk (10,000 segments in
	// each of 100 logs is ~40 MiB).
	maxManifest = 256 << 20
)

// linkManifest is the state file of a linked snapshot after linkMagic,
// msgpack with a uint32 big-endian length before it.
type linkManifest struct {
	Header snapshotHeader `msgpack:"h"`
	// Stores holds, for each log of Header.Logs in order, its linked store
	// files: together their first Size bytes are the log's records
	// [Lowest, Next) as frames.
	Stores [][]linkedStore `msgpack:"s"`
}

type linkedStore struct {
	Name string `msgpack:"n"`
	Size int64  `msgpack:"z"`
}

// NewSnapshotStore opens the snapshot store in dir (snapshots under
// dir/snapshots, links under dir/snapshot-links), keeping the newest retain
// snapshots.
func NewSnapshotStore(dir string, retain int, logger hclog.Logger) (*SnapshotStore, error) {
	if logger == nil {
		logger = hclog.NewNullLogger()
	}
	inner, err := raft.NewFileSnapshotStoreWithLogger(dir, retain, logger)
	if err != nil {
		return nil, err
	}
	s := &SnapshotStore{inner: inner, dir: dir, links: filepath.Join(dir, linkDirName), log: logger, inUse: map[string]int{}}
	if err := os.MkdirAll(s.links, 0o755); err != nil {
		return nil, err
	}
	s.reap()
	return s, nil
}

// Create starts a snapshot; see raft.SnapshotStore. The sink accepts either
// a stream (Write) or, from FSM.Snapshot's Persist, a linked snapshot.
func (s *SnapshotStore) Create(version raft.SnapshotVersion, index, term uint64, configuration raft.Configuration,
	configurationIndex uint64, trans raft.Transport) (raft.SnapshotSink, error) {
	sink, err := s.inner.Create(version, index, term, configuration, configurationIndex, trans)
	if err != nil {
		return nil, err
	}
	return &linkSink{SnapshotSink: sink, store: s}, nil
}

// List lists the retained snapshots, newest first. A linked snapshot's
// Size here is its manifest's; Open gives the size of its stream.
func (s *SnapshotStore) List() ([]*raft.SnapshotMeta, error) { return s.inner.List() }

// Open opens a snapshot as the stream FSM.Restore reads; meta.Size is the
// stream's length.
func (s *SnapshotStore) Open(id string) (*raft.SnapshotMeta, io.ReadCloser, error) {
	meta, rc, err := s.inner.Open(id)
	if err != nil {
		return nil, nil, err
	}
	br := bufio.NewReader(rc)
	if head, _ := br.Peek(len(linkMagic)); !bytes.Equal(head, linkMagic) {
		return meta, &bufReadCloser{Reader: br, c: rc}, nil
	}
	m, err := readManifest(br)
	rc.Close()
	if err != nil {
		return nil, nil, fmt.Errorf("raftfsm: snapshot %s: %w", id, err)
	}
	lr, err := s.newLinkReader(id, m)
	if err != nil {
		return nil, nil, fmt.Errorf("raftfsm: snapshot %s: %w", id, err)
	}
	opened := *meta
	opened.Size = lr.size
	return &opened, lr, nil
}

// ReadApplied returns the applied index (FSM.AppliedIndex at the cut) of a
// snapshot without reading more than its header, which Open would not
// spare: FileSnapshotStore checks the whole state file's checksum first.
func (s *SnapshotStore) ReadApplied(id string) (uint64, error) {
	f, err := os.Open(filepath.Join(s.dir, "snapshots", id, "state.bin"))
	if err != nil {
		return 0, err
	}
	defer f.Close()
	br := bufio.NewReader(f)
	if head, _ := br.Peek(len(linkMagic)); bytes.Equal(head, linkMagic) {
		m, err := readManifest(br)
		return m.Header.Applied, err
	}
	return SnapshotApplied(br)
}

// readManifest reads a linked snapshot's state file and checks it.
func readManifest(r io.Reader) (linkManifest, error) {
	var m linkManifest
	magic := make([]byte, len(linkMagic))
	if _, err := io.ReadFull(r, magic); err != nil || !bytes.Equal(magic, linkMagic) {
		return m, errors.New("not a linked snapshot")
	}
	var n uint32
	if err := binary.Read(r, binary.BigEndian, &n); err != nil {
		return m, fmt.Errorf("manifest: %w", err)
	}
	if n > maxManifest {
		return m, fmt.Errorf("manifest of %d bytes", n)
	}
	// Read what is there rather than trusting the length with an
	// allocation: ReadApplied reads the file without its checksum.
	b, err := io.ReadAll(io.LimitReader(r, int64(n)))
	if err != nil {
		return m, fmt.Errorf("manifest: %w", err)
	}
	if len(b) != int(n) {
		return m, fmt.Errorf("manifest: %w", io.ErrUnexpectedEOF)
	}
	if err := unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("manifest: %w", err)
	}
	if m.Header.Version != snapshotVersion {
		return m, fmt.Errorf("snapshot version %d, want %d", m.Header.Version, snapshotVersion)
	}
	if len(m.Stores) != len(m.Header.Logs) {
		return m, fmt.Errorf("manifest lists files of %d logs for %d", len(m.Stores), len(m.Header.Logs))
	}
	for _, files := range m.Stores {
		for _, f := range files {
			if f.Name == "" || f.Name != filepath.Base(f.Name) || f.Name == "." || f.Name == ".." || f.Size < 0 {
				return m, fmt.Errorf("manifest: bad file %q (%d bytes)", f.Name, f.Size)
			}
		}
	}
	return m, nil
}

func encodeManifest(m linkManifest) []byte {
	b := mustMarshal(m)
	out := make([]byte, 0, len(linkMagic)+4+len(b))
	out = append(out, linkMagic...)
	out = binary.BigEndian.AppendUint32(out, uint32(len(b)))
	return append(out, b...)
}

func (s *SnapshotStore) acquire(id string) {
	s.mu.Lock()
	s.inUse[id]++
	s.mu.Unlock()
}

func (s *SnapshotStore) release(id string) {
	s.mu.Lock()
	if s.inUse[id]--; s.inUse[id] <= 0 {
		delete(s.inUse, id)
	}
	s.mu.Unlock()
}

// reap removes the link directories of snapshots the inner store no longer
// has (neither finished nor being written), except those in use. It decides
// by the snapshot directories themselves, not by List, so that a snapshot
// committed meanwhile, or one whose metadata could not be read just now,
// keeps its links.
func (s *SnapshotStore) reap() {
	s.mu.Lock()
	defer s.mu.Unlock()
	entries, err := os.ReadDir(s.links)
	if err != nil {
		s.log.Warn("raftfsm: listing snapshot links", "error", err)
		return
	}
	for _, e := range entries {
		id := e.Name()
		if s.inUse[id] > 0 || s.snapshotMayExist(id) {
			continue
		}
		if err := os.RemoveAll(filepath.Join(s.links, id)); err != nil {
			s.log.Warn("raftfsm: removing old snapshot links", "dir", id, "error", err)
		}
	}
}

// snapshotMayExist reports whether the inner store has snapshot id, being
// written (<id>.tmp, looked at first: committing renames it to <id>) or
// done. An error other than "does not exist" counts as yes.
func (s *SnapshotStore) snapshotMayExist(id string) bool {
	for _, name := range []string{id + ".tmp", id} {
		if _, err := os.Lstat(filepath.Join(s.dir, "snapshots", name)); !errors.Is(err, fs.ErrNotExist) {
			return true
		}
	}
	return false
}

// linkSink is the sink of one snapshot being created.
type linkSink struct {
	raft.SnapshotSink
	store  *SnapshotStore
	linked bool // adoptLinks took a link directory
	done   bool
}

// adoptLinks makes the files linked in dir this snapshot's (moving dir
// into the store) and writes the manifest as its state. If it fails before
// writing anything (wrote is false) the caller may still write the
// snapshot as a stream; the links are then in dir again, if they could be
// put back.
func (k *linkSink) adoptLinks(dir string, m linkManifest) (wrote bool, err error) {
	id := k.ID()
	dst := filepath.Join(k.store.links, id)
	if !k.linked {
		k.store.acquire(id)
		k.linked = true
	}
	if err := os.RemoveAll(dst); err != nil {
		return false, err
	}
	if err := os.Rename(dir, dst); err != nil {
		return false, err
	}
	if err := (logcore.OSFS{}).SyncDir(dst); err != nil {
		os.Rename(dst, dir)
		return false, err
	}
	if err := (logcore.OSFS{}).SyncDir(k.store.links); err != nil {
		os.Rename(dst, dir)
		return false, err
	}
	_, err = k.Write(encodeManifest(m))
	return true, err
}

// Close finishes the snapshot and removes links no snapshot needs.
func (k *linkSink) Close() error {
	err := k.SnapshotSink.Close()
	k.finish()
	return err
}

// Cancel abandons the snapshot and its links.
func (k *linkSink) Cancel() error {
	err := k.SnapshotSink.Cancel()
	k.finish()
	return err
}

// finish releases the snapshot's links and reaps: the links of a snapshot
// that was not committed go (its directory is gone); those of one that
// was stay, even if Close failed after committing it.
func (k *linkSink) finish() {
	if k.done {
		return
	}
	k.done = true
	if k.linked {
		k.store.release(k.ID())
	}
	k.store.reap()
}

// bufReadCloser reads through a bufio.Reader and closes the file under it.
type bufReadCloser struct {
	*bufio.Reader
	c io.Closer
}

func (b *bufReadCloser) Close() error { return b.c.Close() }

// linkReader streams a linked snapshot: the header, then each linked file's
// first Size bytes, opening one file at a time. One opened from the store
// holds the snapshot's link directory in use until closed.
type linkReader struct {
	store *SnapshotStore // nil: not the store's
	id    string
	dir   string
	parts []linkedStore
	size  int64

	head   []byte
	cur    *os.File
	left   int64 // bytes of cur still to read
	closed bool
}

// newLinkReader reads the snapshot of manifest m whose files are in dir.
func newLinkReader(dir string, m linkManifest) (*linkReader, error) {
	hdr := mustMarshal(m.Header)
	head := binary.BigEndian.AppendUint32(make([]byte, 0, 4+len(hdr)), uint32(len(hdr)))
	head = append(head, hdr...)
	r := &linkReader{dir: dir, head: head, size: int64(len(head))}
	for _, files := range m.Stores {
		for _, f := range files {
			if r.size > math.MaxInt64-f.Size {
				return nil, fmt.Errorf("manifest: files of more than %d bytes", int64(math.MaxInt64))
			}
			r.parts = append(r.parts, f)
			r.size += f.Size
		}
	}
	return r, nil
}

func (s *SnapshotStore) newLinkReader(id string, m linkManifest) (*linkReader, error) {
	r, err := newLinkReader(filepath.Join(s.links, id), m)
	if err != nil {
		return nil, err
	}
	r.store, r.id = s, id
	s.acquire(id)
	// The link directory must exist: a missing one means the snapshot
	// cannot be served, which is better said at once.
	if _, err := os.Stat(r.dir); err != nil {
		s.release(id)
		return nil, err
	}
	return r, nil
}

func (r *linkReader) Read(p []byte) (int, error) {
	if r.closed {
		return 0, os.ErrClosed
	}
	if len(r.head) > 0 {
		n := copy(p, r.head)
		r.head = r.head[n:]
		return n, nil
	}
	for r.cur == nil || r.left == 0 {
		if r.cur != nil {
			r.cur.Close()
			r.cur = nil
		}
		if len(r.parts) == 0 {
			return 0, io.EOF
		}
		part := r.parts[0]
		r.parts = r.parts[1:]
		if part.Size == 0 {
			continue
		}
		f, err := os.Open(filepath.Join(r.dir, part.Name))
		if err != nil {
			return 0, err
		}
		r.cur, r.left = f, part.Size
	}
	n, err := r.cur.Read(p[:min(int64(len(p)), r.left)])
	r.left -= int64(n)
	if errors.Is(err, io.EOF) {
		if r.left > 0 {
			return n, fmt.Errorf("raftfsm: snapshot %s: linked file %s ends %d bytes early: %w", r.dir, r.cur.Name(), r.left, io.ErrUnexpectedEOF)
		}
		err = nil
	}
	return n, err
}

func (r *linkReader) Close() error {
	if r.closed {
		return nil
	}
	r.closed = true
	if r.cur != nil {
		r.cur.Close()
	}
	if r.store != nil {
		r.store.release(r.id)
		r.store.reap() // its snapshot may have gone meanwhile
	}
	return nil
}
