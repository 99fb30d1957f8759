package raftfsm

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/logcore"
)

// Tests of the rules that keep replicas alike (CommandVersion 1 entries, the
// leader's settings in them) and of the FSM's recovery from a crash inside
// an append, a failed delete and a failed restore.

// leaderDedup is the dedup settings leaderEntry stamps, as a leader does.
var leaderDedup = dedupSettings{Window: (2 * time.Minute).Nanoseconds(), Max: 1000}

// leaderEntry makes Raft entry index as a current leader does: version 1
// rules and its dedup settings.
func leaderEntry(t testing.TB, index uint64, now int64, ops ...Op) *raft.Log {
	t.Helper()
	return leaderEntryDedup(t, index, now, leaderDedup, ops...)
}

func leaderEntryDedup(t testing.TB, index uint64, now int64, d dedupSettings, ops ...Op) *raft.Log {
	t.Helper()
	b, err := EncodeCommand(&Command{Version: CommandVersion, Time: now, Ops: ops, DedupWindow: d.Window, DedupMax: d.Max})
	if err != nil {
		t.Fatal(err)
	}
	return &raft.Log{Index: index, Term: 1, Type: raft.LogCommand, Data: b}
}

// withSettings returns op with concrete settings, as a leader sends them.
func withSettings(op Op, s LogSettings) Op {
	op.Settings = &s
	return op
}

// leaderAppend is appendOp with settings a leader fills in.
func leaderAppend(log string, values ...string) Op {
	return withSettings(appendOp(log, values...), LogSettings{MaxSegmentBytes: 8 << 10})
}

// bigValues returns n values of about size bytes, each distinct.
func bigValues(n, size int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%03d-%s", i, strings.Repeat("x", size))
	}
	return out
}

// A crash that keeps a prefix of an append spanning segments (entries made
// before CommandVersion 1 could be larger than a segment; sealed segments
// are fsynced when they roll, the active one's records are lost) leaves
// records without the Raft index header at the log's end. On open they are
// cut, back to the last record that has one, and Raft's replay appends the
// op again whole: no record twice, the same offsets as before the crash.
func TestFSMCrashInsideAnAppendSpanningSegments(t *testing.T) {
	cases := []struct {
		name string
		// before are applied and covered by a snapshot (Persist fsyncs
		// the logs; Raft replays only the entries after it); after are
		// applied, then the crash, then replayed.
		before, after [][]Op
	}{
		{"after an append a snapshot covers",
			[][]Op{{appendOp("a", "first", "second")}},
			[][]Op{{appendOp("a", bigValues(20, 500)...)}}},
		{"after an append not yet in a snapshot", nil,
			[][]Op{{appendOp("a", "first", "second")}, {appendOp("a", bigValues(20, 500)...)}}},
		{"the log's first append", nil,
			[][]Op{{appendOp("a", bigValues(20, 500)...)}}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			mem := logcore.NewMemFS()
			cfg := fsmConfig("/fsm", mem) // 8 KiB segments
			f := openFSM(t, cfg)
			index := uint64(0)
			for _, ops := range tc.before {
				index++
				f.Apply(entry(t, index, int64(index), ops...))
			}
			if len(tc.before) > 0 {
				snap, err := f.Snapshot()
				must(t, err)
				must(t, snap.Persist(&memSink{}))
				snap.Release()
			}
			first := index + 1
			apply := func() {
				for i, ops := range tc.after {
					f.Apply(entry(t, first+uint64(i), int64(first)+int64(i), ops...))
				}
			}
			apply()
			want := values(t, f, "a")
			if segs := infoOf(t, f.Log("a")).Segments; segs < 3 {
				t.Fatalf("the append spans %d segments; the test needs 3", segs)
			}
			mem.Crash(logcore.CrashOptions{})
			f = openFSM(t, cfg)
			defer f.Close()
			if failed := f.Failed(); len(failed) != 0 {
				t.Fatalf("failed logs after the crash: %v", failed)
			}
			apply() // Raft replays the entries after the snapshot
			if got := values(t, f, "a"); fmt.Sprint(got) != fmt.Sprint(want) {
				t.Fatalf("after the crash and replay the log holds %d records, want the %d it held before", len(got), len(want))
			}
		})
	}
}

// If retention removed every record that carries the header, and a crash
// cut the append that followed, the FSM cannot tell where that append
// began: the log is out of service on this replica instead of guessed at.
func TestFSMLogWithoutAnyPositionIsFailedOnOpen(t *testing.T) {
	mem := logcore.NewMemFS()
	cfg := fsmConfig("/fsm", mem)
	f := openFSM(t, cfg)
	// The first append takes most of the first segment; the second, ten
	// minutes later (retention keeps the dedup window before the newest
	// record), starts with a record too large for the rest of it, so it
	// begins a segment of its own and spans the next ones.
	f.Apply(entry(t, 1, 1, withSettings(appendOp("a", bigValues(3, 1000)...), LogSettings{RetentionSegments: 3})))
	second := append([]string{strings.Repeat("y", 3000)}, bigValues(30, 1000)...)
	f.Apply(entry(t, 2, 1+int64(10*time.Minute), appendOp("a", second...)))
	must(t, f.Log("a").ApplyRetention())
	if f.Log("a").LowestOffset() == 0 {
		t.Fatal("retention kept the first segment; the test needs it removed")
	}
	mem.Crash(logcore.CrashOptions{})
	f = openFSM(t, cfg)
	defer f.Close()
	if err := f.FailedErr("a"); !errors.Is(err, errNoPosition) {
		t.Fatalf("FailedErr(a) = %v, want errNoPosition", err)
	}
	if r := results(t, f.Apply(entry(t, 2, 2, appendOp("a", "x"))))[0]; !errors.Is(r.Err, ErrStorage) {
		t.Fatalf("append to the failed log: %+v, want ErrStorage", r)
	}
	if _, err := f.Snapshot(); err == nil {
		t.Fatal("snapshot taken with a failed log")
	}
}

func infoOf(t testing.TB, l *logcore.Log) logcore.Info {
	t.Helper()
	in, err := l.Info()
	if err != nil {
		t.Fatal(err)
	}
	return in
}

// Under version 1 rules an append whose records, as stored, take more than
// the log's segment is refused on every replica, so that each append stays
// one batch in one segment. AppendBytes is the measure, exactly: an append
// of that many bytes is taken, and fits in one segment.
func TestFSMRefusesAnAppendLargerThanASegment(t *testing.T) {
	const seg = 8 << 10
	settings := LogSettings{MaxSegmentBytes: seg}
	sized := func(n int64) Op {
		op := withSettings(appendOp("a", ""), settings)
		op.MsgID = "id"
		op.Records[0].Value = bytes.Repeat([]byte("v"), int(n-AppendBytes(&op)))
		if got := AppendBytes(&op); got != n {
			t.Fatalf("AppendBytes = %d, want %d", got, n)
		}
		return op
	}
	f := openFSM(t, fsmConfig(t.TempDir(), logcore.OSFS{}))
	defer f.Close()
	f.Apply(leaderEntry(t, 1, 1, withSettings(appendOp("a", "first"), settings)))

	r := results(t, f.Apply(leaderEntry(t, 2, 2, sized(seg+1))))[0]
	if !errors.Is(r.Err, ErrTooLarge) {
		t.Fatalf("append of segment+1 bytes: %+v, want ErrTooLarge", r)
	}
	many := withSettings(appendOp("a", bigValues(20, 1000)...), settings)
	if r := results(t, f.Apply(leaderEntry(t, 3, 3, many)))[0]; !errors.Is(r.Err, ErrTooLarge) {
		t.Fatalf("append of 20 KiB in records of 1 KiB: %+v, want ErrTooLarge", r)
	}
	if got := f.Log("a").NextOffset(); got != 1 || len(f.Failed()) != 0 {
		t.Fatalf("after refused appends: next offset %d, failed %v; want 1 and none", got, f.Failed())
	}
	r = results(t, f.Apply(leaderEntry(t, 4, 4, sized(seg))))[0]
	if r.Err != nil || r.First != 1 {
		t.Fatalf("append of exactly a segment: %+v", r)
	}
	if in := infoOf(t, f.Log("a")); in.Segments != 2 {
		t.Fatalf("a full-segment append is in %d segments with the first record, want 2 (a segment of its own)", in.Segments)
	}

	// An entry before version 1 is applied as it always was.
	if r := results(t, f.Apply(entry(t, 5, 5, many)))[0]; r.Err != nil || r.Count != 20 {
		t.Fatalf("version 0 append larger than a segment: %+v, want it applied", r)
	}
}

// The leader merges plain appends into one op within half a segment by the
// sum of their AppendBytes: the merged op must not measure more.
func TestAppendBytesOfMergedAppendsIsAtMostTheSum(t *testing.T) {
	parts := []Op{appendOp("a", "one"), appendOp("a", "two", "three"), appendOp("a", strings.Repeat("z", 300))}
	var sum int64
	var merged Op
	merged.Kind, merged.Log = OpAppend, "a"
	for i := range parts {
		sum += AppendBytes(&parts[i])
		merged.Records = append(merged.Records, parts[i].Records...)
	}
	if got := AppendBytes(&merged); got > sum {
		t.Fatalf("merged op measures %d bytes, more than its parts' %d", got, sum)
	}
}

// A version 1 append fits in a segment, so logcore keeps it whole across a
// crash: replay after any crash gives the records applied before it.
func TestFSMCrashKeepsVersion1AppendsWhole(t *testing.T) {
	for seed := int64(1); seed <= 20; seed++ {
		mem := logcore.NewMemFS()
		cfg := fsmConfig("/fsm", mem)
		f := openFSM(t, cfg)
		settings := LogSettings{MaxSegmentBytes: 8 << 10}
		var entries []*raft.Log
		for i := 1; i <= 12; i++ {
			vals := bigValues(1+i%5, 600) // up to 5 records of ~1.2 KiB (value and header): within a segment
			entries = append(entries, leaderEntry(t, uint64(i), int64(i), withSettings(appendOp("a", vals...), settings)))
		}
		for _, e := range entries {
			if r := results(t, f.Apply(e))[0]; r.Err != nil {
				t.Fatal(r.Err)
			}
		}
		want := fmt.Sprint(values(t, f, "a"))
		mem.Crash(logcore.CrashOptions{KeepUnsyncedPrefix: true, Seed: seed})
		f = openFSM(t, cfg)
		for _, e := range entries {
			f.Apply(e)
		}
		if got := fmt.Sprint(values(t, f, "a")); got != want {
			t.Fatalf("seed %d: after the crash and replay the log differs (%d records, want %d)", seed, strings.Count(got, "-"), strings.Count(want, "-"))
		}
		must(t, f.Close())
	}
}

// A log's settings are the entry's, not the applying node's: nodes with
// different segment sizes and defaults store and refuse alike. Settings
// without a segment size (which each node would fill in from its own
// configuration) are a bad command under version 1 rules; settings no
// node could use are a bad command, not a failed log.
func TestFSMLogSettingsDoNotDependOnTheNode(t *testing.T) {
	type outcome struct {
		results []string
		config  string
		failed  int
	}
	run := func(localSegment int64, defaults LogSettings) outcome {
		cfg := fsmConfig(t.TempDir(), logcore.OSFS{})
		cfg.Log.MaxSegmentBytes = localSegment
		cfg.Defaults = defaults
		f := openFSM(t, cfg)
		defer f.Close()
		concrete := LogSettings{MaxSegmentBytes: 16 << 10, RetentionSegments: 3, RetentionBytes: 1 << 20}
		ops := []Op{
			appendOp("zero", "x"), // &LogSettings{}: no segment size
			{Kind: OpCreate, Log: "nil"},
			withSettings(appendOp("neg", "x"), LogSettings{MaxSegmentBytes: 16 << 10, RetentionBytes: -1}),
			withSettings(appendOp("tiny", "x"), LogSettings{MaxSegmentBytes: 10}),
			// appendOp stores each value twice (value and header)
			withSettings(appendOp("a", strings.Repeat("v", 10<<10)), concrete),
			withSettings(appendOp("a", strings.Repeat("v", 6<<10)), concrete),
		}
		var o outcome
		for i, op := range ops {
			r := results(t, f.Apply(leaderEntry(t, uint64(i+1), int64(i+1), op)))[0]
			o.results = append(o.results, fmt.Sprintf("%v/%d/%d", errKind(r.Err), r.First, r.Count))
		}
		c := f.Log("a").Config()
		o.config = fmt.Sprintf("%d %+v", c.MaxSegmentBytes, c.Retention)
		o.failed = len(f.Failed())
		for _, name := range []string{"zero", "nil", "neg", "tiny"} {
			if f.Log(name) != nil {
				t.Errorf("log %s created from bad settings", name)
			}
		}
		return o
	}
	a := run(8<<10, LogSettings{})
	b := run(64<<10, LogSettings{MaxSegmentBytes: 32 << 10, RetentionSegments: 9})
	want := "[bad command/0/0 bad command/0/0 bad command/0/0 bad command/0/0 too large/0/0 ok/0/1]"
	if fmt.Sprint(a.results) != want || fmt.Sprint(b.results) != want {
		t.Fatalf("results:\n node 1 %v\n node 2 %v\n want   %s", a.results, b.results, want)
	}
	if a.config != b.config || !strings.HasPrefix(a.config, "16384 ") {
		t.Fatalf("log a's configuration: %s on one node, %s on the other; want the entry's", a.config, b.config)
	}
	if a.failed != 0 || b.failed != 0 {
		t.Fatalf("failed logs: %d and %d, want none", a.failed, b.failed)
	}
}

// Settings without a segment size in an entry made before version 1 keep
// their old meaning (the node's own segment size), and bad ones are a bad
// command there too.
func TestFSMVersion0SettingsKeepTheirMeaning(t *testing.T) {
	cfg := fsmConfig(t.TempDir(), logcore.OSFS{})
	cfg.Log.MaxSegmentBytes = 64 << 10
	f := openFSM(t, cfg)
	defer f.Close()
	if r := results(t, f.Apply(entry(t, 1, 1, appendOp("a", "x"))))[0]; r.Err != nil {
		t.Fatal(r.Err)
	}
	if got := f.Log("a").Config().MaxSegmentBytes; got != 64<<10 {
		t.Fatalf("segment size %d, want the node's 64 KiB", got)
	}
	r := results(t, f.Apply(entry(t, 2, 2, Op{Kind: OpCreate, Log: "b", Settings: &LogSettings{RetentionSegments: -1}})))[0]
	if !errors.Is(r.Err, ErrBadCommand) || f.FailedErr("b") != nil {
		t.Fatalf("create with negative retention: %+v, failed %v; want ErrBadCommand and no failed log", r, f.FailedErr("b"))
	}
	if r := results(t, f.Apply(entry(t, 3, 3, Op{Kind: OpCreate, Log: "b", Settings: &LogSettings{}})))[0]; r.Err != nil || f.Log("b") == nil {
		t.Fatalf("create after a bad one: %+v", r)
	}
}

func errKind(err error) string {
	switch {
	case err == nil:
		return "ok"
	case errors.Is(err, ErrBadCommand):
		return "bad command"
	case errors.Is(err, ErrTooLarge):
		return "too large"
	case errors.Is(err, ErrStorage):
		return "storage"
	}
	return err.Error()
}

// The dedup window and bound are the leader's, from each command: nodes
// configured differently answer a retry alike, also after a restart and
// after restoring a snapshot (which rebuild their tables from the records
// over the leader's window, not their own). A command that carries none
// uses the node's own.
func TestFSMDedupSettingsComeFromTheLeader(t *testing.T) {
	const minute = int64(time.Minute)
	const t0 = 1_700_000_000 * int64(time.Second)
	retry := func() Op { o := leaderAppend("a", "retry"); o.MsgID = "m"; return o }
	first := func() Op { o := leaderAppend("a", "first"); o.MsgID = "m"; return o }

	t.Run("nodes configured differently", func(t *testing.T) {
		for _, tc := range []struct {
			after int64
			dup   bool
		}{{minute + minute/2, true}, {3 * minute, false}} {
			var got []bool
			for _, local := range []time.Duration{time.Minute, 10 * time.Minute} {
				cfg := fsmConfig(t.TempDir(), logcore.OSFS{})
				cfg.DedupWindow = local
				f := openFSM(t, cfg)
				f.Apply(leaderEntry(t, 1, t0, first()))
				r := results(t, f.Apply(leaderEntry(t, 2, t0+tc.after, retry())))[0]
				got = append(got, r.Duplicate)
				must(t, f.Close())
			}
			if got[0] != tc.dup || got[1] != tc.dup {
				t.Fatalf("retry %v later under the leader's 2 min window: duplicate on the nodes %v, want %v", time.Duration(tc.after), got, tc.dup)
			}
		}
	})

	// A node whose own window (1 min) is shorter than the leader's (5 min).
	long := dedupSettings{Window: 5 * minute, Max: 1000}
	shortCfg := func(dir string) FSMConfig {
		cfg := fsmConfig(dir, logcore.OSFS{})
		cfg.DedupWindow = time.Minute
		return cfg
	}
	history := func(t *testing.T, f *FSM) {
		f.Apply(leaderEntryDedup(t, 1, t0, long, first()))
		f.Apply(leaderEntryDedup(t, 2, t0+2*minute, long, leaderAppend("a", "later")))
	}

	t.Run("after a restart", func(t *testing.T) {
		cfg := shortCfg(t.TempDir())
		f := openFSM(t, cfg)
		history(t, f)
		must(t, f.Close())
		f = openFSM(t, cfg)
		defer f.Close()
		if r := results(t, f.Apply(leaderEntryDedup(t, 3, t0+3*minute, long, retry())))[0]; !r.Duplicate || r.First != 0 {
			t.Fatalf("retry 3 min later under a 5 min window after a restart: %+v, want the duplicate of offset 0", r)
		}
	})

	t.Run("after restoring a snapshot", func(t *testing.T) {
		src := openFSM(t, shortCfg(t.TempDir()))
		defer src.Close()
		history(t, src)
		snap, err := src.Snapshot()
		must(t, err)
		var sink memSink
		must(t, snap.Persist(&sink))
		snap.Release()
		dst := openFSM(t, shortCfg(t.TempDir()))
		defer dst.Close()
		must(t, dst.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))))
		if r := results(t, dst.Apply(leaderEntryDedup(t, 3, t0+3*minute, long, retry())))[0]; !r.Duplicate {
			t.Fatalf("retry 3 min later under a 5 min window after a restore: %+v, want a duplicate", r)
		}
	})

	t.Run("commands without them use the node's own", func(t *testing.T) {
		cfg := fsmConfig(t.TempDir(), logcore.OSFS{})
		cfg.DedupWindow = 10 * time.Minute
		f := openFSM(t, cfg)
		defer f.Close()
		f.Apply(entry(t, 1, t0, first()))
		if r := results(t, f.Apply(entry(t, 2, t0+3*minute, retry())))[0]; !r.Duplicate {
			t.Fatalf("version 0 retry within the node's 10 min window: %+v, want a duplicate", r)
		}
	})
}

// A delete that cannot rename the log away (or make the rename durable)
// leaves the log failed on this replica: it is not created again on top of
// its old segments, no snapshot is taken, and a restart replays the delete.
// Only a failure to empty the trash, after the delete happened, is no
// failure of the delete.
func TestFSMFailedDelete(t *testing.T) {
	cases := []struct {
		name   string
		rule   logcore.Rule
		failed bool
	}{
		{"trash directory not made", logcore.Rule{Ops: []logcore.Op{logcore.OpMkdirAll}, Suffix: "trash"}, true},
		{"rename fails", logcore.Rule{Ops: []logcore.Op{logcore.OpRename}, Suffix: "/fsm/logs/a"}, true},
		{"rename not made durable", logcore.Rule{Ops: []logcore.Op{logcore.OpSyncDir}, Suffix: "/fsm/logs"}, true},
		{"trash not emptied", logcore.Rule{Ops: []logcore.Op{logcore.OpRemoveAll}, Suffix: "trash"}, false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			ffs := logcore.NewFaultFS(logcore.NewMemFS())
			cfg := fsmConfig("/fsm", ffs)
			f := openFSM(t, cfg)
			f.Apply(entry(t, 1, 1, appendOp("a", "x", "y", "z")))
			rule := tc.rule
			rule.Count, rule.Fault = 1, logcore.Fault{Err: syscall.ENOSPC}
			ffs.SetHook(rule.Hook())
			del := entry(t, 2, 2, Op{Kind: OpDelete, Log: "a"})
			r := results(t, f.Apply(del))[0]
			again := results(t, f.Apply(entry(t, 3, 3, appendOp("a", "new"))))[0]
			_, snapErr := f.Snapshot()
			if !tc.failed {
				if r.Err != nil || f.FailedErr("a") != nil || again.Err != nil || again.First != 0 || snapErr != nil {
					t.Fatalf("delete %+v (failed %v), then append %+v, snapshot %v; want the delete done and the log new at 0", r, f.FailedErr("a"), again, snapErr)
				}
				return
			}
			if !errors.Is(r.Err, ErrStorage) || f.FailedErr("a") == nil || f.Log("a") != nil {
				t.Fatalf("delete: %+v, failed %v; want ErrStorage and the log failed", r, f.FailedErr("a"))
			}
			if !errors.Is(again.Err, ErrStorage) {
				t.Fatalf("append after the failed delete: %+v, want ErrStorage (not a log on the old files)", again)
			}
			if snapErr == nil {
				t.Fatal("snapshot taken with a failed delete")
			}
			// A restart (the fault gone) replays the entries after the
			// last snapshot: the delete, then the append.
			must(t, f.Close())
			ffs.SetHook(nil)
			f = openFSM(t, cfg)
			defer f.Close()
			f.Apply(del)
			if r := results(t, f.Apply(entry(t, 3, 3, appendOp("a", "new"))))[0]; r.Err != nil || r.First != 0 {
				t.Fatalf("append after the replayed delete: %+v, want offset 0", r)
			}
		})
	}
}

// A Restore that fails after it closed the logs leaves the FSM broken: no
// snapshot, and entries change nothing, until a restart finishes the
// restore (or a Restore completes).
func TestFSMRestoreFailureIsSticky(t *testing.T) {
	src := openFSM(t, fsmConfig(t.TempDir(), logcore.OSFS{}))
	defer src.Close()
	src.Apply(entry(t, 10, 10, appendOp("s", "1", "2")))
	snap, err := src.Snapshot()
	must(t, err)
	var sink memSink
	must(t, snap.Persist(&sink))
	snap.Release()

	ffs := logcore.NewFaultFS(logcore.NewMemFS())
	cfg := fsmConfig("/fsm", ffs)
	f := openFSM(t, cfg)
	f.Apply(entry(t, 1, 1, appendOp("old", "x")))
	// The swap's first rename (logs -> logs.old) fails.
	ffs.SetHook(logcore.Rule{Ops: []logcore.Op{logcore.OpRename}, Suffix: "/fsm/logs", Count: 1, Fault: logcore.Fault{Err: syscall.EIO}}.Hook())
	if err := f.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))); err == nil {
		t.Fatal("restore succeeded despite the failed swap")
	}
	if _, err := f.Snapshot(); err == nil {
		t.Fatal("snapshot taken after a failed restore")
	}
	applied := f.AppliedIndex()
	rs := results(t, f.Apply(entry(t, 11, 11, appendOp("new", "y"))))
	if !errors.Is(rs[0].Err, ErrStorage) || f.AppliedIndex() != applied || f.Log("new") != nil {
		t.Fatalf("apply after a failed restore: %+v, applied %d (was %d), log created %v; want ErrStorage and nothing changed",
			rs[0], f.AppliedIndex(), applied, f.Log("new") != nil)
	}

	t.Run("a restart finishes the restore", func(t *testing.T) {
		g := openFSM(t, cfg)
		defer g.Close()
		if got := fmt.Sprint(g.Logs(), values(t, g, "s")); got != "[s] [1 2]" {
			t.Fatalf("after a restart: %s, want the snapshot's logs", got)
		}
	})
	t.Run("a later restore makes it whole", func(t *testing.T) {
		must(t, f.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))))
		if _, err := f.Snapshot(); err != nil {
			t.Fatalf("snapshot after a completed restore: %v", err)
		}
		if r := results(t, f.Apply(entry(t, 11, 11, appendOp("s", "3"))))[0]; r.Err != nil || r.First != 2 {
			t.Fatalf("append after a completed restore: %+v", r)
		}
	})
}

// Restore sets the covered index to the snapshot's applied index, lower
// or higher: the logs on disk then hold exactly that state.
func TestFSMRestoreSetsCoveredExactly(t *testing.T) {
	persist := func(f *FSM) []byte {
		snap, err := f.Snapshot()
		must(t, err)
		defer snap.Release()
		var sink memSink
		must(t, snap.Persist(&sink))
		return sink.Bytes()
	}
	older := openFSM(t, fsmConfig(t.TempDir(), logcore.OSFS{}))
	defer older.Close()
	older.Apply(entry(t, 50, 50, appendOp("a", "x")))
	at50 := persist(older)

	dir := t.TempDir()
	f := openFSM(t, fsmConfig(dir, logcore.OSFS{}))
	f.Apply(entry(t, 100, 100, appendOp("a", "x", "y")))
	persist(f)
	if !f.Covers(100) {
		t.Fatal("a persisted snapshot at 100 is not covered")
	}
	must(t, f.Restore(io.NopCloser(bytes.NewReader(at50))))
	if f.Covers(100) || !f.Covers(50) {
		t.Fatalf("after restoring the snapshot at 50: Covers(100) = %v, Covers(50) = %v; want false, true", f.Covers(100), f.Covers(50))
	}
	must(t, f.Close())
	f = openFSM(t, fsmConfig(dir, logcore.OSFS{}))
	defer f.Close()
	if f.Covers(100) || !f.Covers(50) {
		t.Fatal("the covered index of the restore did not survive a restart")
	}
}
