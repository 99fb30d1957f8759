package raftfsm

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/hashicorp/raft"
	"github.com/vmihailenco/msgpack/v5"

	"github.com/natlog/natlog/logcore"
)

const (
	// RaftIndexHeader is the header the FSM adds to the last record of
	// every append it applies: "<Raft index>.<op number in the entry>". On
	// start the FSM reads it from each log's last record and skips the ops
	// it has already applied, so a replay never duplicates a record.
	// (logcore batches are atomic across a crash, so the last record stands
	// for the whole batch.)
	RaftIndexHeader = "Natlog-Raft-Index"
	// MsgIDHeader carries an append's deduplication id on its first
	// record, so that the dedup table can be rebuilt from the log.
	MsgIDHeader = "Natlog-Msg-Id"
	// MsgCountHeader, beside MsgIDHeader on the first record of an append
	// of more than one record, is the number of records.
	MsgCountHeader = "Natlog-Msg-Count"
)

// FSMConfig configures an FSM.
type FSMConfig struct {
	// Dir holds the FSM's logs: Dir/logs/<name>/{meta,segments/}.
	Dir string
	// Log is the base logcore configuration of every log (FS, Logger,
	// sync policy...); each log's LogSettings override its sizes and
	// retention. The Raft log already holds every entry durably, so
	// logcore.SyncNeverUnsafe is the right policy here: the FSM fsyncs its
	// logs when Raft takes a snapshot, the only point after which Raft
	// will not replay entries to it.
	Log logcore.Config
	// Defaults are the settings of logs created without settings of
	// their own.
	Defaults LogSettings
	// DedupWindow is how long a Natlog-Msg-Id is remembered, measured by
	// the leader's clock in the entries; DedupMax bounds the ids kept per
	// log (oldest forgotten first).
	DedupWindow time.Duration
	DedupMax    int
	Logger      *slog.Logger
}

// FSM is natlog's replicated state machine: named logcore logs. It
// implements raft.FSM; Apply is deterministic (it reads no clock and no map
// order). Readers use Log to read a log directly; Apply, Snapshot and
// Restore are called by Raft, one at a time.
type FSM struct {
	cfg FSMConfig
	fs  logcore.FS

	mu     sync.RWMutex // guards logs; readers hold it shared
	logs   map[string]*fsmLog
	failed map[string]error // logs whose storage failed, with why; guarded by mu

	// applied is the Raft index of the last command applied (or
	// restored from a snapshot). raft.Raft's AppliedIndex is not it: Raft
	// raises that when it hands entries to the FSM, before they are
	// applied.
	applied atomic.Uint64
	// covered is the applied index (of a snapshot Persist wrote or
	// Restore installed) that the logs on disk are known to hold, from
	// Dir/covered; see Covers.
	covered   atomic.Uint64
	coveredMu sync.Mutex // serializes writes of Dir/covered
	// snapSeq numbers the link directories of snapshots.
	snapSeq atomic.Uint64
}

var _ raft.FSM = (*FSM)(nil)

// fsmLog is one log of the FSM. Its fields other than log are used only by
// the goroutine that applies entries.
type fsmLog struct {
	name    string
	dir     string
	log     *logcore.Log
	meta    logMeta
	applied position // the last op applied to this log
	dedup   *dedupTable
}

// logMeta is a log's metadata file, written once when it is created.
type logMeta struct {
	Settings LogSettings `msgpack:"s"`
	Created  uint64      `msgpack:"c"` // Raft index of the create
	// CreatedTime is the create's time (the leader's stamp on its entry),
	// Unix nanoseconds; 0 in metadata written before it was kept.
	CreatedTime int64 `msgpack:"t,omitempty"`
}

// OpenFSM opens the FSM in cfg.Dir, finishing or discarding a snapshot
// restore that a crash interrupted, and opens every log.
func OpenFSM(cfg FSMConfig) (*FSM, error) {
	if cfg.Log.FS == nil {
		cfg.Log.FS = logcore.OSFS{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	if cfg.DedupWindow <= 0 {
		cfg.DedupWindow = 2 * time.Minute
	}
	if cfg.DedupMax <= 0 {
		cfg.DedupMax = 100_000
	}
	f := &FSM{cfg: cfg, fs: cfg.Log.FS, logs: map[string]*fsmLog{}, failed: map[string]error{}}
	if err := f.fs.MkdirAll(f.path("logs"), 0o755); err != nil {
		return nil, err
	}
	if err := f.finishRestore(); err != nil {
		return nil, fmt.Errorf("raftfsm: finish interrupted restore: %w", err)
	}
	if err := f.loadCovered(); err != nil {
		return nil, err
	}
	// Links of snapshots that a crash or stop kept from being persisted.
	if err := f.fs.RemoveAll(f.path(snapshotLinksDir)); err != nil {
		return nil, err
	}
	if err := f.openLogs(); err != nil {
		f.closeLogs()
		return nil, err
	}
	return f, nil
}

func (f *FSM) path(elem ...string) string {
	return filepath.Join(append([]string{f.cfg.Dir}, elem...)...)
}

// openLogs opens every log under Dir/logs.
func (f *FSM) openLogs() error {
	if err := f.emptyTrash(); err != nil {
		return err
	}
	names, err := f.fs.ReadDir(f.path("logs"))
	if err != nil {
		return err
	}
	for _, name := range names {
		if !validName(name) {
			continue
		}
		dir := f.path("logs", name)
		meta, err := readMeta(f.fs, filepath.Join(dir, "meta"))
		if errors.Is(err, os.ErrNotExist) {
			// A create that crashed before its metadata landed: it
			// holds no records, and Raft will replay the create.
			f.cfg.Logger.Warn("raftfsm: removing log without metadata", "log", name)
			if err := f.fs.RemoveAll(dir); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("raftfsm: log %s: %w", name, err)
		}
		fl, err := f.openLog(name, dir, meta)
		if err != nil {
			return fmt.Errorf("raftfsm: open log %s: %w", name, err)
		}
		f.mu.Lock()
		f.logs[name] = fl
		f.mu.Unlock()
	}
	return nil
}

// logConfig returns the logcore configuration of a log with settings s.
func (f *FSM) logConfig(s LogSettings) logcore.Config {
	c := f.cfg.Log
	if s.MaxSegmentBytes > 0 {
		c.MaxSegmentBytes = s.MaxSegmentBytes
	}
	c.Retention = logcore.Retention{MaxBytes: s.RetentionBytes, MaxAge: s.RetentionAgeDuration(), MaxSegments: s.RetentionSegments}
	return c
}

// openLog opens one log and recovers what the FSM knows of it: the Raft
// index last applied to it and its recent dedup ids.
func (f *FSM) openLog(name, dir string, meta logMeta) (*fsmLog, error) {
	l, err := logcore.Open(filepath.Join(dir, "segments"), f.logConfig(meta.Settings))
	if err != nil {
		return nil, err
	}
	// The entry that created the log may also append to it: its ops are
	// applied unless a record says otherwise.
	fl := &fsmLog{name: name, dir: dir, log: l, meta: meta, applied: position{index: meta.Created, op: -1}, dedup: newDedupTable(f.cfg.DedupWindow, f.cfg.DedupMax)}
	if last, ok := l.HighestOffset(); ok {
		rec, err := l.Read(last)
		if err != nil {
			l.Close()
			return nil, err
		}
		for _, h := range rec.Headers {
			if p, ok := parsePosition(h); ok && fl.applied.before(p) {
				fl.applied = p
			}
		}
		if err := fl.dedup.rebuild(l, rec.Time); err != nil {
			l.Close()
			return nil, err
		}
	}
	return fl, nil
}

// Apply applies one Raft entry and returns its []Result (or an error for
// an entry that does not decode). It is called by Raft, one entry at a time.
func (f *FSM) Apply(entry *raft.Log) any {
	if entry.Type != raft.LogCommand {
		return nil
	}
	defer f.applied.Store(entry.Index)
	cmd, err := DecodeCommand(entry.Data)
	if err != nil {
		f.cfg.Logger.Error("raftfsm: undecodable entry", "index", entry.Index, "err", err)
		return err
	}
	results := make([]Result, len(cmd.Ops))
	for i := range cmd.Ops {
		results[i] = f.applyOp(position{index: entry.Index, op: i}, cmd.Time, &cmd.Ops[i])
	}
	return results
}

// position is an op's place in the Raft log: entry index, then op number.
type position struct {
	index uint64
	op    int
}

func (p position) before(q position) bool {
	return p.index < q.index || p.index == q.index && p.op < q.op
}

func (p position) String() string {
	return strconv.FormatUint(p.index, 10) + "." + strconv.Itoa(p.op)
}

// parsePosition reads a RaftIndexHeader.
func parsePosition(h logcore.Header) (position, bool) {
	if h.Key != RaftIndexHeader {
		return position{}, false
	}
	i, o, ok := strings.Cut(h.Value, ".")
	index, err1 := strconv.ParseUint(i, 10, 64)
	op, err2 := strconv.Atoi(o)
	if !ok || err1 != nil || err2 != nil || op < 0 {
		return position{}, false
	}
	return position{index: index, op: op}, true
}

func (f *FSM) applyOp(pos position, now int64, op *Op) Result {
	if !validName(op.Log) {
		return Result{Err: fmt.Errorf("%w: bad log name %q", ErrBadCommand, op.Log)}
	}
	f.mu.RLock()
	fl, failed := f.logs[op.Log], f.failed[op.Log]
	f.mu.RUnlock()
	if failed != nil {
		return Result{Err: fmt.Errorf("%w: log %s: %v", ErrStorage, op.Log, failed)}
	}
	switch op.Kind {
	case OpCreate:
		if fl != nil {
			return Result{}
		}
		_, err := f.create(op.Log, op.Settings, pos.index, now)
		return Result{Err: err}
	case OpDelete:
		if fl == nil {
			return Result{Err: fmt.Errorf("%w: %s", ErrUnknownLog, op.Log)}
		}
		if !fl.applied.before(pos) {
			return Result{} // replay: its later records exist, so it was re-created since
		}
		return Result{Err: f.delete(fl, pos.index)}
	case OpAppend:
		if fl == nil {
			if op.Settings == nil {
				return Result{Err: fmt.Errorf("%w: %s", ErrUnknownLog, op.Log)}
			}
			var err error
			if fl, err = f.create(op.Log, op.Settings, pos.index, now); err != nil {
				return Result{Err: err}
			}
		}
		return f.appendOp(fl, pos, now, op)
	}
	return Result{Err: fmt.Errorf("%w: unknown op kind %d", ErrBadCommand, op.Kind)}
}

func (f *FSM) appendOp(fl *fsmLog, pos position, now int64, op *Op) Result {
	if !fl.applied.before(pos) {
		// Replayed after a restart: this entry's records are already in
		// the log. Nobody waits for this result.
		return Result{}
	}
	if len(op.Records) == 0 {
		return Result{Err: fmt.Errorf("%w: append of no records", ErrBadCommand)}
	}
	if op.MsgID != "" {
		if e, ok := fl.dedup.lookup(op.MsgID, now); ok {
			return Result{First: e.first, Count: e.count, Duplicate: true}
		}
	}
	if op.Expected != nil && *op.Expected != fl.log.NextOffset() {
		return Result{Err: &ExpectedOffsetError{Log: fl.name, Expected: *op.Expected, Next: fl.log.NextOffset()}}
	}
	recs := make([]logcore.Record, len(op.Records))
	for i, r := range op.Records {
		hs := make([]logcore.Header, 0, len(r.Headers)+2)
		for _, h := range r.Headers {
			if h.Key != RaftIndexHeader && h.Key != MsgIDHeader && h.Key != MsgCountHeader {
				hs = append(hs, logcore.Header{Key: h.Key, Value: h.Value})
			}
		}
		if op.MsgID != "" && i == 0 {
			hs = append(hs, logcore.Header{Key: MsgIDHeader, Value: op.MsgID})
			if len(op.Records) > 1 {
				hs = append(hs, logcore.Header{Key: MsgCountHeader, Value: strconv.Itoa(len(op.Records))})
			}
		}
		if i == len(op.Records)-1 {
			hs = append(hs, logcore.Header{Key: RaftIndexHeader, Value: pos.String()})
		}
		recs[i] = logcore.Record{Time: now, Headers: hs, Value: r.Value}
	}
	first, err := fl.log.AppendBatch(recs)
	if errors.Is(err, logcore.ErrRecordTooLarge) {
		// Decided by the log's settings, the same on every replica:
		// the op is refused everywhere and the log goes on.
		return Result{Err: fmt.Errorf("raftfsm: log %s: %w", fl.name, err)}
	}
	if err != nil {
		return Result{Err: f.fail(fl, err)}
	}
	fl.applied = pos
	if op.MsgID != "" {
		fl.dedup.add(op.MsgID, dedupEntry{first: first, count: len(recs), at: now})
	}
	return Result{First: first, Count: len(recs)}
}

// fail marks a log whose storage failed: the FSM applies nothing more to
// it (this replica would diverge) and reports it. An operator repairs the
// node (or replaces it from a snapshot).
func (f *FSM) fail(fl *fsmLog, err error) error {
	f.cfg.Logger.Error("raftfsm: log storage failed; not applying to it any more", "log", fl.name, "err", err)
	f.mu.Lock()
	f.failed[fl.name] = err
	f.mu.Unlock()
	return fmt.Errorf("%w: log %s: %v", ErrStorage, fl.name, err)
}

// create makes a new log: its directory, its metadata (written durably
// before any record), its segments. index and now are the create's entry
// and its time.
func (f *FSM) create(name string, s *LogSettings, index uint64, now int64) (*fsmLog, error) {
	settings := f.cfg.Defaults
	if s != nil {
		settings = *s
	}
	meta := logMeta{Settings: settings, Created: index, CreatedTime: now}
	dir := f.path("logs", name)
	// A create that fails here (a full disk) marks the log failed on this
	// replica: a later op must not create it at a later index, which would
	// give its records other offsets than the other replicas'.
	failed := func(err error) (*fsmLog, error) {
		f.cfg.Logger.Error("raftfsm: cannot create a log; not applying to it", "log", name, "err", err)
		f.mu.Lock()
		f.failed[name] = err
		f.mu.Unlock()
		return nil, fmt.Errorf("%w: create %s: %v", ErrStorage, name, err)
	}
	if err := f.fs.MkdirAll(dir, 0o755); err != nil {
		return failed(err)
	}
	if err := logcore.WriteFileAtomic(f.fs, filepath.Join(dir, "meta"), mustMarshal(meta)); err != nil {
		return failed(err)
	}
	fl, err := f.openLog(name, dir, meta)
	if err != nil {
		return failed(err)
	}
	f.mu.Lock()
	f.logs[name] = fl
	f.mu.Unlock()
	return fl, nil
}

// delete removes a log: renamed into Dir/trash first, so a crash never
// leaves half a log under logs/.
func (f *FSM) delete(fl *fsmLog, index uint64) error {
	f.mu.Lock()
	delete(f.logs, fl.name)
	f.mu.Unlock()
	fl.log.Close()
	trash := f.path("trash")
	if err := f.fs.MkdirAll(trash, 0o755); err != nil {
		return fmt.Errorf("%w: delete %s: %v", ErrStorage, fl.name, err)
	}
	to := filepath.Join(trash, fl.name+"."+strconv.FormatUint(index, 10))
	if err := f.fs.Rename(fl.dir, to); err != nil {
		return fmt.Errorf("%w: delete %s: %v", ErrStorage, fl.name, err)
	}
	if err := f.fs.SyncDir(f.path("logs")); err != nil {
		return fmt.Errorf("%w: delete %s: %v", ErrStorage, fl.name, err)
	}
	return f.emptyTrash()
}

func (f *FSM) emptyTrash() error {
	if err := f.fs.RemoveAll(f.path("trash")); err != nil {
		return err
	}
	return f.fs.SyncDir(f.cfg.Dir)
}

// Log returns the named log for reading, or nil. The log stays valid until
// it is deleted or the FSM is restored or closed; reads then fail with
// logcore.ErrClosed.
func (f *FSM) Log(name string) *logcore.Log {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if fl := f.logs[name]; fl != nil {
		return fl.log
	}
	return nil
}

// AppliedIndex is the Raft index of the last command whose ops are
// applied (visible to readers), or of the snapshot restored since; 0
// until the first. Every replica applies the same commands at the same
// indexes, so a replica whose AppliedIndex has reached a command's index
// holds its effects.
func (f *FSM) AppliedIndex() uint64 { return f.applied.Load() }

// Covers reports whether the logs on disk are known to hold the state of a
// snapshot whose applied index (SnapshotApplied) is applied: the FSM wrote
// such a snapshot, or finished restoring one. A node whose newest Raft
// snapshot it does not cover must restore it before Raft starts: Raft
// (with NoSnapshotRestoreOnStart) replays only the entries after a
// snapshot, and a restore that a crash interrupted after Raft had stored
// the snapshot left the old logs in place.
func (f *FSM) Covers(applied uint64) bool { return f.covered.Load() >= applied }

// noteCovered records durably that the logs on disk hold the state up to
// applied.
func (f *FSM) noteCovered(applied uint64) error {
	f.coveredMu.Lock()
	defer f.coveredMu.Unlock()
	if applied <= f.covered.Load() {
		return nil
	}
	if err := logcore.WriteFileAtomic(f.fs, f.path("covered"), strconv.AppendUint(nil, applied, 10)); err != nil {
		return fmt.Errorf("record covered index: %w", err)
	}
	f.covered.Store(applied)
	return nil
}

// loadCovered reads Dir/covered (missing: nothing is known covered).
func (f *FSM) loadCovered() error {
	b, err := logcore.ReadFile(f.fs, f.path("covered"), 64)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("raftfsm: %w", err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return fmt.Errorf("raftfsm: %s: not an index: %q", f.path("covered"), b)
	}
	f.covered.Store(v)
	return nil
}

// StartedFrom tells the FSM that its state on disk covers the commands up
// to index: the snapshot Raft started from without restoring it
// (raft.Config.NoSnapshotRestoreOnStart; Raft replays only the entries
// after it). AppliedIndex is raised to it.
func (f *FSM) StartedFrom(index uint64) {
	for {
		cur := f.applied.Load()
		if cur >= index || f.applied.CompareAndSwap(cur, index) {
			return
		}
	}
}

// Created returns when the named log was created (Unix nanoseconds; 0 if
// not known: logs created before this was kept), and whether it exists.
func (f *FSM) Created(name string) (int64, bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if fl := f.logs[name]; fl != nil {
		return fl.meta.CreatedTime, true
	}
	return 0, false
}

// Logs returns the names of the logs, sorted.
func (f *FSM) Logs() []string {
	f.mu.RLock()
	defer f.mu.RUnlock()
	names := make([]string, 0, len(f.logs))
	for n := range f.logs {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// Failed returns the logs whose storage failed on this replica, with why.
func (f *FSM) Failed() map[string]error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	out := make(map[string]error, len(f.failed))
	for k, v := range f.failed {
		out[k] = v
	}
	return out
}

// FailedErr returns why log name failed on this replica, or nil.
func (f *FSM) FailedErr(name string) error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.failed[name]
}

// Sync fsyncs every log.
func (f *FSM) Sync() error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	var errs []error
	for _, fl := range f.logs {
		errs = append(errs, fl.log.Sync())
	}
	return errors.Join(errs...)
}

// Close closes every log, flushing them.
func (f *FSM) Close() error { return f.closeLogs() }

func (f *FSM) closeLogs() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	var errs []error
	for name, fl := range f.logs {
		if err := fl.log.Close(); err != nil && !errors.Is(err, logcore.ErrClosed) {
			errs = append(errs, err)
		}
		delete(f.logs, name)
	}
	return errors.Join(errs...)
}

// validName reports whether name is a log name: 1 to 128 of [A-Za-z0-9_-]
// (the protocol's rule, and safe as a directory name).
func validName(name string) bool {
	if len(name) == 0 || len(name) > 128 {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

func mustMarshal(v any) []byte {
	b, err := msgpack.Marshal(v)
	if err != nil {
		panic(err) // only our own fixed types are marshalled
	}
	return b
}

func readMeta(fsys logcore.FS, name string) (logMeta, error) {
	b, err := logcore.ReadFile(fsys, name, 1<<20)
	if err != nil {
		return logMeta{}, err
	}
	var m logMeta
	if err := unmarshal(b, &m); err != nil {
		return logMeta{}, fmt.Errorf("bad metadata: %w", err)
	}
	return m, nil
}
