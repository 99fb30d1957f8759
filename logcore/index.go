package logcore

import (
	"encoding/binary"
	"fmt"
)

// indexEntryWidth is the size of an index entry: [rel uint32][pos uint64].
const indexEntryWidth = 12

// index is a segment's offset index: a memory-mapped file of fixed-width
// entries. The entries below the segment's record count are valid; the
// mapping may be longer (pre-allocated) while the segment is active.
//
// The writer appends entries under Log.mu; readers read entries below the
// visible count, ordered after the write by the atomic that published it.
// The file and mapping live until close, which runs under the segment's
// fmu write lock so no reader is inside.
type index struct {
	file File
	mmap []byte
	// backed is how far from the start the file is known to hold written
	// blocks. The file is grown to its full size with a truncate, which
	// leaves a hole, and a store through the mapping into a hole must
	// allocate a block: on a full disk the kernel answers that with
	// SIGBUS, which kills the process. So entries are only stored below
	// backed, and reserve moves it ahead with real writes, which report a
	// full disk as an error.
	backed int64
}

// indexReserveStep is how far ahead reserve writes: one write per 5,461
// entries.
const indexReserveStep = 64 << 10

// reserve makes the file's blocks for the entries below n exist before
// they are stored through the mapping (see backed), writing zeros a step
// ahead. count is the number of valid entries: those below it hold data
// already and are never written over. n is capped at the capacity.
func (x *index) reserve(count, n uint32) error {
	need := min(int64(n)*indexEntryWidth, int64(len(x.mmap)))
	if need <= x.backed {
		return nil
	}
	at := max(x.backed, int64(count)*indexEntryWidth)
	end := min(max(need, at+indexReserveStep), int64(len(x.mmap)))
	for at < end {
		k := min(int64(len(zeroBlock)), end-at)
		if _, err := x.file.WriteAt(zeroBlock[:k], at); err != nil {
			return fmt.Errorf("reserve index space: %w", err)
		}
		at += k
	}
	x.backed = end
	return nil
}

// openIndexFile maps an index file of at least size bytes (growing it with
// zeros to size if it is shorter).
func openIndexFile(f File, size int64) (*index, error) {
	cur, err := f.Size()
	if err != nil {
		return nil, err
	}
	if cur < size {
		if err := f.Truncate(size); err != nil {
			return nil, err
		}
	}
	if size > int64(^uint(0)>>1) {
		return nil, fmt.Errorf("index of %d bytes too large to map", size)
	}
	m, err := f.Map(int(size))
	if err != nil {
		return nil, err
	}
	return &index{file: f, mmap: m}, nil
}

// capacity returns how many entries fit in the mapping.
func (x *index) capacity() uint32 { return uint32(len(x.mmap) / indexEntryWidth) }

// entry returns entry n, which must be below capacity.
func (x *index) entry(n uint32) (rel uint32, pos uint64) {
	b := x.mmap[int(n)*indexEntryWidth:]
	return binary.BigEndian.Uint32(b), binary.BigEndian.Uint64(b[4:])
}

// pos returns the store position of entry n.
func (x *index) pos(n uint32) uint64 {
	return binary.BigEndian.Uint64(x.mmap[int(n)*indexEntryWidth+4:])
}

// put writes entry n; n must be below capacity, and the file's space for it
// reserved (reserve).
func (x *index) put(n uint32, pos uint64) {
	b := x.mmap[int(n)*indexEntryWidth:]
	binary.BigEndian.PutUint32(b, n)
	binary.BigEndian.PutUint64(b[4:], pos)
}

// cut sets the file's length to count entries and syncs it. The mapping is
// kept: the entries below count stay readable.
func (x *index) cut(count uint32) error {
	if err := x.file.Truncate(int64(count) * indexEntryWidth); err != nil {
		return err
	}
	return x.file.Sync()
}

// close unmaps and closes the file.
func (x *index) close() error {
	err := x.file.Unmap(x.mmap)
	x.mmap = nil
	if cerr := x.file.Close(); err == nil {
		err = cerr
	}
	return err
}

// timeEntry is a time index entry: records of the segment up to and
// including relative offset rel have timestamps of at most t.
type timeEntry struct {
	t   int64
	rel uint32
}

const timeEntryWidth = 12

// timeIndexInterval is the number of store bytes between time index entries.
const timeIndexInterval = 64 << 10

func appendTimeEntry(dst []byte, e timeEntry) []byte {
	dst = binary.BigEndian.AppendUint64(dst, uint64(e.t))
	return binary.BigEndian.AppendUint32(dst, e.rel)
}

// parseTimeIndex decodes a time index file and checks that it could be the
// time index of a segment of count records: entries strictly increasing in
// rel and in t, rel below count. ok is false if it could not.
func parseTimeIndex(b []byte, count uint32) (entries []timeEntry, ok bool) {
	if len(b)%timeEntryWidth != 0 {
		return nil, false
	}
	entries = make([]timeEntry, 0, len(b)/timeEntryWidth)
	for i := 0; i < len(b); i += timeEntryWidth {
		e := timeEntry{t: int64(binary.BigEndian.Uint64(b[i:])), rel: binary.BigEndian.Uint32(b[i+8:])}
		if e.rel >= count {
			return nil, false
		}
		if n := len(entries); n > 0 && (e.rel <= entries[n-1].rel || e.t <= entries[n-1].t) {
			return nil, false
		}
		entries = append(entries, e)
	}
	return entries, true
}
