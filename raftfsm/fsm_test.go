package raftfsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"slices"
	"strings"
	"syscall"
	"testing"

	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
)

func fsmConfig(dir string, fs logcore.FS) FSMConfig {
	lc := logcore.DefaultConfig()
	lc.Sync = logcore.SyncNeverUnsafe
	lc.MaxSegmentBytes = 8 << 10
	lc.MaxIndexBytes = 12 * 1024
	lc.FS = fs
	lc.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	return FSMConfig{Dir: dir, Log: lc, Logger: lc.Logger}
}

func openFSM(t testing.TB, cfg FSMConfig) *FSM {
	t.Helper()
	f, err := OpenFSM(cfg)
	if err != nil {
		t.Fatalf("OpenFSM: %v", err)
	}
	return f
}

// entry makes Raft entry index with one op per given op.
func entry(t testing.TB, index uint64, now int64, ops ...Op) *raft.Log {
	t.Helper()
	b, err := EncodeCommand(&Command{Time: now, Ops: ops})
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: b}
}

func appendOp(log string, values ...string) Op {
	op := Op{Kind: OpAppend, Log: log, Settings: &LogSettings{}}
	for _, v := range values {
		op.Records = append(op.Records, Record{Value: []byte(v), Headers: []Header{{Key: "x", Value: v}}})
	}
	return op
}

func results(t testing.TB, v any) []Result {
	t.Helper()
	rs, ok := v.([]Result)
	if !ok {
		t.Fatalf("Apply returned %T %v, want []Result", v, v)
	}
	return rs
}

// values returns a log's record values, and checks the stored headers.
func values(t testing.TB, f *FSM, name string) []string {
	t.Helper()
	l := f.Log(name)
	if l == nil {
		return nil
	}
	recs, err := l.ReadBatch(l.LowestOffset(), 1<<20, 1<<30)
	if err != nil {
		t.Fatalf("read %s: %v", name, err)
	}
	var out []string
	for _, r := range recs {
		out = append(out, string(r.Value))
	}
	return out
}

func TestFSMApply(t *testing.T) {
	f := openFSM(t, fsmConfig(t.TempDir(), logcore.OSFS{}))
	defer f.Close()
	const now = 1_700_000_000_000_000_000
	rs := results(t, f.Apply(entry(t, 1, now, appendOp("orders", "a", "b"), appendOp("users", "u"))))
	if rs[0].Err != nil || rs[0].First != 0 || rs[0].Count != 2 || rs[1].Err != nil || rs[1].Count != 1 {
		t.Fatalf("results %+v", rs)
	}
	rec, err := f.Log("orders").Read(1)
	if err != nil || rec.Time != now || string(rec.Value) != "b" {
		t.Fatalf("record = %+v, %v; want the leader's time", rec, err)
	}

	cases := []struct {
		name  string
		op    Op
		check func(t *testing.T, r Result)
	}{
		{"append to a missing log without settings", Op{Kind: OpAppend, Log: "nope", Records: []Record{{Value: []byte("x")}}}, func(t *testing.T, r Result) {
			if !errors.Is(r.Err, ErrUnknownLog) {
				t.Fatalf("err = %v, want ErrUnknownLog", r.Err)
			}
		}},
		{"bad log name", appendOp("../etc", "x"), func(t *testing.T, r Result) {
			if !errors.Is(r.Err, ErrBadCommand) {
				t.Fatalf("err = %v, want ErrBadCommand", r.Err)
			}
		}},
		{"expected offset holds", func() Op { o := appendOp("orders", "c"); e := uint64(2); o.Expected = &e; return o }(), func(t *testing.T, r Result) {
			if r.Err != nil || r.First != 2 {
				t.Fatalf("%+v", r)
			}
		}},
		{"expected offset stale", func() Op { o := appendOp("orders", "d"); e := uint64(2); o.Expected = &e; return o }(), func(t *testing.T, r Result) {
			var ee *ExpectedOffsetError
			if !errors.As(r.Err, &ee) || ee.Next != 3 || !errors.Is(r.Err, ErrExpectedOffset) {
				t.Fatalf("err = %v, want ExpectedOffsetError next 3", r.Err)
			}
		}},
		{"first with a msg id", func() Op { o := appendOp("orders", "m1", "m2"); o.MsgID = "id-1"; return o }(), func(t *testing.T, r Result) {
			if r.Err != nil || r.Duplicate || r.First != 3 {
				t.Fatalf("%+v", r)
			}
		}},
		{"same msg id again", func() Op { o := appendOp("orders", "zzz"); o.MsgID = "id-1"; return o }(), func(t *testing.T, r Result) {
			if r.Err != nil || !r.Duplicate || r.First != 3 || r.Count != 2 {
				t.Fatalf("%+v, want the first append's offsets", r)
			}
		}},
		{"delete", Op{Kind: OpDelete, Log: "users"}, func(t *testing.T, r Result) {
			if r.Err != nil || f.Log("users") != nil {
				t.Fatalf("%+v; log still there: %v", r, f.Log("users") != nil)
			}
		}},
		{"delete a missing log", Op{Kind: OpDelete, Log: "users"}, func(t *testing.T, r Result) {
			if !errors.Is(r.Err, ErrUnknownLog) {
				t.Fatalf("err = %v", r.Err)
			}
		}},
	}
	for i, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			tc.check(t, results(t, f.Apply(entry(t, uint64(2+i), now+int64(i), tc.op)))[0])
		})
	}
	if got := fmt.Sprint(values(t, f, "orders")); got != "[a b c m1 m2]" {
		t.Fatalf("orders = %s", got)
	}
	if err, ok := f.Apply(&raft.Log{Index: 100, Type: raft.LogCommand, Data: []byte{0xc1}}).(error); !ok || !errors.Is(err, ErrBadCommand) {
		t.Fatalf("garbage entry: %v", err)
	}
}

// TestFSMReplayAfterCrashNeverDuplicates is proglog's 3 -> 6 -> 9 bug: a
// restart replays Raft entries; the FSM must apply each exactly once, even
// when the crash lost some of what it had applied (its logs do not fsync).
func TestFSMReplayAfterCrashNeverDuplicates(t *testing.T) {
	for _, crash := range []bool{false, true} {
		t.Run(fmt.Sprintf("crash=%v", crash), func(t *testing.T) {
			mem := logcore.NewMemFS()
			cfg := fsmConfig("/fsm", mem)
			var entries []*raft.Log
			for i := 1; i <= 60; i++ {
				ops := []Op{appendOp("a", fmt.Sprint(i)), appendOp("b", fmt.Sprint(i), fmt.Sprint(i)+"'")}
				if i == 30 {
					ops = append(ops, Op{Kind: OpDelete, Log: "b"})
				}
				if i%7 == 0 {
					o := appendOp("a", "dup")
					o.MsgID = "same"
					ops = append(ops, o)
				}
				entries = append(entries, entry(t, uint64(i), int64(i), ops...))
			}
			f := openFSM(t, cfg)
			for i, e := range entries {
				f.Apply(e)
				if i == 39 {
					must(t, f.Sync()) // as a snapshot would
				}
			}
			want := fmt.Sprint(values(t, f, "a")) + fmt.Sprint(values(t, f, "b"))
			if crash {
				mem.Crash(logcore.CrashOptions{KeepUnsyncedPrefix: true, Seed: 3})
			} else {
				must(t, f.Close())
			}
			for round := range 3 {
				f = openFSM(t, cfg)
				for _, e := range entries { // Raft replays them all
					f.Apply(e)
				}
				if got := fmt.Sprint(values(t, f, "a")) + fmt.Sprint(values(t, f, "b")); got != want {
					t.Fatalf("round %d after replay:\n got %s\nwant %s", round, got, want)
				}
				must(t, f.Close())
			}
		})
	}
}

// memSink is a raft.SnapshotSink in memory.
type memSink struct {
	bytes.Buffer
	cancelled bool
}

func (s *memSink) ID() string    { return "test" }
func (s *memSink) Cancel() error { s.cancelled = true; return nil }
func (s *memSink) Close() error  { return nil }

func TestFSMSnapshotRestore(t *testing.T) {
	src := openFSM(t, fsmConfig(t.TempDir(), logcore.OSFS{}))
	defer src.Close()
	for i := 1; i <= 200; i++ {
		ops := []Op{appendOp("a", fmt.Sprint(i)), appendOp(fmt.Sprintf("l%d", i%3), "x")}
		if i == 150 {
			o := appendOp("a", "with-id")
			o.MsgID = "m-150"
			ops = append(ops, o)
		}
		src.Apply(entry(t, uint64(i), int64(i), ops...))
	}
	if got := src.AppliedIndex(); got != 200 {
		t.Fatalf("AppliedIndex after 200 entries = %d", got)
	}
	snap, err := src.Snapshot()
	must(t, err)
	// Appends after the cut are not in the snapshot.
	src.Apply(entry(t, 201, 201, appendOp("a", "after")))
	var sink memSink
	must(t, snap.Persist(&sink))
	if sink.cancelled {
		t.Fatal("snapshot cancelled")
	}

	dst := openFSM(t, fsmConfig(t.TempDir(), logcore.OSFS{}))
	defer dst.Close()
	dst.Apply(entry(t, 1, 1, appendOp("stale", "gone after restore")))
	must(t, dst.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))))
	if got := dst.AppliedIndex(); got != 200 {
		t.Fatalf("AppliedIndex after restoring the cut at 200 = %d", got)
	}
	if got := fmt.Sprint(dst.Logs()); got != "[a l0 l1 l2]" {
		t.Fatalf("logs after restore = %s", got)
	}
	srcA, dstA := values(t, src, "a"), values(t, dst, "a")
	if len(dstA) != 201 || fmt.Sprint(dstA) != fmt.Sprint(srcA[:201]) {
		t.Fatalf("restored a has %d records, want the 201 of the cut", len(dstA))
	}
	// Replaying entries the snapshot covers does nothing; the dedup id
	// came across; new entries apply.
	dst.Apply(entry(t, 150, 150, appendOp("a", "150 again")))
	o := appendOp("a", "retry")
	o.MsgID = "m-150"
	if r := results(t, dst.Apply(entry(t, 201, 201, o)))[0]; !r.Duplicate {
		t.Fatalf("dedup id lost in the snapshot: %+v", r)
	}
	dst.Apply(entry(t, 202, 202, appendOp("a", "new")))
	if got := values(t, dst, "a"); len(got) != 202 || got[201] != "new" {
		t.Fatalf("after restore and append: %d records, last %q", len(got), got[len(got)-1])
	}
	// A damaged snapshot is refused and leaves the state as it was.
	bad := append([]byte(nil), sink.Bytes()...)
	bad[len(bad)/2] ^= 0xFF
	if err := dst.Restore(io.NopCloser(bytes.NewReader(bad))); err == nil {
		t.Fatal("a damaged snapshot restored")
	}
	if got := values(t, dst, "a"); len(got) != 202 {
		t.Fatalf("a failed restore changed the state: %d records", len(got))
	}
}

func must(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

// An append's msg id is stored once, on its first record with the
// append's length, and the dedup table is rebuilt from that on open.
func TestFSMDedupSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	const now = 1_700_000_000_000_000_000
	f := openFSM(t, fsmConfig(dir, logcore.OSFS{}))
	o := appendOp("orders", "a", "b", "c")
	o.MsgID = "batch-1"
	one := appendOp("orders", "d")
	one.MsgID = "one-1"
	rs := results(t, f.Apply(entry(t, 1, now, o, one)))
	if rs[0].First != 0 || rs[0].Count != 3 || rs[1].First != 3 {
		t.Fatalf("results %+v", rs)
	}
	hdr := func(off uint64) map[string]string {
		r, err := f.Log("orders").Read(off)
		if err != nil {
			t.Fatal(err)
		}
		m := map[string]string{}
		for _, h := range r.Headers {
			m[h.Key] = h.Value
		}
		return m
	}
	if h := hdr(0); h[MsgIDHeader] != "batch-1" || h[MsgCountHeader] != "3" {
		t.Errorf("first record's headers %v", h)
	}
	if h := hdr(1); h[MsgIDHeader] != "" || h[MsgCountHeader] != "" {
		t.Errorf("second record's headers %v: the id belongs on the first only", h)
	}
	if h := hdr(3); h[MsgIDHeader] != "one-1" || h[MsgCountHeader] != "" {
		t.Errorf("single record's headers %v", h)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f = openFSM(t, fsmConfig(dir, logcore.OSFS{}))
	defer f.Close()
	again := appendOp("orders", "x")
	again.MsgID = "batch-1"
	again1 := appendOp("orders", "y")
	again1.MsgID = "one-1"
	rs = results(t, f.Apply(entry(t, 2, now+1, again, again1)))
	if !rs[0].Duplicate || rs[0].First != 0 || rs[0].Count != 3 || !rs[1].Duplicate || rs[1].First != 3 || rs[1].Count != 1 {
		t.Fatalf("after reopen: %+v, want duplicates of [0,3) and [3,4)", rs)
	}
}

// Covers: an FSM covers the snapshots it wrote and the ones it restored,
// durably (across a reopen); a fresh one covers none but an empty cut.
func TestFSMCovers(t *testing.T) {
	dir := t.TempDir()
	src := openFSM(t, fsmConfig(dir, logcore.OSFS{}))
	for i := 1; i <= 20; i++ {
		src.Apply(entry(t, uint64(i), int64(i), appendOp("a", fmt.Sprint(i))))
	}
	snap, err := src.Snapshot()
	must(t, err)
	var sink memSink
	must(t, snap.Persist(&sink))
	applied, err := SnapshotApplied(bytes.NewReader(sink.Bytes()))
	if err != nil || applied != 20 {
		t.Fatalf("SnapshotApplied = %d, %v; want 20", applied, err)
	}
	if !src.Covers(applied) || src.Covers(applied+1) {
		t.Fatalf("the FSM that wrote the snapshot at 20: Covers(20) %v, Covers(21) %v", src.Covers(applied), src.Covers(applied+1))
	}
	must(t, src.Close())
	src = openFSM(t, fsmConfig(dir, logcore.OSFS{}))
	defer src.Close()
	if !src.Covers(applied) {
		t.Fatal("Covers forgotten across a reopen")
	}

	dst := openFSM(t, fsmConfig(t.TempDir(), logcore.OSFS{}))
	defer dst.Close()
	if dst.Covers(applied) || !dst.Covers(0) {
		t.Fatal("a fresh FSM covers a snapshot it never had, or not an empty one")
	}
	must(t, dst.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))))
	if !dst.Covers(applied) {
		t.Fatal("a restored FSM does not cover its snapshot")
	}
}

// A full disk on a replica: the append fails before writing (a definite
// logcore error, the logcore log itself goes on), the FSM stops applying
// to that log, and refuses snapshots, which would claim entries the log
// lacks and let Raft compact them away; a restart re-applies them.
func TestFSMDiskFullRefusesSnapshots(t *testing.T) {
	mem := logcore.NewMemFS()
	ffs := logcore.NewFaultFS(mem)
	cfg := fsmConfig("/fsm", ffs)
	f := openFSM(t, cfg)
	const now = 1_700_000_000_000_000_000
	if rs := results(t, f.Apply(entry(t, 1, now, appendOp("a", "first")))); rs[0].Err != nil {
		t.Fatal(rs[0].Err)
	}
	// The first segment's index space is reserved whole (MaxIndexBytes
	// is small here); the next segment's cannot be.
	ffs.SetHook(logcore.Rule{Ops: []logcore.Op{logcore.OpWriteAt}, Suffix: ".index", Fault: logcore.Fault{Err: syscall.ENOSPC}}.Hook())
	var want []string
	idx := uint64(2)
	for ; ; idx++ {
		v := fmt.Sprintf("%04d-%s", idx, bytes.Repeat([]byte("x"), 200))
		rs := results(t, f.Apply(entry(t, idx, now, appendOp("a", v))))
		if rs[0].Err != nil {
			if !errors.Is(rs[0].Err, ErrStorage) || !strings.Contains(rs[0].Err.Error(), "no space left on device") {
				t.Fatalf("apply on a full disk: %v", rs[0].Err)
			}
			break
		}
		want = append(want, v)
		if idx > 1000 {
			t.Fatal("no roll to a new segment after 1000 entries")
		}
	}
	if _, ok := f.Failed()["a"]; !ok {
		t.Fatalf("Failed() = %v, want log a", f.Failed())
	}
	if _, err := f.Snapshot(); err == nil || !strings.Contains(err.Error(), "log a failed") {
		t.Fatalf("Snapshot with a failed log = %v, want an error", err)
	}
	// Room again, restart: Raft replays the entries after the last
	// snapshot (none here), the FSM re-applies what the log lacks.
	ffs.SetHook(nil)
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	f = openFSM(t, cfg)
	defer f.Close()
	for i := uint64(2); i <= idx; i++ {
		v := fmt.Sprintf("%04d-%s", i, bytes.Repeat([]byte("x"), 200))
		results(t, f.Apply(entry(t, i, now, appendOp("a", v))))
		if i == idx {
			want = append(want, v)
		}
	}
	if got := values(t, f, "a"); !slices.Equal(got, append([]string{"first"}, want...)) {
		t.Fatalf("after the restart the log holds %d records, want %d", len(got), len(want)+1)
	}
	if _, err := f.Snapshot(); err != nil {
		t.Fatalf("Snapshot after the repair: %v", err)
	}
}

// An append the log's own settings refuse (a record larger than its
// segments) is refused the same way on every replica: an error for the op,
// not a failed log (it used to fail the log on every replica).
func TestFSMRecordTooLargeForTheLog(t *testing.T) {
	f := openFSM(t, fsmConfig(t.TempDir(), logcore.OSFS{}))
	defer f.Close()
	const now = 1_700_000_000_000_000_000
	small := Op{Kind: OpCreate, Log: "small", Settings: &LogSettings{MaxSegmentBytes: 1024}}
	if rs := results(t, f.Apply(entry(t, 1, now, small))); rs[0].Err != nil {
		t.Fatal(rs[0].Err)
	}
	rs := results(t, f.Apply(entry(t, 2, now, appendOp("small", strings.Repeat("x", 2000)))))
	if !errors.Is(rs[0].Err, logcore.ErrRecordTooLarge) || errors.Is(rs[0].Err, ErrStorage) {
		t.Fatalf("append of a record larger than a segment: %v, want ErrRecordTooLarge", rs[0].Err)
	}
	if len(f.Failed()) != 0 {
		t.Fatalf("Failed() = %v after a refused record", f.Failed())
	}
	if rs := results(t, f.Apply(entry(t, 3, now, appendOp("small", "fits")))); rs[0].Err != nil || rs[0].First != 0 {
		t.Fatalf("append after the refused one: %+v", rs[0])
	}
}

// A log whose creation fails on this replica (a full disk) is marked
// failed there: a later op must not create it at a later Raft index, which
// would give its records other offsets than on the other replicas.
func TestFSMCreateFailureMarksTheLogFailed(t *testing.T) {
	ffs := logcore.NewFaultFS(logcore.NewMemFS())
	f := openFSM(t, fsmConfig("/fsm", ffs))
	defer f.Close()
	const now = 1_700_000_000_000_000_000
	ffs.SetHook(logcore.Rule{Ops: []logcore.Op{logcore.OpMkdirAll}, Suffix: "/logs/late", Fault: logcore.Fault{Err: syscall.ENOSPC}}.Hook())
	rs := results(t, f.Apply(entry(t, 1, now, appendOp("late", "a"))))
	if !errors.Is(rs[0].Err, ErrStorage) {
		t.Fatalf("append creating a log on a full disk: %v, want ErrStorage", rs[0].Err)
	}
	ffs.SetHook(nil)
	rs = results(t, f.Apply(entry(t, 2, now, appendOp("late", "b"))))
	if !errors.Is(rs[0].Err, ErrStorage) || f.Log("late") != nil {
		t.Fatalf("a later append created the log at a later index: %+v", rs[0])
	}
	if _, ok := f.Failed()["late"]; !ok {
		t.Fatalf("Failed() = %v, want late", f.Failed())
	}
}
