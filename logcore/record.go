package logcore

import (
	"encoding/binary"
	"errors"
	"hash/crc32"
	"math"
)

// Record is one entry of a log.
type Record struct {
	// Offset is the record's position in the log, assigned by Append.
	Offset uint64
	// Time is the record's timestamp in Unix nanoseconds. Append stamps
	// records whose Time is zero with Config.Now; a replicated caller
	// stamps them itself so that every replica stores the same time.
	Time int64
	// Headers are optional key/value pairs, kept in order.
	Headers []Header
	// Value is the record's payload.
	Value []byte
}

// Header is one record header. Keys may repeat.
type Header struct {
	Key   string
	Value string
}

const (
	// frameHeaderSize is [length uint32][crc uint32].
	frameHeaderSize = 8
	// recordFixedSize is the smallest payload: offset, time, header count.
	recordFixedSize = 8 + 8 + 1
	// MaxRecordBytes bounds a frame's payload; a length field above it is
	// corruption, so a damaged file never makes a reader allocate more.
	MaxRecordBytes = 1 << 30
	// maxPosition bounds store positions and so MaxSegmentBytes.
	maxPosition = 1 << 40
	// maxOffset keeps offset arithmetic far from overflow.
	maxOffset = math.MaxUint64 >> 1
)

var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// errTorn means a frame runs past the end of the bytes available: the tail of
// a file whose last write did not complete (or a buffer too short).
var errTorn = errors.New("logcore: frame cut short")

func uvarintLen(x uint64) int {
	n := 1
	for x >= 0x80 {
		x >>= 7
		n++
	}
	return n
}

// payloadSize returns the size of r's encoded payload.
func payloadSize(r *Record) int {
	n := 16 + uvarintLen(uint64(len(r.Headers)))
	for _, h := range r.Headers {
		n += uvarintLen(uint64(len(h.Key))) + len(h.Key) + uvarintLen(uint64(len(h.Value))) + len(h.Value)
	}
	return n + len(r.Value)
}

// FrameSize returns the number of store bytes r takes.
func FrameSize(r *Record) int { return frameHeaderSize + payloadSize(r) }

// frameContinues is the top bit of a frame's length field: set on every
// frame of a batch but its last, so that recovery can cut a batch that was
// only partly written (see the package doc).
const frameContinues = 1 << 31

// AppendFrame appends r's frame, as stored on disk, to dst.
func AppendFrame(dst []byte, r *Record) []byte { return appendFrame(dst, r, false) }

// appendFrame appends r's frame, marked as continued by the next frame of
// its batch if more is true.
func appendFrame(dst []byte, r *Record, more bool) []byte {
	size := payloadSize(r)
	start := len(dst)
	field := uint32(size)
	if more {
		field |= frameContinues
	}
	dst = binary.BigEndian.AppendUint32(dst, field)
	dst = append(dst, 0, 0, 0, 0) // crc, filled below
	dst = binary.BigEndian.AppendUint64(dst, r.Offset)
	dst = binary.BigEndian.AppendUint64(dst, uint64(r.Time))
	dst = binary.AppendUvarint(dst, uint64(len(r.Headers)))
	for _, h := range r.Headers {
		dst = binary.AppendUvarint(dst, uint64(len(h.Key)))
		dst = append(dst, h.Key...)
		dst = binary.AppendUvarint(dst, uint64(len(h.Value)))
		dst = append(dst, h.Value...)
	}
	dst = append(dst, r.Value...)
	binary.BigEndian.PutUint32(dst[start+4:], frameCRC(dst[start:start+4], dst[start+frameHeaderSize:]))
	return dst
}

func frameCRC(length, payload []byte) uint32 {
	return crc32.Update(crc32.Checksum(length, castagnoli), castagnoli, payload)
}

// frameLength reads the payload length of the frame at the start of b and
// checks it against the bounds any frame satisfies.
func frameLength(b []byte) (int, error) {
	if len(b) < frameHeaderSize {
		return 0, errTorn
	}
	n := binary.BigEndian.Uint32(b) &^ frameContinues
	if n < recordFixedSize || n > MaxRecordBytes {
		return 0, corruptf("frame length %d out of bounds", n)
	}
	return int(n), nil
}

// DecodeFrame decodes the frame at the start of b and returns its record and
// the frame's size. The record's Value aliases b. A frame that runs past the
// end of b is reported as torn (wrapping io.ErrUnexpectedEOF semantics with
// an unexported error); any other damage wraps ErrCorrupt. It never panics.
func DecodeFrame(b []byte) (Record, int, error) {
	n, err := frameLength(b)
	if err != nil {
		return Record{}, 0, err
	}
	if len(b) < frameHeaderSize+n {
		return Record{}, 0, errTorn
	}
	payload := b[frameHeaderSize : frameHeaderSize+n]
	if want, got := binary.BigEndian.Uint32(b[4:]), frameCRC(b[:4], payload); want != got {
		return Record{}, 0, corruptf("frame checksum %08x, want %08x", got, want)
	}
	rec, err := decodePayload(payload)
	if err != nil {
		return Record{}, 0, err
	}
	return rec, frameHeaderSize + n, nil
}

// decodePayload parses a payload whose checksum already held.
func decodePayload(p []byte) (Record, error) {
	if len(p) < recordFixedSize {
		return Record{}, corruptf("payload of %d bytes too short", len(p))
	}
	rec := Record{
		Offset: binary.BigEndian.Uint64(p),
		Time:   int64(binary.BigEndian.Uint64(p[8:])),
	}
	p = p[16:]
	count, k := binary.Uvarint(p)
	if k <= 0 || count > uint64(len(p)) {
		return Record{}, corruptf("bad header count")
	}
	p = p[k:]
	if count > 0 {
		rec.Headers = make([]Header, 0, count)
		for range count {
			key, rest, ok := takeBytes(p)
			if !ok {
				return Record{}, corruptf("bad header key")
			}
			val, rest, ok := takeBytes(rest)
			if !ok {
				return Record{}, corruptf("bad header value")
			}
			rec.Headers = append(rec.Headers, Header{Key: string(key), Value: string(val)})
			p = rest
		}
	}
	rec.Value = p[:len(p):len(p)]
	return rec, nil
}

func takeBytes(p []byte) (b, rest []byte, ok bool) {
	n, k := binary.Uvarint(p)
	if k <= 0 || n > uint64(len(p)-k) {
		return nil, nil, false
	}
	end := k + int(n)
	return p[k:end], p[end:], true
}

// frameContinuesBatch reports whether the frame at the start of b is
// followed by more frames of its batch.
func frameContinuesBatch(b []byte) bool {
	return len(b) >= 4 && binary.BigEndian.Uint32(b)&frameContinues != 0
}
