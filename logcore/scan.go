package logcore

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
)

// timeTracker decides when a segment's time index gets an entry: when the
// running maximum timestamp has grown and at least timeIndexInterval store
// bytes have passed since the last entry. The appender and recovery use the
// same rule, so a rebuilt time index equals the one written.
type timeTracker struct {
	max     int64 // running maximum timestamp, MinInt64 if no records
	lastT   int64 // time of the last entry, MinInt64 if none
	lastPos int64 // store position after the record of the last entry
}

func newTimeTracker() timeTracker {
	return timeTracker{max: math.MinInt64, lastT: math.MinInt64}
}

// add accounts for a record at rel with time t whose frame ends at end, and
// reports whether an entry {max, rel} is due.
func (tt *timeTracker) add(t int64, rel uint32, end int64) (timeEntry, bool) {
	if t > tt.max {
		tt.max = t
	}
	if tt.max > tt.lastT && end-tt.lastPos >= timeIndexInterval {
		tt.lastT, tt.lastPos = tt.max, end
		return timeEntry{t: tt.max, rel: rel}, true
	}
	return timeEntry{}, false
}

// final returns the entry that seals a segment of count records, if one is
// due: the running maximum, if no entry holds it yet.
func (tt *timeTracker) final(count uint32, end int64) (timeEntry, bool) {
	if count == 0 || tt.max <= tt.lastT {
		return timeEntry{}, false
	}
	tt.lastT, tt.lastPos = tt.max, end
	return timeEntry{t: tt.max, rel: count - 1}, true
}

// scanResult is what scanning a store found.
type scanResult struct {
	positions []uint64    // position of each valid frame, in order
	valid     int64       // bytes of the valid prefix, ending at a batch end
	times     []timeEntry // the time index of the valid prefix
	tracker   timeTracker // state after the valid prefix
	torn      bool        // a torn tail follows the valid prefix
}

// scanChunk is how much of a store a scan reads at a time.
const scanChunk = 1 << 20

// scanStore reads a store of size bytes from the start, checking every frame
// and that offsets run densely from base. It stops at the first frame that
// does not hold: if nothing valid follows it, that is a torn tail (res.torn,
// nil error); if a valid frame follows, the damage is before the tail and the
// error wraps ErrCorrupt. The valid prefix ends at the end of a batch: the
// frames of a batch whose last frame is missing are part of the torn tail.
func scanStore(f File, size int64, base uint64) (res scanResult, err error) {
	res.tracker = newTimeTracker()
	buf := make([]byte, 0, min(size, scanChunk))
	var bufStart int64 // file position of buf[0]
	pos := int64(0)
	var pending []scanned // frames of a batch whose end is not seen yet
	for pos < size {
		at := int(pos - bufStart)
		rec, n, derr := DecodeFrame(buf[at:])
		if errors.Is(derr, errTorn) && bufStart+int64(len(buf)) < size {
			// Need more bytes: slide the window and read on, unless
			// the frame claims to run past the end of the file.
			need := scanChunk
			if l, lerr := frameLength(buf[at:]); lerr == nil {
				need = max(need, frameHeaderSize+l)
			}
			if pos+int64(need) > size && need > scanChunk {
				need = int(size - pos) // read all that is left; it decodes as torn
			}
			rest := buf[at:]
			nb := buf
			if cap(nb) < need {
				nb = make([]byte, 0, need)
			}
			nb = append(nb[:0], rest...)
			want := min(int64(need-len(nb)), size-(pos+int64(len(nb))))
			if want > 0 {
				nb = nb[:len(nb)+int(want)]
				if _, rerr := f.ReadAt(nb[len(rest):], pos+int64(len(rest))); rerr != nil && !errors.Is(rerr, io.EOF) {
					return res, rerr
				}
			}
			buf, bufStart = nb, pos
			continue
		}
		want := base + uint64(len(res.positions)+len(pending))
		if derr == nil && rec.Offset != want {
			derr = corruptf("frame at %d holds offset %d, want %d", pos, rec.Offset, want)
		}
		if derr != nil {
			// Is anything valid after this frame? Then it is not a tail.
			after, ferr := findValidFrameAfter(f, pos, size, want)
			if ferr != nil {
				return res, ferr
			}
			if after >= 0 {
				return res, fmt.Errorf("%w (a valid frame follows at position %d): %v", ErrCorrupt, after, derr)
			}
			res.torn = true
			return res, nil
		}
		pending = append(pending, scanned{rec.Time, pos, pos + int64(n)})
		pos += int64(n)
		if frameContinuesBatch(buf[at:]) {
			continue // the batch is kept only if its last frame is there
		}
		for _, p := range pending {
			rel := uint32(len(res.positions))
			res.positions = append(res.positions, uint64(p.pos))
			if e, ok := res.tracker.add(p.time, rel, p.end); ok {
				res.times = append(res.times, e)
			}
		}
		pending = pending[:0]
		res.valid = pos
	}
	if len(pending) > 0 {
		// The store ends inside a batch: its last frame never made it.
		res.torn = true
	}
	return res, nil
}

// scanned is a frame read by scanStore, held until its batch is complete.
type scanned struct {
	time     int64
	pos, end int64
}

// findValidFrameAfter searches the store after a bad frame at bad for any
// frame that checks out and could hold a later offset than want-1. It returns
// its position or -1. Candidates are filtered by their length and offset
// fields before their checksum is computed, so the search costs about one
// pass over the bytes.
func findValidFrameAfter(f File, bad, size int64, want uint64) (int64, error) {
	if size-bad-1 < frameHeaderSize+recordFixedSize {
		return -1, nil
	}
	rest := make([]byte, size-bad-1)
	if _, err := f.ReadAt(rest, bad+1); err != nil && !errors.Is(err, io.EOF) {
		return -1, err
	}
	// A later frame's offset is at least want and at most want plus the
	// number of frames that fit after bad.
	maxOff := want + uint64(len(rest)/(frameHeaderSize+recordFixedSize)) + 1
	for i := 0; i+frameHeaderSize+recordFixedSize <= len(rest); i++ {
		n := binary.BigEndian.Uint32(rest[i:])
		if n < recordFixedSize || int64(n) > int64(len(rest)-i-frameHeaderSize) {
			continue
		}
		off := binary.BigEndian.Uint64(rest[i+frameHeaderSize:])
		if off < want || off > maxOff {
			continue
		}
		if _, _, err := DecodeFrame(rest[i:]); err == nil {
			return bad + 1 + int64(i), nil
		}
	}
	return -1, nil
}
