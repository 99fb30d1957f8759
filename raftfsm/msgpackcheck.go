package raftfsm

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/vmihailenco/msgpack/v5"
)

// unmarshal decodes msgpack from b, which may come from a peer or a
// damaged file, into v. It first checks that no string, binary, array or
// map in b claims more than the bytes that follow it: msgpack/v5 (v5.4.1)
// allocates an array's declared length up front whatever its alloc limit
// says, so ten bytes claiming half a billion elements would exhaust the
// memory.
func unmarshal(b []byte, v any) error {
	if err := checkMsgpack(b); err != nil {
		return err
	}
	return msgpack.Unmarshal(b, v)
}

var errMsgpackTruncated = errors.New("msgpack: truncated or claims more than its bytes")

// checkMsgpack walks one msgpack value at the start of b (without
// recursion) and fails if it is truncated, uses the reserved byte 0xc1, or
// has a length that exceeds the bytes left.
func checkMsgpack(b []byte) error {
	pending := 1 // values still to read
	for pending > 0 {
		if len(b) == 0 {
			return errMsgpackTruncated
		}
		pending--
		c := b[0]
		b = b[1:]
		var skip, values int // bytes to skip, values to read
		switch {
		case c <= 0x7f || c >= 0xe0 || c == 0xc0 || c == 0xc2 || c == 0xc3:
		case c >= 0x80 && c <= 0x8f:
			values = 2 * int(c&0x0f)
		case c >= 0x90 && c <= 0x9f:
			values = int(c & 0x0f)
		case c >= 0xa0 && c <= 0xbf:
			skip = int(c & 0x1f)
		case c == 0xc1:
			return fmt.Errorf("msgpack: reserved byte 0xc1")
		case c == 0xc4 || c == 0xd9: // bin8, str8
			n, err := lenField(&b, 1)
			if err != nil {
				return err
			}
			skip = n
		case c == 0xc5 || c == 0xda: // bin16, str16
			n, err := lenField(&b, 2)
			if err != nil {
				return err
			}
			skip = n
		case c == 0xc6 || c == 0xdb: // bin32, str32
			n, err := lenField(&b, 4)
			if err != nil {
				return err
			}
			skip = n
		case c == 0xc7 || c == 0xc8 || c == 0xc9: // ext8/16/32: length, type, data
			n, err := lenField(&b, 1<<(c-0xc7))
			if err != nil {
				return err
			}
			skip = n + 1
		case c == 0xca:
			skip = 4
		case c == 0xcb:
			skip = 8
		case c >= 0xcc && c <= 0xcf: // uint8..uint64
			skip = 1 << (c - 0xcc)
		case c >= 0xd0 && c <= 0xd3: // int8..int64
			skip = 1 << (c - 0xd0)
		case c >= 0xd4 && c <= 0xd8: // fixext 1..16: type, data
			skip = 1 + 1<<(c-0xd4)
		case c == 0xdc: // array16
			n, err := lenField(&b, 2)
			if err != nil {
				return err
			}
			values = n
		case c == 0xdd: // array32
			n, err := lenField(&b, 4)
			if err != nil {
				return err
			}
			values = n
		case c == 0xde: // map16
			n, err := lenField(&b, 2)
			if err != nil {
				return err
			}
			values = 2 * n
		case c == 0xdf: // map32
			n, err := lenField(&b, 4)
			if err != nil {
				return err
			}
			values = 2 * n
		}
		if skip > len(b) {
			return errMsgpackTruncated
		}
		b = b[skip:]
		// Every value takes at least one byte.
		if values > len(b)-pending {
			return errMsgpackTruncated
		}
		pending += values
	}
	return nil
}

// lenField reads a big-endian length of size bytes from *b.
func lenField(b *[]byte, size int) (int, error) {
	if len(*b) < size {
		return 0, errMsgpackTruncated
	}
	var n uint64
	switch size {
	case 1:
		n = uint64((*b)[0])
	case 2:
		n = uint64(binary.BigEndian.Uint16(*b))
	case 4:
		n = uint64(binary.BigEndian.Uint32(*b))
	}
	*b = (*b)[size:]
	if n > uint64(len(*b)) {
		return 0, errMsgpackTruncated
	}
	return int(n), nil
}
