package raftfsm

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"path/filepath"
	"syscall"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
)

// The keys hashicorp/raft keeps in its stable store (raft.go).
var (
	keyCurrentTerm  = []byte("CurrentTerm")
	keyLastVoteTerm = []byte("LastVoteTerm")
	keyLastVoteCand = []byte("LastVoteCand")
)

// openTestStable opens a StableStore and closes it at the end of the test.
func openTestStable(t testing.TB, path string, fsys logcore.FS) *StableStore {
	t.Helper()
	s, err := OpenStableStore(path, fsys)
	if err != nil {
		t.Fatalf("OpenStableStore(%s): %v", path, err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

// stableImpls are our StableStore on the real file system and on MemFS, and
// raft.InmemStore.
func stableImpls() []struct {
	name string
	open func(t *testing.T) raft.StableStore
} {
	return []struct {
		name string
		open func(t *testing.T) raft.StableStore
	}{
		{"inmem", func(t *testing.T) raft.StableStore { return raft.NewInmemStore() }},
		{"file-osfs", func(t *testing.T) raft.StableStore {
			return openTestStable(t, filepath.Join(t.TempDir(), "raft", "stable"), nil)
		}},
		{"file-memfs", func(t *testing.T) raft.StableStore {
			return openTestStable(t, "/raft/stable", logcore.NewMemFS())
		}},
	}
}

// TestStableStoreContract runs the same specification against every
// implementation.
func TestStableStoreContract(t *testing.T) {
	cases := []struct {
		name string
		run  func(t *testing.T, s raft.StableStore)
	}{
		{"a missing key is reported as raft expects", func(t *testing.T, s raft.StableStore) {
			// raft.go and api.go compare err.Error() with "not found".
			v, err := s.Get(keyLastVoteCand)
			if !isNotFound(err) || len(v) != 0 {
				t.Fatalf("Get of a missing key = %q, %v; want empty and \"not found\"", v, err)
			}
			n, err := s.GetUint64(keyCurrentTerm)
			if n != 0 || (err != nil && !isNotFound(err)) {
				t.Fatalf("GetUint64 of a missing key = %d, %v; want 0 and nil or \"not found\"", n, err)
			}
		}},
		{"Set then Get", func(t *testing.T, s raft.StableStore) {
			if err := s.Set(keyLastVoteCand, []byte("node-2")); err != nil {
				t.Fatal(err)
			}
			if v, err := s.Get(keyLastVoteCand); err != nil || string(v) != "node-2" {
				t.Fatalf("Get = %q, %v", v, err)
			}
		}},
		{"Set overwrites", func(t *testing.T, s raft.StableStore) {
			for _, v := range []string{"a", "a longer value", "b"} {
				if err := s.Set([]byte("k"), []byte(v)); err != nil {
					t.Fatal(err)
				}
				if got, err := s.Get([]byte("k")); err != nil || string(got) != v {
					t.Fatalf("Get = %q, %v; want %q", got, err, v)
				}
			}
		}},
		{"SetUint64 then GetUint64", func(t *testing.T, s raft.StableStore) {
			for _, v := range []uint64{1, 0, 42, math.MaxUint64, 7} {
				if err := s.SetUint64(keyCurrentTerm, v); err != nil {
					t.Fatal(err)
				}
				if got, err := s.GetUint64(keyCurrentTerm); err != nil || got != v {
					t.Fatalf("GetUint64 = %d, %v; want %d", got, err, v)
				}
			}
		}},
		{"keys are independent", func(t *testing.T, s raft.StableStore) {
			if err := s.SetUint64(keyCurrentTerm, 5); err != nil {
				t.Fatal(err)
			}
			if err := s.SetUint64(keyLastVoteTerm, 4); err != nil {
				t.Fatal(err)
			}
			if err := s.Set(keyLastVoteCand, []byte("n1")); err != nil {
				t.Fatal(err)
			}
			if got, _ := s.GetUint64(keyCurrentTerm); got != 5 {
				t.Fatalf("CurrentTerm = %d", got)
			}
			if got, _ := s.GetUint64(keyLastVoteTerm); got != 4 {
				t.Fatalf("LastVoteTerm = %d", got)
			}
			if got, _ := s.Get(keyLastVoteCand); string(got) != "n1" {
				t.Fatalf("LastVoteCand = %q", got)
			}
			if _, err := s.Get([]byte("other")); !isNotFound(err) {
				t.Fatalf("Get(other) = %v", err)
			}
		}},
		{"binary keys and values", func(t *testing.T, s raft.StableStore) {
			k, v := []byte{0, 1, 0xff, 0}, bytes.Repeat([]byte{0, 0xfe}, 5000)
			if err := s.Set(k, v); err != nil {
				t.Fatal(err)
			}
			if got, err := s.Get(k); err != nil || !bytes.Equal(got, v) {
				t.Fatalf("Get = %d bytes, %v", len(got), err)
			}
		}},
	}
	for _, impl := range stableImpls() {
		t.Run(impl.name, func(t *testing.T) {
			for _, c := range cases {
				t.Run(c.name, func(t *testing.T) { c.run(t, impl.open(t)) })
			}
		})
	}
}

// TestStableStoreOwnContract covers persistence, crashes and damage.
func TestStableStoreOwnContract(t *testing.T) {
	const path = "/node/raft/stable"
	t.Run("GetUint64 of a missing key is 0 and ErrKeyNotFound itself", func(t *testing.T) {
		s := openTestStable(t, path, logcore.NewMemFS())
		n, err := s.GetUint64(keyCurrentTerm)
		if n != 0 || err != ErrKeyNotFound { //nolint:errorlint // raft compares the text; we promise the value
			t.Fatalf("GetUint64 = %d, %v", n, err)
		}
		v, err := s.Get(keyLastVoteCand)
		if v != nil || err != ErrKeyNotFound { //nolint:errorlint
			t.Fatalf("Get = %q, %v", v, err)
		}
	})
	t.Run("raft reads a fresh store as having no state", func(t *testing.T) {
		s := openTestStable(t, path, logcore.NewMemFS())
		ok, err := raft.HasExistingState(raft.NewInmemStore(), s, raft.NewInmemSnapshotStore())
		if err != nil || ok {
			t.Fatalf("HasExistingState = %v, %v; want false, nil", ok, err)
		}
		if err := s.SetUint64(keyCurrentTerm, 3); err != nil {
			t.Fatal(err)
		}
		ok, err = raft.HasExistingState(raft.NewInmemStore(), s, raft.NewInmemSnapshotStore())
		if err != nil || !ok {
			t.Fatalf("HasExistingState = %v, %v; want true, nil", ok, err)
		}
	})
	t.Run("an empty value is a value, not a missing key", func(t *testing.T) {
		// (raft.InmemStore reports a key Set to nil as "not found"; raft
		// never stores an empty value.)
		s := openTestStable(t, path, logcore.NewMemFS())
		if err := s.Set([]byte("k"), nil); err != nil {
			t.Fatal(err)
		}
		if v, err := s.Get([]byte("k")); err != nil || v == nil || len(v) != 0 {
			t.Fatalf("Get = %#v, %v; want an empty non-nil value", v, err)
		}
	})
	t.Run("GetUint64 of a value that is not 8 bytes is an error", func(t *testing.T) {
		s := openTestStable(t, path, logcore.NewMemFS())
		if err := s.Set(keyCurrentTerm, []byte("abc")); err != nil {
			t.Fatal(err)
		}
		if _, err := s.GetUint64(keyCurrentTerm); err == nil || isNotFound(err) {
			t.Fatalf("GetUint64 = %v", err)
		}
	})
	t.Run("values are copied in and out", func(t *testing.T) {
		s := openTestStable(t, path, logcore.NewMemFS())
		in := []byte("abc")
		if err := s.Set([]byte("k"), in); err != nil {
			t.Fatal(err)
		}
		in[0] = 'X'
		out, _ := s.Get([]byte("k"))
		out[1] = 'Y'
		if v, _ := s.Get([]byte("k")); string(v) != "abc" {
			t.Fatalf("Get = %q, want abc", v)
		}
	})
	t.Run("reopen keeps every value", func(t *testing.T) {
		for _, fsName := range []string{"osfs", "memfs"} {
			t.Run(fsName, func(t *testing.T) {
				var fsys logcore.FS = logcore.NewMemFS()
				p := path
				if fsName == "osfs" {
					fsys, p = logcore.OSFS{}, filepath.Join(t.TempDir(), "stable")
				}
				s := openTestStable(t, p, fsys)
				if err := s.SetUint64(keyCurrentTerm, 9); err != nil {
					t.Fatal(err)
				}
				if err := s.Set(keyLastVoteCand, []byte("n3")); err != nil {
					t.Fatal(err)
				}
				s.Close()
				s = openTestStable(t, p, fsys)
				if v, err := s.GetUint64(keyCurrentTerm); err != nil || v != 9 {
					t.Fatalf("GetUint64 after reopen = %d, %v", v, err)
				}
				if v, err := s.Get(keyLastVoteCand); err != nil || string(v) != "n3" {
					t.Fatalf("Get after reopen = %q, %v", v, err)
				}
			})
		}
	})
	t.Run("a closed store fails", func(t *testing.T) {
		s := openTestStable(t, path, logcore.NewMemFS())
		s.Close()
		if err := s.SetUint64(keyCurrentTerm, 1); !errors.Is(err, ErrClosed) {
			t.Fatalf("SetUint64 after Close = %v", err)
		}
		if _, err := s.Get(keyCurrentTerm); !errors.Is(err, ErrClosed) {
			t.Fatalf("Get after Close = %v", err)
		}
	})
	t.Run("a power loss after Set keeps it", func(t *testing.T) {
		for _, opt := range []logcore.CrashOptions{{}, {KeepUnsyncedPrefix: true, Seed: 2}, {ZeroUnsyncedTail: true, Seed: 3}} {
			mem := logcore.NewMemFS()
			s := openTestStable(t, path, mem)
			for term := uint64(1); term <= 5; term++ {
				if err := s.SetUint64(keyCurrentTerm, term); err != nil {
					t.Fatal(err)
				}
				mem.Crash(opt)
				s = openTestStable(t, path, mem)
				if v, err := s.GetUint64(keyCurrentTerm); err != nil || v != term {
					t.Fatalf("after a crash GetUint64 = %d, %v; want %d", v, err, term)
				}
			}
		}
	})
	t.Run("a power loss during Set leaves the old or the new value", func(t *testing.T) {
		// Fail each step of the rewrite in turn, then lose power.
		for _, c := range []struct {
			op          logcore.Op
			nth         int
			mayBeNew    bool // the rename happened
			failedAfter bool // the store refuses writes after it
		}{
			{logcore.OpOpen, 1, false, false},
			{logcore.OpWriteAt, 1, false, false},
			{logcore.OpTruncate, 1, false, false},
			{logcore.OpSync, 1, false, false},
			{logcore.OpClose, 1, false, false},
			{logcore.OpRename, 1, false, true},
			{logcore.OpSyncDir, 1, true, true},
		} {
			for _, opt := range []logcore.CrashOptions{{}, {KeepUnsyncedPrefix: true, Seed: 5}} {
				t.Run(fmt.Sprintf("%v/%+v", c.op, opt), func(t *testing.T) {
					mem := logcore.NewMemFS()
					fsys := logcore.NewFaultFS(mem)
					s := openTestStable(t, path, fsys)
					if err := s.SetUint64(keyCurrentTerm, 1); err != nil {
						t.Fatal(err)
					}
					fsys.SetHook(logcore.Rule{Ops: []logcore.Op{c.op}, Nth: c.nth, Count: 1,
						Fault: logcore.Fault{Err: syscall.EIO, Written: 7}}.Hook())
					err := s.SetUint64(keyCurrentTerm, 2)
					if err == nil {
						t.Fatal("SetUint64 succeeded despite the fault")
					}
					if errors.Is(err, ErrStableFailed) != c.failedAfter {
						t.Fatalf("SetUint64 = %v; want ErrStableFailed: %v", err, c.failedAfter)
					}
					fsys.SetHook(nil)
					if v, _ := s.GetUint64(keyCurrentTerm); v != 1 {
						t.Fatalf("GetUint64 after the failed Set = %d, want the acknowledged 1", v)
					}
					err = s.SetUint64(keyCurrentTerm, 3)
					if c.failedAfter != (err != nil) {
						t.Fatalf("SetUint64 after the failure = %v, want an error: %v", err, c.failedAfter)
					}
					if err == nil {
						return // a definite failure: the store went on
					}
					mem.Crash(opt)
					s2 := openTestStable(t, path, mem)
					v, err := s2.GetUint64(keyCurrentTerm)
					if err != nil || (v != 1 && !(c.mayBeNew && v == 2)) {
						t.Fatalf("after the crash GetUint64 = %d, %v; want 1 (or 2: %v)", v, err, c.mayBeNew)
					}
				})
			}
		}
	})
	t.Run("a leftover temp file is ignored and replaced", func(t *testing.T) {
		mem := logcore.NewMemFS()
		s := openTestStable(t, path, mem)
		if err := s.SetUint64(keyCurrentTerm, 4); err != nil {
			t.Fatal(err)
		}
		if err := mem.WriteFile(path+".tmp", []byte("half a file"), true); err != nil {
			t.Fatal(err)
		}
		s = openTestStable(t, path, mem)
		if v, err := s.GetUint64(keyCurrentTerm); err != nil || v != 4 {
			t.Fatalf("GetUint64 = %d, %v", v, err)
		}
		// What is left is the next temp file, made ahead: zeros.
		if b, err := mem.ReadFile(path + ".tmp"); err != nil || len(b) != stableSpare || bytes.ContainsFunc(b, func(r rune) bool { return r != 0 }) {
			t.Fatalf("temp file after open: %d bytes, %v; want %d zeros", len(b), err, stableSpare)
		}
	})
	t.Run("a damaged file is refused with ErrStableCorrupt, never a panic", func(t *testing.T) {
		good := encodeStable(map[string][]byte{"CurrentTerm": {0, 0, 0, 0, 0, 0, 0, 7}, "LastVoteCand": []byte("n2")})
		flip := func(i int) []byte {
			b := bytes.Clone(good)
			b[i] ^= 0x10
			return b
		}
		for _, c := range []struct {
			name string
			data []byte
		}{
			{"empty file", nil},
			{"header cut short", good[:5]},
			{"body cut short", good[:len(good)-3]},
			{"zeroes", make([]byte, len(good))},
			{"bad magic", flip(0)},
			{"unknown version", flip(4)},
			{"length says more", flip(8)},
			{"bit flip in the checksum", flip(11)},
			{"bit flip in a key", flip(stableHeaderSize + 3)},
			{"bit flip in the last value byte", flip(len(good) - 1)},
			{"trailing garbage", append(bytes.Clone(good), 0)},
		} {
			t.Run(c.name, func(t *testing.T) {
				mem := logcore.NewMemFS()
				if err := mem.MkdirAll("/node/raft", 0o755); err != nil {
					t.Fatal(err)
				}
				if err := mem.WriteFile(path, c.data, true); err != nil {
					t.Fatal(err)
				}
				s, err := OpenStableStore(path, mem)
				if !errors.Is(err, ErrStableCorrupt) {
					t.Fatalf("OpenStableStore = %v, %v; want ErrStableCorrupt", s, err)
				}
			})
		}
	})
}

// FuzzDecodeStable: decoding never panics, every failure is ErrStableCorrupt,
// and what decodes re-encodes to a file that decodes to the same pairs.
func FuzzDecodeStable(f *testing.F) {
	f.Add(encodeStable(map[string][]byte{}))
	f.Add(encodeStable(map[string][]byte{"CurrentTerm": {0, 0, 0, 0, 0, 0, 0, 7}, "LastVoteCand": []byte("n2")}))
	f.Add([]byte("NLSS\x01\x00\x00\x00\x00\x00\x00\x00\x00"))
	f.Fuzz(func(t *testing.T, b []byte) {
		kv, err := decodeStable(b)
		if err != nil {
			if !errors.Is(err, ErrStableCorrupt) {
				t.Fatalf("error %v is not ErrStableCorrupt", err)
			}
			return
		}
		again, err := decodeStable(encodeStable(kv))
		if err != nil {
			t.Fatalf("re-encoded store does not decode: %v", err)
		}
		if len(again) != len(kv) {
			t.Fatalf("%d pairs, then %d", len(kv), len(again))
		}
		for k, v := range kv {
			if !bytes.Equal(again[k], v) {
				t.Fatalf("key %q: %q, then %q", k, v, again[k])
			}
		}
	})
}
