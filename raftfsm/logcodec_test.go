package raftfsm

import (
	"encoding/hex"
	"errors"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
)

// TestEntryEncodingGolden pins version 1 of the entry encoding byte for byte,
// the time format included: a change here is a change of the on-disk format
// and needs a new version.
func TestEntryEncodingGolden(t *testing.T) {
	cases := []struct {
		name string
		log  raft.Log
		hex  string
	}{
		{"command with time, no extensions",
			raft.Log{Index: 7, Term: 300, Type: raft.LogCommand, Data: []byte("hi"),
				AppendedAt: time.Date(2025, 1, 2, 3, 4, 5, 6, time.FixedZone("X", 3600))},
			"01" + "00" + "01" + "ac02" + "000000006775f415" + "00000006" + "6869"},
		{"noop, no time, no data",
			raft.Log{Index: 1, Term: 1, Type: raft.LogNoop},
			"01" + "01" + "00" + "01"},
		{"configuration with extensions",
			raft.Log{Index: 2, Term: 2, Type: raft.LogConfiguration, Data: []byte{0xff}, Extensions: []byte("ex")},
			"01" + "05" + "02" + "02" + "02" + "6578" + "ff"},
		{"time before 1970",
			raft.Log{Index: 3, Term: 0, Type: raft.LogCommand, AppendedAt: time.Unix(-1, 999999999)},
			"01" + "00" + "01" + "00" + "ffffffffffffffff" + "3b9ac9ff"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			got := appendEntry(nil, &c.log)
			if h := hex.EncodeToString(got); h != c.hex {
				t.Fatalf("encoding\n got %s\nwant %s", h, c.hex)
			}
			if len(got) > entrySize(&c.log) {
				t.Fatalf("encoding is %d bytes, entrySize says at most %d", len(got), entrySize(&c.log))
			}
			var back raft.Log
			if err := decodeEntry(c.log.Index, got, &back); err != nil {
				t.Fatal(err)
			}
			if d := entryDiff(&back, &c.log); d != "" {
				t.Fatal(d)
			}
			if !c.log.AppendedAt.IsZero() && back.AppendedAt.Location() != time.UTC {
				t.Fatalf("decoded time is in %v, want UTC", back.AppendedAt.Location())
			}
		})
	}
}

// TestEntryDecodeRejects lists damaged encodings: each is ErrBadEntry and
// logcore.ErrCorrupt, never an entry.
func TestEntryDecodeRejects(t *testing.T) {
	cases := []struct {
		name string
		hex  string
	}{
		{"empty", ""},
		{"header cut short", "0100"},
		{"unknown version", "02000001"},
		{"version 0", "00000001"},
		{"unknown flag", "01000401"},
		{"no term", "010000"},
		{"term varint runs off", "01000080"},
		{"term varint too long", "010000" + "80808080808080808080" + "01"},
		{"time cut short", "010001010000000067760255"},
		{"nanoseconds out of range", "010001010000000067760255" + "3b9aca00"},
		{"extensions length runs off", "010002010a6578"},
		{"extensions length zero", "0100020100ff"},
		{"extensions length varint runs off", "01000201ff"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b, err := hex.DecodeString(c.hex)
			if err != nil {
				t.Fatal(err)
			}
			var l raft.Log
			err = decodeEntry(9, b, &l)
			if !errors.Is(err, ErrBadEntry) || !errors.Is(err, logcore.ErrCorrupt) {
				t.Fatalf("decodeEntry(%s) = %v, entry %+v", c.hex, err, l)
			}
		})
	}
}

// FuzzDecodeEntry: decoding never panics, and what decodes re-encodes to
// something that decodes to the same entry.
func FuzzDecodeEntry(f *testing.F) {
	for _, l := range []*raft.Log{testEntry(1, 1), testEntry(3, 2), testEntry(5, 9), {Index: 1}} {
		f.Add(appendEntry(nil, l))
	}
	f.Add([]byte{1, 0, 3, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2, 'a', 'b'})
	f.Fuzz(func(t *testing.T, b []byte) {
		var l raft.Log
		if err := decodeEntry(42, b, &l); err != nil {
			if !errors.Is(err, ErrBadEntry) {
				t.Fatalf("error %v is not ErrBadEntry", err)
			}
			return
		}
		var again raft.Log
		if err := decodeEntry(42, appendEntry(nil, &l), &again); err != nil {
			t.Fatalf("re-encoded entry does not decode: %v", err)
		}
		if d := entryDiff(&again, &l); d != "" {
			t.Fatal(d)
		}
	})
}

func TestRecordTime(t *testing.T) {
	cases := []struct {
		name string
		at   time.Time
		want int64
	}{
		{"unset: logcore stamps it", time.Time{}, 0},
		{"now-ish", time.Unix(1700000000, 5), 1700000000000000005},
		{"beyond UnixNano", time.Date(3000, 1, 1, 0, 0, 0, 0, time.UTC), 0},
		{"before UnixNano", time.Date(1000, 1, 1, 0, 0, 0, 0, time.UTC), 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := recordTime(&raft.Log{AppendedAt: c.at}); got != c.want {
				t.Fatalf("recordTime(%v) = %d, want %d", c.at, got, c.want)
			}
		})
	}
}
