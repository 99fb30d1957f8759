package raftfsm

import (
	"bytes"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/vmihailenco/msgpack/v5"
)

func TestCheckMsgpackAcceptsWhatMsgpackWrites(t *testing.T) {
	big := make([]any, 70_000)
	for i := range big {
		big[i] = i
	}
	values := []any{
		nil, true, false, 0, 127, -1, -32, -33, 255, 256, 65535, 65536, int64(1) << 40, -(int64(1) << 40), uint64(1) << 63,
		float32(1.5), 2.5, "", strings.Repeat("s", 31), strings.Repeat("s", 32), strings.Repeat("s", 256), strings.Repeat("s", 70_000),
		[]byte{}, bytes.Repeat([]byte{1}, 300), bytes.Repeat([]byte{1}, 70_000),
		[]int{1, 2, 3}, make([]int, 16), big, map[string]any{"a": 1, "b": []any{"x", map[string]int{"c": 3}}},
		time.Unix(1, 2), time.Unix(1<<40, 0),
		Command{Time: 5, Ops: []Op{appendOp("a", "v", "w"), {Kind: OpCreate, Log: "b", Settings: &LogSettings{MaxSegmentBytes: 1 << 20}}}},
		snapshotHeader{Version: snapshotVersion, Logs: []snapshotLog{{Name: "a", Lowest: 1, Next: 9}}, Applied: 12},
	}
	for _, v := range values {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		if err := checkMsgpack(b); err != nil {
			t.Errorf("checkMsgpack(%T) = %v for %x...", v, err, b[:min(len(b), 16)])
		}
		if len(b) > 1 {
			if err := checkMsgpack(b[:len(b)-1]); err == nil {
				t.Errorf("checkMsgpack(%T cut by one byte) passed", v)
			}
		}
	}
}

func TestCheckMsgpackRefusesLengthsBeyondTheBytes(t *testing.T) {
	for name, b := range map[string][]byte{
		"array32 of 534M":      {0xdd, 0x1f, 0xd9, 0x3a, 0x3a, 0x2e},
		"fuzzer's command":     []byte("\x82\xa1o\xdd\x1f\xd9::."),
		"map16 of 65535":       {0xde, 0xff, 0xff, 0x01},
		"str32 of 4G":          {0xdb, 0xff, 0xff, 0xff, 0xff, 'a'},
		"bin8 past the end":    {0xc4, 0x05, 1, 2},
		"fixarray short":       {0x93, 0x01, 0x02},
		"reserved 0xc1":        {0x91, 0xc1},
		"uint64 cut":           {0xcf, 0, 0, 0},
		"empty":                {},
		"ext32 past the end":   {0xc9, 0, 0, 0, 9, 1},
		"nested claims beyond": {0x92, 0x92, 0x01},
	} {
		if err := checkMsgpack(b); !errors.Is(err, errMsgpackTruncated) && (err == nil || !strings.Contains(err.Error(), "0xc1")) {
			t.Errorf("%s: checkMsgpack = %v", name, err)
		}
		var c Command
		if err := unmarshal(b, &c); err == nil {
			t.Errorf("%s: unmarshal succeeded", name)
		}
	}
}
