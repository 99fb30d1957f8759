package raftfsm

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sync"

	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
)

var _ raft.StableStore = (*StableStore)(nil)

// Stable store file format, version 1. The whole store is one small file,
//
//	[magic "NLSS"][version uint8 = 1][body length uint32 BE][crc uint32 BE][body]
//
// where crc is CRC-32C (Castagnoli) over the body, and the body is the pairs
// in ascending key order,
//
//	[pair count uvarint] { [key length uvarint][key] [value length uvarint][value] }
//
// A uint64 (SetUint64) is stored as its 8 bytes, big-endian, in the same key
// space as Set: hashicorp/raft never uses one key both ways.
//
// Every Set rewrites the file: the new contents go to <path>.tmp, which is
// fsynced, renamed over <path>, and then the directory is fsynced. A crash
// leaves either the old file or the new one, whole, under <path>; a leftover
// <path>.tmp is removed on open. The next <path>.tmp is made ahead, filled
// with zeros, so that a Set overwrites blocks that exist: on a full disk a
// Set still succeeds. (hashicorp/raft panics when it cannot store its term,
// so a Set that needed new space would kill the node when the disk fills
// up and an election comes.) The file is still treated as untrusted
// input: a file that is empty, cut short, fails its checksum or does not
// parse makes OpenStableStore fail with ErrStableCorrupt instead of guessing.
const (
	stableMagic      = "NLSS"
	stableVersion1   = 1
	stableHeaderSize = len(stableMagic) + 1 + 4 + 4

	// maxStableBytes bounds the file: Raft keeps three small keys in it.
	maxStableBytes = 16 << 20
)

var stableCRCTable = crc32.MakeTable(crc32.Castagnoli)

// StableStore is a raft.StableStore in one small file, rewritten atomically
// and durably on each Set (see the format above). Values are also kept in
// memory, so reads touch no file.
//
// A missing key is reported as hashicorp/raft expects: Get returns a nil
// value and ErrKeyNotFound (text "not found"), and GetUint64 returns 0 and
// ErrKeyNotFound, as raft-boltdb does; Raft treats that error as "unset".
//
// A StableStore is safe for concurrent use; mu serialises writers with each
// other and with readers. Each Set costs two fsyncs (file and directory),
// which is fine for what Raft stores here: the term and the vote, written
// once per election.
type StableStore struct {
	fs   logcore.FS
	path string
	tmp  string
	dir  string

	mu     sync.Mutex
	kv     map[string][]byte // guarded by mu; the last acknowledged values
	failed error             // guarded by mu; set after a rewrite failed past its rename
	closed bool              // guarded by mu
}

// OpenStableStore opens the stable store kept in the file at path, creating
// its directory if needed; a missing file is an empty store. fsys is the
// file system (logcore.OSFS{} if nil), so that tests can use logcore.MemFS.
func OpenStableStore(path string, fsys logcore.FS) (*StableStore, error) {
	if fsys == nil {
		fsys = logcore.OSFS{}
	}
	s := &StableStore{fs: fsys, path: path, tmp: path + ".tmp", dir: filepath.Dir(path)}
	if err := fsys.MkdirAll(s.dir, 0o755); err != nil {
		return nil, fmt.Errorf("raftfsm: open stable store: %w", err)
	}
	if err := fsys.Remove(s.tmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("raftfsm: open stable store: remove leftover: %w", err)
	}
	s.prepareTemp()
	b, err := readStableFile(fsys, path)
	if errors.Is(err, fs.ErrNotExist) {
		s.kv = map[string][]byte{}
		return s, nil
	}
	if err != nil {
		return nil, fmt.Errorf("raftfsm: open stable store: %w", err)
	}
	if s.kv, err = decodeStable(b); err != nil {
		return nil, fmt.Errorf("raftfsm: open stable store %s: %w", path, err)
	}
	return s, nil
}

// readStableFile reads the whole file at path, refusing one larger than
// maxStableBytes (a damaged size must not cost memory).
func readStableFile(fsys logcore.FS, path string) ([]byte, error) {
	b, err := logcore.ReadFile(fsys, path, maxStableBytes)
	if errors.Is(err, logcore.ErrCorrupt) {
		return nil, fmt.Errorf("%w: %v", ErrStableCorrupt, err)
	}
	return b, err
}

// Set stores val under key, durably when it returns nil. An error from a
// failed temp-file write or fsync is definite (the old value stays); an
// error wrapping ErrStableFailed is indefinite.
func (s *StableStore) Set(key []byte, val []byte) error {
	return s.set(key, bytes.Clone(val))
}

// SetUint64 stores val under key as 8 big-endian bytes; see Set.
func (s *StableStore) SetUint64(key []byte, val uint64) error {
	return s.set(key, binary.BigEndian.AppendUint64(nil, val))
}

func (s *StableStore) set(key, val []byte) error {
	if val == nil {
		val = []byte{}
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return ErrClosed
	}
	if s.failed != nil {
		return fmt.Errorf("%w (earlier: %w)", ErrStableFailed, s.failed)
	}
	next := maps.Clone(s.kv)
	next[string(key)] = val
	b := encodeStable(next)
	if len(b) > maxStableBytes {
		return fmt.Errorf("raftfsm: stable store would grow to %d bytes, more than %d", len(b), maxStableBytes)
	}
	if err := s.writeTemp(b); err != nil {
		return fmt.Errorf("raftfsm: stable store set %q: %w", key, err)
	}
	if err := s.fs.Rename(s.tmp, s.path); err != nil {
		s.failed = err
		return fmt.Errorf("%w: set %q: %w", ErrStableFailed, key, err)
	}
	if err := s.fs.SyncDir(s.dir); err != nil {
		s.failed = err
		return fmt.Errorf("%w: set %q: %w", ErrStableFailed, key, err)
	}
	s.kv = next
	s.prepareTemp()
	return nil
}

// stableSpare is how much of the next temp file prepareTemp writes ahead.
const stableSpare = 4096

// prepareTemp makes the next temp file, filled with zeros, so that the
// next Set overwrites space that exists (the rename of the last one freed
// the old file's). It is best effort: without it, the Set makes the file.
func (s *StableStore) prepareTemp() {
	f, err := s.fs.OpenFile(s.tmp, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return
	}
	_, err = f.WriteAt(make([]byte, stableSpare), 0)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		s.fs.Remove(s.tmp)
	}
}

// writeTemp writes b over the start of the temp file (made ahead by
// prepareTemp, or now), cuts the file to b's length, and fsyncs it.
func (s *StableStore) writeTemp(b []byte) error {
	f, err := s.fs.OpenFile(s.tmp, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return err
	}
	_, err = f.WriteAt(b, 0)
	if err == nil {
		err = f.Truncate(int64(len(b)))
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	return err
}

// Get returns a copy of the value stored under key, or nil and
// ErrKeyNotFound (unwrapped) if there is none.
func (s *StableStore) Get(key []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil, ErrClosed
	}
	v, ok := s.kv[string(key)]
	if !ok {
		return nil, ErrKeyNotFound
	}
	return bytes.Clone(v), nil
}

// GetUint64 returns the uint64 stored under key by SetUint64, or 0 and
// ErrKeyNotFound (unwrapped) if there is none. A value that is not 8 bytes
// long is an error.
func (s *StableStore) GetUint64(key []byte) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return 0, ErrClosed
	}
	v, ok := s.kv[string(key)]
	if !ok {
		return 0, ErrKeyNotFound
	}
	if len(v) != 8 {
		return 0, fmt.Errorf("raftfsm: stable store key %q holds %d bytes, not a uint64", key, len(v))
	}
	return binary.BigEndian.Uint64(v), nil
}

// Close releases the store. It holds no open file between calls, so it
// only makes later calls fail with ErrClosed. Values set are already
// durable.
func (s *StableStore) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	return nil
}

// encodeStable returns the file contents for kv.
func encodeStable(kv map[string][]byte) []byte {
	keys := slices.Sorted(maps.Keys(kv))
	body := binary.AppendUvarint(nil, uint64(len(keys)))
	for _, k := range keys {
		body = binary.AppendUvarint(body, uint64(len(k)))
		body = append(body, k...)
		body = binary.AppendUvarint(body, uint64(len(kv[k])))
		body = append(body, kv[k]...)
	}
	b := make([]byte, 0, stableHeaderSize+len(body))
	b = append(b, stableMagic...)
	b = append(b, stableVersion1)
	b = binary.BigEndian.AppendUint32(b, uint32(len(body)))
	b = binary.BigEndian.AppendUint32(b, crc32.Checksum(body, stableCRCTable))
	return append(b, body...)
}

// decodeStable parses file contents. Every failure wraps ErrStableCorrupt;
// it never panics, whatever b holds.
func decodeStable(b []byte) (map[string][]byte, error) {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrStableCorrupt, fmt.Sprintf(format, args...))
	}
	if len(b) < stableHeaderSize {
		return nil, bad("%d bytes, shorter than the %d-byte header", len(b), stableHeaderSize)
	}
	if string(b[:len(stableMagic)]) != stableMagic {
		return nil, bad("bad magic %q", b[:len(stableMagic)])
	}
	if v := b[len(stableMagic)]; v != stableVersion1 {
		return nil, bad("unsupported version %d", v)
	}
	h := b[len(stableMagic)+1:]
	size, sum := binary.BigEndian.Uint32(h), binary.BigEndian.Uint32(h[4:])
	body := b[stableHeaderSize:]
	if uint64(size) != uint64(len(body)) {
		return nil, bad("body is %d bytes, header says %d", len(body), size)
	}
	if got := crc32.Checksum(body, stableCRCTable); got != sum {
		return nil, bad("checksum %08x, header says %08x", got, sum)
	}
	field := func() ([]byte, error) {
		n, w := binary.Uvarint(body)
		if w <= 0 || n > uint64(len(body)-w) {
			return nil, bad("bad length")
		}
		f := body[w : w+int(n)]
		body = body[w+int(n):]
		return f, nil
	}
	count, w := binary.Uvarint(body)
	if w <= 0 || count > uint64(len(body)) {
		return nil, bad("bad pair count")
	}
	body = body[w:]
	kv := make(map[string][]byte, count)
	for range count {
		k, err := field()
		if err != nil {
			return nil, err
		}
		v, err := field()
		if err != nil {
			return nil, err
		}
		if _, dup := kv[string(k)]; dup {
			return nil, bad("key %q appears twice", k)
		}
		kv[string(k)] = bytes.Clone(v)
	}
	if len(body) != 0 {
		return nil, bad("%d bytes after the last pair", len(body))
	}
	return kv, nil
}
