package raftfsm

import (
	"bytes"
	"errors"
	"io"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
)

// FuzzSnapshotRestore: a snapshot stream of any content restores or is
// refused; it never panics, and a refused one leaves the state as it was.
func FuzzSnapshotRestore(f *testing.F) {
	src := openFSM(f, fsmConfig("/src", logcore.NewMemFS()))
	for i := 1; i <= 3; i++ {
		src.Apply(entry(f, uint64(i), int64(i), appendOp("a", "x", "y"), appendOp("b", "z")))
	}
	var sink memSink
	snap, err := src.Snapshot()
	must(f, err)
	must(f, snap.Persist(&sink))
	f.Add(sink.Bytes())
	f.Add(sink.Bytes()[:len(sink.Bytes())/2])
	f.Add([]byte{0, 0, 0, 1, 0x80})
	f.Fuzz(func(t *testing.T, b []byte) {
		dst := openFSM(t, fsmConfig("/dst", logcore.NewMemFS()))
		defer dst.Close()
		dst.Apply(entry(t, 1, 1, appendOp("kept", "v")))
		if err := dst.Restore(io.NopCloser(bytes.NewReader(b))); err != nil {
			if got := values(t, dst, "kept"); len(got) != 1 {
				t.Fatalf("a refused snapshot (%v) changed the state: %v", err, got)
			}
			return
		}
		for _, name := range dst.Logs() {
			values(t, dst, name) // every restored log reads back
		}
	})
}

// FuzzReadManifest: a linked snapshot's state file of any content decodes
// or is refused, never panics; one that decodes gives a stream size that is
// not negative.
func FuzzReadManifest(f *testing.F) {
	f.Add(encodeManifest(linkManifest{Header: snapshotHeader{Version: snapshotVersion, Logs: []snapshotLog{{Name: "a", Next: 3}}},
		Stores: [][]linkedStore{{{Name: "0-00000000000000000000.store", Size: 300}}}}))
	f.Add(append(append([]byte(nil), linkMagic...), 0, 0, 0, 2, 0x81, 0xa1))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := readManifest(bytes.NewReader(b))
		if err != nil {
			return
		}
		r, err := newLinkReader(t.TempDir(), m)
		if err == nil && r.size < 0 {
			t.Fatalf("stream size %d", r.size)
		}
	})
}

// FuzzApplyCommand: a Raft entry of any content is applied or answered
// with an error; Apply never panics.
func FuzzApplyCommand(f *testing.F) {
	ok, err := EncodeCommand(&Command{Time: 1, Ops: []Op{appendOp("a", "v"), {Kind: OpCreate, Log: "b", Settings: &LogSettings{}}, {Kind: OpDelete, Log: "b"}}})
	must(f, err)
	f.Add(ok)
	f.Add([]byte{0x82, 0xa1, 't', 0x01})
	f.Fuzz(func(t *testing.T, b []byte) {
		fsm := openFSM(t, fsmConfig("/f", logcore.NewMemFS()))
		defer fsm.Close()
		res := fsm.Apply(&raft.Log{Index: 1, Term: 1, Type: raft.LogCommand, Data: b})
		if err, isErr := res.(error); isErr && !errors.Is(err, ErrBadCommand) {
			t.Fatalf("Apply answered %v, want ErrBadCommand or results", err)
		}
	})
}

// FuzzParseFrame: a transport frame of any content parses or is refused;
// what parses re-encodes to the same bytes.
func FuzzParseFrame(f *testing.F) {
	f.Add(appendFrame(nil, frameData, 1, []byte("hello")))
	f.Add(appendFrame(nil, frameAck, 7, make([]byte, 8)))
	f.Add([]byte{0xff})
	f.Fuzz(func(t *testing.T, b []byte) {
		kind, seq, payload, ok := parseFrame(b)
		if !ok {
			return
		}
		if again := appendFrame(nil, kind, seq, payload); !bytes.Equal(again, b) {
			t.Fatalf("frame %x parses to (%v, %d, %x), which encodes to %x", b, kind, seq, payload, again)
		}
	})
}
