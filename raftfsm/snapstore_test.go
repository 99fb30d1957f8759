package raftfsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
)

// linkedFSM opens an FSM under root/fsm on the real file system, which can
// hard-link, and a SnapshotStore under root/raft beside it.
func linkedFSM(t *testing.T) (root string, f *FSM, store *SnapshotStore) {
	t.Helper()
	root = t.TempDir()
	f = openFSM(t, fsmConfig(filepath.Join(root, "fsm"), logcore.OSFS{}))
	t.Cleanup(func() { f.Close() })
	store, err := NewSnapshotStore(filepath.Join(root, "raft"), 2, nil)
	must(t, err)
	return root, f, store
}

// createRetainedA creates log "a" at entry index, keeping at most 2
// segments once retention runs (ApplyRetention: the background check is
// 30 s away in these tests).
func createRetainedA(t *testing.T, f *FSM, index uint64) {
	t.Helper()
	op := Op{Kind: OpCreate, Log: "a", Settings: &LogSettings{RetentionSegments: 2}}
	if r := results(t, f.Apply(entry(t, index, int64(index), op))); r[0].Err != nil {
		t.Fatal(r[0].Err)
	}
}

// applyA applies entries from..to, each appending its index to log "a".
func applyA(t *testing.T, f *FSM, from, to int) {
	t.Helper()
	for i := from; i <= to; i++ {
		f.Apply(entry(t, uint64(i), int64(i), appendOp("a", fmt.Sprint(i))))
	}
}

// takeSnapshot snapshots f into store as Raft would: Snapshot on the
// applying goroutine, then Create, Persist and Release.
func takeSnapshot(t *testing.T, f *FSM, store raft.SnapshotStore, index uint64) string {
	t.Helper()
	snap, err := f.Snapshot()
	must(t, err)
	return persistSnapshot(t, snap, store, index)
}

func persistSnapshot(t *testing.T, snap raft.FSMSnapshot, store raft.SnapshotStore, index uint64) string {
	t.Helper()
	defer snap.Release()
	sink, err := store.Create(raft.SnapshotVersionMax, index, 1, raft.Configuration{}, 1, nil)
	must(t, err)
	must(t, snap.Persist(sink))
	return sink.ID()
}

// openSnapshot reads a whole snapshot and checks its size against meta.
func openSnapshot(t *testing.T, store raft.SnapshotStore, id string) []byte {
	t.Helper()
	meta, rc, err := store.Open(id)
	must(t, err)
	defer rc.Close()
	b, err := io.ReadAll(rc)
	must(t, err)
	if int64(len(b)) != meta.Size {
		t.Fatalf("snapshot %s: read %d bytes, meta.Size %d", id, len(b), meta.Size)
	}
	return b
}

func TestSnapshotStoreLinksInsteadOfCopying(t *testing.T) {
	root, src, store := linkedFSM(t)
	createRetainedA(t, src, 1)
	for i := 2; i <= 300; i++ {
		src.Apply(entry(t, uint64(i), int64(i), appendOp("a", fmt.Sprint(i)), appendOp("b", "x", "y")))
	}
	wantA, wantB := values(t, src, "a"), values(t, src, "b")
	// The stream a sink that cannot link gets, for the same cut.
	var copied memSink
	snap, err := src.Snapshot()
	must(t, err)
	must(t, snap.Persist(&copied))
	snap.Release()
	snap, err = src.Snapshot()
	must(t, err)
	// After the cut and before Persist: more appends; retention waits
	// for the snapshot, and resumes once it is released.
	applyA(t, src, 301, 400)
	a := src.Log("a")
	must(t, a.ApplyRetention())
	if a.LowestOffset() != 0 {
		t.Fatalf("retention removed segments of a snapshot being taken: lowest offset %d", a.LowestOffset())
	}
	id := persistSnapshot(t, snap, store, 300)
	// Retention keeps the dedup window before the newest record: ten
	// minutes later, the older segments may go.
	src.Apply(entry(t, 401, int64(10*time.Minute), appendOp("a", "401")))
	must(t, a.ApplyRetention())
	if a.LowestOffset() == 0 {
		t.Fatal("retention did not resume after the snapshot was released")
	}

	// The snapshot is a manifest and links, not the bytes of the logs.
	state, err := os.Stat(filepath.Join(root, "raft", "snapshots", id, "state.bin"))
	must(t, err)
	info, err := a.Info()
	must(t, err)
	if state.Size() > 2048 {
		t.Fatalf("state file of %d bytes for logs of %d: the snapshot copied them", state.Size(), info.Bytes)
	}
	links, err := os.ReadDir(filepath.Join(root, "raft", linkDirName, id))
	must(t, err)
	if len(links) < 4 {
		t.Fatalf("%d linked files, want the segments of both logs", len(links))
	}
	if left, _ := os.ReadDir(filepath.Join(root, "fsm", snapshotLinksDir)); len(left) != 0 {
		t.Fatalf("pending link directories left behind: %v", left)
	}
	if applied, err := store.ReadApplied(id); err != nil || applied != 300 {
		t.Fatalf("ReadApplied = %d, %v; want 300", applied, err)
	}

	// Opened, it is the stream a copied snapshot holds: restore it.
	stream := openSnapshot(t, store, id)
	dst := openFSM(t, fsmConfig(t.TempDir(), logcore.OSFS{}))
	defer dst.Close()
	must(t, dst.Restore(io.NopCloser(bytes.NewReader(stream))))
	if got := values(t, dst, "a"); fmt.Sprint(got) != fmt.Sprint(wantA) {
		t.Fatalf("restored a has %d records, want the %d of the cut", len(got), len(wantA))
	}
	if got := values(t, dst, "b"); fmt.Sprint(got) != fmt.Sprint(wantB) {
		t.Fatalf("restored b has %d records, want the %d of the cut", len(got), len(wantB))
	}
	if dst.AppliedIndex() != 300 {
		t.Fatalf("AppliedIndex after restore = %d, want 300", dst.AppliedIndex())
	}
	if !bytes.Equal(copied.Bytes(), stream) {
		t.Fatalf("linked snapshot stream (%d bytes) differs from the copied one (%d bytes)", len(stream), copied.Len())
	}
}

func TestSnapshotStoreKeepsLinksOfRetainedAndOpenSnapshots(t *testing.T) {
	root, f, store := linkedFSM(t)
	linkDirs := func() []string {
		entries, err := os.ReadDir(filepath.Join(root, "raft", linkDirName))
		must(t, err)
		var names []string
		for _, e := range entries {
			names = append(names, e.Name())
		}
		return names
	}
	var ids []string
	var streams [][]byte
	for s := 1; s <= 2; s++ {
		applyA(t, f, (s-1)*100+1, s*100)
		ids = append(ids, takeSnapshot(t, f, store, uint64(s*100)))
		streams = append(streams, openSnapshot(t, store, ids[s-1]))
	}
	if got := linkDirs(); len(got) != 2 {
		t.Fatalf("link directories %v, want those of 2 snapshots", got)
	}
	// A reader of the oldest snapshot is open while a third one makes
	// the store drop it.
	_, rc, err := store.Open(ids[0])
	must(t, err)
	applyA(t, f, 201, 300)
	ids = append(ids, takeSnapshot(t, f, store, 300))
	if got := fmt.Sprint(linkDirs()); got != fmt.Sprint(ids) {
		t.Fatalf("link directories %s with a reader of the first open, want %v", got, ids)
	}
	b, err := io.ReadAll(rc)
	must(t, err)
	if !bytes.Equal(b, streams[0]) {
		t.Fatal("the open reader of a dropped snapshot read other bytes")
	}
	must(t, rc.Close())
	if got := fmt.Sprint(linkDirs()); got != fmt.Sprint(ids[1:]) {
		t.Fatalf("link directories %s after the reader closed, want %v", got, ids[1:])
	}
	if _, _, err := store.Open(ids[0]); err == nil {
		t.Fatal("a dropped snapshot opened")
	}
	// A store opened on the directory drops links no snapshot names.
	must(t, os.Mkdir(filepath.Join(root, "raft", linkDirName, "orphan"), 0o755))
	if _, err := NewSnapshotStore(filepath.Join(root, "raft"), 2, nil); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(linkDirs()); got != fmt.Sprint(ids[1:]) {
		t.Fatalf("link directories %s after reopening, want %v", got, ids[1:])
	}
}

func TestSnapshotStoreKeepsStreams(t *testing.T) {
	// A snapshot received from a leader is written as a stream.
	src := openFSM(t, fsmConfig(t.TempDir(), logcore.NewMemFS()))
	defer src.Close()
	applyA(t, src, 1, 50)
	var stream memSink
	snap, err := src.Snapshot()
	must(t, err)
	must(t, snap.Persist(&stream))
	snap.Release()

	store, err := NewSnapshotStore(t.TempDir(), 2, nil)
	must(t, err)
	sink, err := store.Create(raft.SnapshotVersionMax, 50, 1, raft.Configuration{}, 1, nil)
	must(t, err)
	_, err = sink.Write(stream.Bytes())
	must(t, err)
	must(t, sink.Close())
	if got := openSnapshot(t, store, sink.ID()); !bytes.Equal(got, stream.Bytes()) {
		t.Fatalf("stream snapshot read back as %d bytes, wrote %d", len(got), stream.Len())
	}
	if applied, err := store.ReadApplied(sink.ID()); err != nil || applied != 50 {
		t.Fatalf("ReadApplied = %d, %v; want 50", applied, err)
	}
}

func TestSnapshotStoreDamagedLinkedSnapshot(t *testing.T) {
	root, f, store := linkedFSM(t)
	applyA(t, f, 1, 200)
	id := takeSnapshot(t, f, store, 200)

	// A linked file cut short: reading fails, no restore happens. (The
	// link is the FSM's own segment file, so f's log is damaged too; f is
	// not used again.)
	links := filepath.Join(root, "raft", linkDirName, id)
	entries, err := os.ReadDir(links)
	must(t, err)
	victim := filepath.Join(links, entries[0].Name())
	must(t, os.Truncate(victim, 100))
	_, rc, err := store.Open(id)
	must(t, err)
	if _, err := io.ReadAll(rc); !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("reading a snapshot with a short linked file: %v, want io.ErrUnexpectedEOF", err)
	}
	rc.Close()
	_, rc, err = store.Open(id)
	must(t, err)
	dst := openFSM(t, fsmConfig(t.TempDir(), logcore.OSFS{}))
	defer dst.Close()
	dst.Apply(entry(t, 1, 1, appendOp("kept", "x")))
	if err := dst.Restore(rc); err == nil {
		t.Fatal("restored a snapshot with a short linked file")
	}
	if got := values(t, dst, "kept"); len(got) != 1 {
		t.Fatalf("a failed restore changed the state: %v", got)
	}

	// Manifests that are not one: each is an error, none a panic.
	for name, state := range map[string][]byte{
		"magic only":            linkMagic,
		"huge length":           append(append([]byte(nil), linkMagic...), 0xff, 0xff, 0xff, 0xff),
		"not msgpack":           append(append([]byte(nil), linkMagic...), 0, 0, 0, 3, 0xc1, 0xc1, 0xc1),
		"path in name":          encodeManifest(linkManifest{Header: snapshotHeader{Version: snapshotVersion, Logs: []snapshotLog{{Name: "a"}}}, Stores: [][]linkedStore{{{Name: "../../x", Size: 1}}}}),
		"files of 2 logs for 1": encodeManifest(linkManifest{Header: snapshotHeader{Version: snapshotVersion, Logs: []snapshotLog{{Name: "a"}}}, Stores: [][]linkedStore{nil, nil}}),
	} {
		sink, err := store.Create(raft.SnapshotVersionMax, 300, 1, raft.Configuration{}, 1, nil)
		must(t, err)
		_, err = sink.Write(state)
		must(t, err)
		must(t, sink.Close())
		if _, _, err := store.Open(sink.ID()); err == nil {
			t.Errorf("%s: Open succeeded", name)
		}
		if _, err := store.ReadApplied(sink.ID()); err == nil {
			t.Errorf("%s: ReadApplied succeeded", name)
		}
	}
}

func TestFSMDropsUnpersistedLinksOnOpen(t *testing.T) {
	dir := t.TempDir()
	f := openFSM(t, fsmConfig(dir, logcore.OSFS{}))
	applyA(t, f, 1, 50)
	// The cut itself writes nothing; Persist links into snapshot.tmp.
	if _, err := f.Snapshot(); err != nil {
		t.Fatal(err)
	}
	if left, _ := os.ReadDir(filepath.Join(dir, snapshotLinksDir)); len(left) != 0 {
		t.Fatalf("link directories after Snapshot: %v, want none", left)
	}
	// A Persist that a crash interrupted left its links.
	left := filepath.Join(dir, snapshotLinksDir, "7")
	must(t, os.MkdirAll(left, 0o755))
	must(t, os.Link(filepath.Join(dir, "logs", "a", "segments", "00000000000000000000.store"), filepath.Join(left, "0-00000000000000000000.store")))
	must(t, f.Close())
	f = openFSM(t, fsmConfig(dir, logcore.OSFS{}))
	defer f.Close()
	if _, err := os.Stat(filepath.Join(dir, snapshotLinksDir)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("pending links survived a reopen: %v", err)
	}
	if got := values(t, f, "a"); len(got) != 50 {
		t.Fatalf("a has %d records after reopen, want 50", len(got))
	}
}

func TestSnapshotStoreReapKeepsLinksOfSnapshotsOnDisk(t *testing.T) {
	dir := t.TempDir()
	store, err := NewSnapshotStore(dir, 2, nil)
	must(t, err)
	links := filepath.Join(dir, linkDirName)
	for _, id := range []string{"1-10-1", "1-20-2", "1-30-3"} {
		must(t, os.Mkdir(filepath.Join(links, id), 0o755))
	}
	// 1-10-1 is being written, 1-20-2 is committed (whether or not List
	// could read it), 1-30-3 is gone.
	must(t, os.Mkdir(filepath.Join(dir, "snapshots", "1-10-1.tmp"), 0o755))
	must(t, os.Mkdir(filepath.Join(dir, "snapshots", "1-20-2"), 0o755))
	store.reap()
	entries, err := os.ReadDir(links)
	must(t, err)
	var got []string
	for _, e := range entries {
		got = append(got, e.Name())
	}
	if fmt.Sprint(got) != "[1-10-1 1-20-2]" {
		t.Fatalf("links after reap: %v, want those of the snapshot being written and of the committed one", got)
	}
}

func TestSnapshotStoreReceivedSnapshotsReapOldLinks(t *testing.T) {
	root, f, store := linkedFSM(t)
	applyA(t, f, 1, 50)
	own := takeSnapshot(t, f, store, 50)
	stream := openSnapshot(t, store, own)
	// Two snapshots received from a leader push the node's own one out.
	for _, index := range []uint64{60, 70} {
		sink, err := store.Create(raft.SnapshotVersionMax, index, 2, raft.Configuration{}, 1, nil)
		must(t, err)
		_, err = sink.Write(stream)
		must(t, err)
		must(t, sink.Close())
	}
	if _, err := os.Stat(filepath.Join(root, "raft", linkDirName, own)); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("links of the dropped snapshot %s: %v, want them removed", own, err)
	}
}

func TestSnapshotPersistCopiesFromLinksWhenTheStoreCannotKeepThem(t *testing.T) {
	root, src, store := linkedFSM(t)
	applyA(t, src, 1, 300)
	want := values(t, src, "a")
	snap, err := src.Snapshot()
	must(t, err)
	applyA(t, src, 301, 400)
	// The store cannot take the links: its link directory is a file.
	links := filepath.Join(root, "raft", linkDirName)
	must(t, os.RemoveAll(links))
	must(t, os.WriteFile(links, nil, 0o644))
	id := persistSnapshot(t, snap, store, 300)

	stream := openSnapshot(t, store, id)
	if _, err := store.ReadApplied(id); err != nil {
		t.Fatal(err)
	}
	dst := openFSM(t, fsmConfig(t.TempDir(), logcore.OSFS{}))
	defer dst.Close()
	must(t, dst.Restore(io.NopCloser(bytes.NewReader(stream))))
	if got := values(t, dst, "a"); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("snapshot copied from the links has %d records, want the %d of the cut", len(got), len(want))
	}
	if left, _ := os.ReadDir(filepath.Join(root, "fsm", snapshotLinksDir)); len(left) != 0 {
		t.Fatalf("links left behind after Release: %v", left)
	}
}
