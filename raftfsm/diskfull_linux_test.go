package raftfsm

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/natlog/natlog/logcore"
)

// fillDisk writes a file into dir until the file system is full.
func fillDisk(t *testing.T, dir string) {
	t.Helper()
	f, err := os.Create(filepath.Join(dir, "filler"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	chunk := make([]byte, 4096)
	for {
		if _, err := f.Write(chunk); err != nil {
			if !errors.Is(err, unix.ENOSPC) {
				t.Fatal(err)
			}
			return
		}
	}
}

// TestStableStoreOnFullDisk: on a real file system with no space left,
// Set still succeeds (it overwrites the temp file made ahead). hashicorp/raft
// panics when it cannot store its term: before, a node whose disk filled
// up died at the next election.
func TestStableStoreOnFullDisk(t *testing.T) {
	dir := t.TempDir()
	if err := unix.Mount("tmpfs", dir, "tmpfs", 0, "size=1m"); err != nil {
		t.Skipf("cannot mount a tmpfs here (%v): a real full disk needs root", err)
	}
	t.Cleanup(func() { unix.Unmount(dir, unix.MNT_DETACH) })
	path := filepath.Join(dir, "raft", "stable")
	s, err := OpenStableStore(path, logcore.OSFS{})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.SetUint64(keyCurrentTerm, 1); err != nil {
		t.Fatal(err)
	}
	fillDisk(t, dir)
	for term := uint64(2); term <= 100; term++ {
		if err := s.SetUint64(keyCurrentTerm, term); err != nil {
			t.Fatalf("SetUint64(%d) on a full disk: %v", term, err)
		}
		if err := s.Set(keyLastVoteCand, []byte("n2")); err != nil {
			t.Fatalf("Set on a full disk: %v", err)
		}
	}
	s.Close()
	s, err = OpenStableStore(path, logcore.OSFS{})
	if err != nil {
		t.Fatal(err)
	}
	if v, err := s.GetUint64(keyCurrentTerm); err != nil || v != 100 {
		t.Fatalf("after reopening: term %d, %v; want 100", v, err)
	}
}
