package protocol

import (
	"encoding/binary"
	"errors"
	"fmt"
	"math"
	"slices"
)

// A minimal msgpack writer and reader for the hot-path bodies. The reader
// trusts nothing: every length is checked against the bytes that remain
// before anything is allocated, so a short garbage body cannot make it
// allocate more than the body's size.

// errShort is the reader's error for a body cut short.
var errShort = errors.New("unexpected end of body")

func appendBool(b []byte, v bool) []byte {
	if v {
		return append(b, 0xc3)
	}
	return append(b, 0xc2)
}

func appendUint(b []byte, v uint64) []byte {
	switch {
	case v <= 0x7f:
		return append(b, byte(v))
	case v <= math.MaxUint8:
		return append(b, 0xcc, byte(v))
	case v <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xcd), uint16(v))
	case v <= math.MaxUint32:
		return binary.BigEndian.AppendUint32(append(b, 0xce), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xcf), v)
}

func appendInt(b []byte, v int64) []byte {
	switch {
	case v >= 0:
		return appendUint(b, uint64(v))
	case v >= -32:
		return append(b, byte(v))
	case v >= math.MinInt8:
		return append(b, 0xd0, byte(v))
	case v >= math.MinInt16:
		return binary.BigEndian.AppendUint16(append(b, 0xd1), uint16(v))
	case v >= math.MinInt32:
		return binary.BigEndian.AppendUint32(append(b, 0xd2), uint32(v))
	}
	return binary.BigEndian.AppendUint64(append(b, 0xd3), uint64(v))
}

func appendString(b []byte, s string) []byte {
	n := len(s)
	switch {
	case n <= 31:
		b = append(b, 0xa0|byte(n))
	case n <= math.MaxUint8:
		b = append(b, 0xd9, byte(n))
	case n <= math.MaxUint16:
		b = binary.BigEndian.AppendUint16(append(b, 0xda), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xdb), uint32(n))
	}
	return append(b, s...)
}

func appendBin(b []byte, v []byte) []byte {
	n := len(v)
	switch {
	case n <= math.MaxUint8:
		b = append(b, 0xc4, byte(n))
	case n <= math.MaxUint16:
		b = binary.BigEndian.AppendUint16(append(b, 0xc5), uint16(n))
	default:
		b = binary.BigEndian.AppendUint32(append(b, 0xc6), uint32(n))
	}
	return append(b, v...)
}

func appendArrayLen(b []byte, n int) []byte {
	switch {
	case n <= 15:
		return append(b, 0x90|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xdc), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, 0xdd), uint32(n))
}

func appendMapLen(b []byte, n int) []byte {
	switch {
	case n <= 15:
		return append(b, 0x80|byte(n))
	case n <= math.MaxUint16:
		return binary.BigEndian.AppendUint16(append(b, 0xde), uint16(n))
	}
	return binary.BigEndian.AppendUint32(append(b, 0xdf), uint32(n))
}

// appendHeaders appends headers as map<str, array<str>>, keys sorted so
// that equal headers encode to equal bytes.
func appendHeaders(b []byte, h map[string][]string) []byte {
	b = appendMapLen(b, len(h))
	switch len(h) {
	case 0:
		return b
	case 1:
		for k, vs := range h {
			b = appendStrings(appendString(b, k), vs)
		}
		return b
	}
	keys := make([]string, 0, len(h))
	for k := range h {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		b = appendStrings(appendString(b, k), h[k])
	}
	return b
}

func appendStrings(b []byte, vs []string) []byte {
	b = appendArrayLen(b, len(vs))
	for _, v := range vs {
		b = appendString(b, v)
	}
	return b
}

// Encoded sizes, for budgeting a reply before encoding it.

func uintSize(v uint64) int {
	switch {
	case v <= 0x7f:
		return 1
	case v <= math.MaxUint8:
		return 2
	case v <= math.MaxUint16:
		return 3
	case v <= math.MaxUint32:
		return 5
	}
	return 9
}

func intSize(v int64) int {
	switch {
	case v >= 0:
		return uintSize(uint64(v))
	case v >= -32:
		return 1
	case v >= math.MinInt8:
		return 2
	case v >= math.MinInt16:
		return 3
	case v >= math.MinInt32:
		return 5
	}
	return 9
}

func strSize(n int) int {
	switch {
	case n <= 31:
		return 1 + n
	case n <= math.MaxUint8:
		return 2 + n
	case n <= math.MaxUint16:
		return 3 + n
	}
	return 5 + n
}

func binSize(n int) int {
	switch {
	case n <= math.MaxUint8:
		return 2 + n
	case n <= math.MaxUint16:
		return 3 + n
	}
	return 5 + n
}

func lenSize(n int) int { // array or map header
	switch {
	case n <= 15:
		return 1
	case n <= math.MaxUint16:
		return 3
	}
	return 5
}

func headersSize(h map[string][]string) int {
	n := lenSize(len(h))
	for k, vs := range h {
		n += strSize(len(k)) + lenSize(len(vs))
		for _, v := range vs {
			n += strSize(len(v))
		}
	}
	return n
}

// reader decodes msgpack from b. Its methods return an error for anything
// that is not the expected type or runs past the end; byte strings it
// returns alias b.
type reader struct {
	b []byte
	i int
}

func (r *reader) remaining() int { return len(r.b) - r.i }

func (r *reader) done() bool { return r.i >= len(r.b) }

func (r *reader) byte1() (byte, error) {
	if r.i >= len(r.b) {
		return 0, errShort
	}
	c := r.b[r.i]
	r.i++
	return c, nil
}

func (r *reader) take(n int) ([]byte, error) {
	if n < 0 || n > len(r.b)-r.i {
		return nil, errShort
	}
	v := r.b[r.i : r.i+n : r.i+n]
	r.i += n
	return v, nil
}

func (r *reader) uintN(n int) (uint64, error) {
	p, err := r.take(n)
	if err != nil {
		return 0, err
	}
	switch n {
	case 1:
		return uint64(p[0]), nil
	case 2:
		return uint64(binary.BigEndian.Uint16(p)), nil
	case 4:
		return uint64(binary.BigEndian.Uint32(p)), nil
	}
	return binary.BigEndian.Uint64(p), nil
}

// isNil consumes a nil if one is next.
func (r *reader) isNil() bool {
	if r.i < len(r.b) && r.b[r.i] == 0xc0 {
		r.i++
		return true
	}
	return false
}

// bool reads a msgpack boolean.
func (r *reader) bool() (bool, error) {
	c, err := r.byte1()
	if err != nil {
		return false, err
	}
	switch c {
	case 0xc2:
		return false, nil
	case 0xc3:
		return true, nil
	}
	return false, fmt.Errorf("want a boolean, found type byte 0x%02x", c)
}

// int64 reads any msgpack integer that fits an int64.
func (r *reader) int64() (int64, error) {
	c, err := r.byte1()
	if err != nil {
		return 0, err
	}
	switch {
	case c <= 0x7f:
		return int64(c), nil
	case c >= 0xe0:
		return int64(int8(c)), nil
	}
	var u uint64
	switch c {
	case 0xcc, 0xcd, 0xce, 0xcf:
		if u, err = r.uintN(1 << (c - 0xcc)); err != nil {
			return 0, err
		}
		if u > math.MaxInt64 {
			return 0, fmt.Errorf("integer %d overflows int64", u)
		}
		return int64(u), nil
	case 0xd0:
		u, err = r.uintN(1)
		return int64(int8(u)), err
	case 0xd1:
		u, err = r.uintN(2)
		return int64(int16(u)), err
	case 0xd2:
		u, err = r.uintN(4)
		return int64(int32(u)), err
	case 0xd3:
		u, err = r.uintN(8)
		return int64(u), err
	}
	return 0, fmt.Errorf("want an integer, found type byte 0x%02x", c)
}

// uint64 reads any msgpack integer that is not negative.
func (r *reader) uint64() (uint64, error) {
	if r.i < len(r.b) && r.b[r.i] == 0xcf {
		r.i++
		return r.uintN(8)
	}
	v, err := r.int64()
	if err != nil {
		return 0, err
	}
	if v < 0 {
		return 0, fmt.Errorf("want an unsigned integer, found %d", v)
	}
	return uint64(v), nil
}

// int reads an integer that fits an int and is not negative.
func (r *reader) int() (int, error) {
	v, err := r.int64()
	if err != nil {
		return 0, err
	}
	if v < 0 || v > math.MaxInt32 {
		return 0, fmt.Errorf("integer %d out of range [0, %d]", v, math.MaxInt32)
	}
	return int(v), nil
}

// bytes reads a bin or str (some encoders write byte strings as str) and
// returns it aliasing the input. A nil reads as an empty value.
func (r *reader) bytes() ([]byte, error) {
	c, err := r.byte1()
	if err != nil {
		return nil, err
	}
	var n uint64
	switch {
	case c == 0xc0:
		return nil, nil
	case c >= 0xa0 && c <= 0xbf:
		n = uint64(c & 0x1f)
	case c == 0xc4 || c == 0xd9:
		n, err = r.uintN(1)
	case c == 0xc5 || c == 0xda:
		n, err = r.uintN(2)
	case c == 0xc6 || c == 0xdb:
		n, err = r.uintN(4)
	default:
		return nil, fmt.Errorf("want bytes, found type byte 0x%02x", c)
	}
	if err != nil {
		return nil, err
	}
	if n > uint64(r.remaining()) {
		return nil, errShort
	}
	return r.take(int(n))
}

// str reads a str (or bin) as a string.
func (r *reader) str() (string, error) {
	b, err := r.bytes()
	return string(b), err
}

// lenHeader reads an array (array=true) or map header and checks that the
// elements can fit in what remains (at least one byte each, two per map
// entry), so a garbage length never causes a large allocation.
func (r *reader) lenHeader(array bool) (int, error) {
	c, err := r.byte1()
	if err != nil {
		return 0, err
	}
	var n uint64
	switch {
	case array && c >= 0x90 && c <= 0x9f:
		n = uint64(c & 0x0f)
	case !array && c >= 0x80 && c <= 0x8f:
		n = uint64(c & 0x0f)
	case (array && c == 0xdc) || (!array && c == 0xde):
		n, err = r.uintN(2)
	case (array && c == 0xdd) || (!array && c == 0xdf):
		n, err = r.uintN(4)
	default:
		if array {
			return 0, fmt.Errorf("want an array, found type byte 0x%02x", c)
		}
		return 0, fmt.Errorf("want a map, found type byte 0x%02x", c)
	}
	if err != nil {
		return 0, err
	}
	per := uint64(1)
	if !array {
		per = 2
	}
	if n*per > uint64(r.remaining()) {
		return 0, errShort
	}
	return int(n), nil
}

func (r *reader) arrayLen() (int, error) { return r.lenHeader(true) }
func (r *reader) mapLen() (int, error)   { return r.lenHeader(false) }

// headers reads map<str, array<str>> (or nil). A single str value is
// accepted in place of an array of one.
func (r *reader) headers() (map[string][]string, error) {
	if r.isNil() {
		return nil, nil
	}
	n, err := r.mapLen()
	if err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, nil
	}
	h := make(map[string][]string, min(n, 16))
	for range n {
		k, err := r.str()
		if err != nil {
			return nil, fmt.Errorf("header key: %w", err)
		}
		if k == "" {
			return nil, errors.New("empty header key")
		}
		if r.i < len(r.b) && (r.b[r.i]&0xe0 == 0xa0 || r.b[r.i] == 0xd9 || r.b[r.i] == 0xda || r.b[r.i] == 0xdb) {
			v, err := r.str()
			if err != nil {
				return nil, fmt.Errorf("header %q: %w", k, err)
			}
			h[k] = append(h[k], v)
			continue
		}
		m, err := r.arrayLen()
		if err != nil {
			return nil, fmt.Errorf("header %q: %w", k, err)
		}
		vs := make([]string, 0, min(m, 16))
		for range m {
			v, err := r.str()
			if err != nil {
				return nil, fmt.Errorf("header %q: %w", k, err)
			}
			vs = append(vs, v)
		}
		h[k] = append(h[k], vs...)
	}
	return h, nil
}

// malformed wraps a decoding error as ErrMalformedBody.
func malformed(what string, err error) *Error {
	return Errorf(ErrMalformedBody, "malformed %s: %v", what, err)
}

// unknownField is the error for a key the schema does not have.
func unknownField(k string) error { return fmt.Errorf("unknown field %q", k) }

// maxSkipDepth bounds the nesting skip follows, so garbage cannot exhaust
// the stack.
const maxSkipDepth = 32

// skip consumes one value of any type.
func (r *reader) skip() error { return r.skipDepth(0) }

func (r *reader) skipDepth(depth int) error {
	if depth > maxSkipDepth {
		return errors.New("nesting too deep")
	}
	c, err := r.byte1()
	if err != nil {
		return err
	}
	var n uint64 // bytes to skip, or elements for arrays and maps
	elems := 0   // 1 for an array, 2 for a map
	switch {
	case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		return nil
	case c <= 0x8f:
		n, elems = uint64(c&0x0f), 2
	case c <= 0x9f:
		n, elems = uint64(c&0x0f), 1
	case c <= 0xbf:
		n = uint64(c & 0x1f)
	default:
		switch c {
		case 0xc4, 0xd9:
			n, err = r.uintN(1)
		case 0xc5, 0xda:
			n, err = r.uintN(2)
		case 0xc6, 0xdb:
			n, err = r.uintN(4)
		case 0xc7:
			n, err = r.uintN(1)
			n++ // the ext type byte
		case 0xc8:
			n, err = r.uintN(2)
			n++
		case 0xc9:
			n, err = r.uintN(4)
			n++
		case 0xca, 0xce, 0xd2:
			n = 4
		case 0xcb, 0xcf, 0xd3:
			n = 8
		case 0xcc, 0xd0:
			n = 1
		case 0xcd, 0xd1:
			n = 2
		case 0xd4, 0xd5, 0xd6, 0xd7, 0xd8: // fixext 1, 2, 4, 8, 16 plus type
			n = 1 + 1<<(c-0xd4)
		case 0xdc:
			n, err = r.uintN(2)
			elems = 1
		case 0xdd:
			n, err = r.uintN(4)
			elems = 1
		case 0xde:
			n, err = r.uintN(2)
			elems = 2
		case 0xdf:
			n, err = r.uintN(4)
			elems = 2
		default:
			return fmt.Errorf("invalid type byte 0x%02x", c)
		}
		if err != nil {
			return err
		}
	}
	if elems == 0 {
		if n > uint64(r.remaining()) {
			return errShort
		}
		r.i += int(n)
		return nil
	}
	// Every element takes at least a byte, so this loop ends within the
	// input whatever n claims.
	for i := uint64(0); i < n*uint64(elems); i++ {
		if err := r.skipDepth(depth + 1); err != nil {
			return err
		}
	}
	return nil
}
