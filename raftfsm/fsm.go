package raftfsm

import (
	"context"
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
	// Defaults are the settings of a log an OpCreate of a version 0
	// entry creates without settings of its own (version 1 entries always
	// carry them). They are this node's: keep them alike on every node.
	Defaults LogSettings
	// DedupWindow is how long a Natlog-Msg-Id is remembered (0: 2
	// minutes; negative: not at all, deduplication off), measured by
	// the leader's clock in the entries; DedupMax bounds the ids kept per
	// log (oldest forgotten first). A leader puts its own values in each
	// Command (see DedupConfig), and they decide; these apply only to
	// commands that carry none (made before they were carried).
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
	// applied. Raised only through setApplied, which wakes WaitApplied.
	applied atomic.Uint64
	// appliedWaiters counts the goroutines in WaitApplied; while there are
	// any, setApplied closes appliedCh (guarded by appliedMu) and makes a
	// new one, waking them all, as logcore.Log.Wait does for records.
	appliedWaiters atomic.Int32
	appliedMu      sync.Mutex
	appliedCh      chan struct{}
	// covered is the applied index (of a snapshot Persist wrote or
	// Restore installed) that the logs on disk are known to hold, from
	// Dir/covered; see Covers.
	covered   atomic.Uint64
	coveredMu sync.Mutex // serializes writes of Dir/covered
	// snapSeq numbers the link directories of snapshots.
	snapSeq atomic.Uint64

	// dedup is the deduplication settings of the newest command that
	// carried them (the leader's), kept in Dir/dedup (dedupSaved is what
	// the file holds) so that a restart rebuilds the tables over the
	// window the leader uses, whatever this node's own configuration
	// says. Used by the goroutine that applies entries, and by OpenFSM.
	dedup, dedupSaved dedupSettings

	// broken, if not nil, is why a Restore failed after it had closed the
	// logs: the state is incomplete, so the FSM takes no snapshot and
	// applies nothing (each op answers ErrStorage) until a restart, or a
	// Restore that completes, makes it whole. Guarded by mu.
	broken error
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
	if cfg.DedupWindow == 0 {
		cfg.DedupWindow = 2 * time.Minute
	}
	if cfg.DedupMax <= 0 {
		cfg.DedupMax = 100_000
	}
	f := &FSM{cfg: cfg, fs: cfg.Log.FS, logs: map[string]*fsmLog{}, failed: map[string]error{}, appliedCh: make(chan struct{})}
	if err := f.fs.MkdirAll(f.path("logs"), 0o755); err != nil {
		return nil, err
	}
	if err := f.loadDedup(); err != nil {
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
		if errors.Is(err, errNoPosition) {
			// Out of service on this replica (the others go on); its
			// files stay for an operator, and a restored snapshot
			// replaces them.
			f.cfg.Logger.Error("raftfsm: log out of service on this replica", "log", name, "err", err)
			f.mu.Lock()
			f.failed[name] = err
			f.mu.Unlock()
			continue
		}
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
	c.Retention = logcore.Retention{MaxBytes: s.RetentionBytes, MaxAge: s.RetentionAgeDuration(), MaxSegments: s.RetentionSegments,
		// The dedup table is rebuilt from the records of the window
		// after a restart: retention keeps them.
		KeepWithin: time.Duration(f.rebuildDedup().Window),
		// After a crash the log's last records tell which ops it holds
		// (openLog); the active segment is not fsynced, the newest
		// sealed one is: retention keeps it.
		KeepLastSealed: true}
	return c
}

// errNoPosition: a log holds records but none of them carries a
// RaftIndexHeader, so the FSM cannot tell which ops it holds. The log is
// out of service on this replica (see openLogs).
var errNoPosition = errors.New("raftfsm: no record of the log carries " + RaftIndexHeader + ": cannot tell which ops it holds; restore this node from a snapshot")

// openLog opens one log and recovers what the FSM knows of it: the Raft
// index last applied to it and its recent dedup ids.
//
// An append is one logcore batch, which a crash keeps whole only if it fits
// in one segment (CommandVersion 1 appends always do in bytes; older
// entries could be larger, and a batch of more records than a segment's
// index holds, the node's MaxIndexBytes/12, spans segments too). If a
// crash kept a prefix of a larger one, the log's last
// records lack the header: they are cut off, back to the last record that
// carries it, so that Raft's replay (which still holds the entry: the FSM
// fsyncs its logs before any snapshot) appends the op again whole.
//
// If no record carries it, the log's records are all of that one append:
// if the log starts at offset 0 they are cut; otherwise the append may have
// begun in segments retention removed, and the log is out of service on
// this replica (errNoPosition) rather than guessed at.
//
// An empty log says nothing: its ops are taken to be those of the entry
// that created it at most, and Raft's replay applies the later ones. That
// is right because retention never removes a log's newest sealed segment
// (logcore.Retention.KeepLastSealed, fsynced when it was sealed): a log
// that rolled keeps its last records before the roll across a crash, so
// it is empty only if it never rolled. (Logs whose retention removed every
// sealed segment before that rule, and whose active segment a crash then
// lost, replay their history again: nothing on disk tells that case
// apart.)
func (f *FSM) openLog(name, dir string, meta logMeta) (*fsmLog, error) {
	l, err := logcore.Open(filepath.Join(dir, "segments"), f.logConfig(meta.Settings))
	if err != nil {
		return nil, err
	}
	// The entry that created the log may also append to it: its ops are
	// applied unless a record says otherwise.
	fl := &fsmLog{name: name, dir: dir, log: l, meta: meta, applied: position{index: meta.Created, op: -1}, dedup: newDedupTable()}
	rec, found, err := lastPositioned(l)
	if _, ok := l.HighestOffset(); err == nil && !found && ok {
		// Every record is of the one append a crash cut. If the log
		// starts at offset 0, that append was its first: cut it all.
		// Otherwise where it began is unknown (retention removed it).
		if l.LowestOffset() != 0 {
			err = errNoPosition
		} else {
			f.cfg.Logger.Warn("raftfsm: cutting the records of an append a crash interrupted; Raft replays it whole",
				"log", name, "from", 0, "next", l.NextOffset())
			err = l.TruncateFrom(0)
		}
	}
	if err == nil && found && rec.Offset+1 < l.NextOffset() {
		f.cfg.Logger.Warn("raftfsm: cutting the records of an append a crash interrupted; Raft replays it whole",
			"log", name, "from", rec.Offset+1, "next", l.NextOffset())
		err = l.TruncateFrom(rec.Offset + 1)
	}
	if err == nil && found {
		for _, h := range rec.Headers {
			if p, ok := parsePosition(h); ok && fl.applied.before(p) {
				fl.applied = p
			}
		}
		err = fl.dedup.rebuild(l, rec.Time, f.rebuildDedup())
	}
	if err != nil {
		l.Close()
		return nil, err
	}
	return fl, nil
}

// lastPositioned returns the log's newest record that carries a
// RaftIndexHeader (the last record of an applied append), walking back from
// the newest record; found is false if no record does.
func lastPositioned(l *logcore.Log) (rec logcore.Record, found bool, err error) {
	last, ok := l.HighestOffset()
	if !ok {
		return rec, false, nil
	}
	for off := last; off >= l.LowestOffset(); off-- {
		rec, err := l.Read(off)
		if err != nil {
			return rec, false, err
		}
		for _, h := range rec.Headers {
			if _, ok := parsePosition(h); ok {
				return rec, true, nil
			}
		}
		if off == 0 {
			break
		}
	}
	return logcore.Record{}, false, nil
}

// Apply applies one Raft entry and returns its []Result (or an error for
// an entry that does not decode). It is called by Raft, one entry at a time.
// After a failed Restore (see FSM.broken) it applies nothing: every op's
// Result is ErrStorage and AppliedIndex stays.
func (f *FSM) Apply(entry *raft.Log) any {
	if entry.Type != raft.LogCommand {
		return nil
	}
	cmd, err := DecodeCommand(entry.Data)
	if broken := f.brokenErr(); broken != nil {
		if err != nil {
			return err
		}
		results := make([]Result, len(cmd.Ops))
		for i := range results {
			results[i].Err = broken
		}
		return results
	}
	defer f.setApplied(entry.Index)
	if err != nil {
		f.cfg.Logger.Error("raftfsm: undecodable entry", "index", entry.Index, "err", err)
		return err
	}
	a := applyCtx{now: cmd.Time, version: cmd.Version, dedup: f.commandDedup(cmd)}
	results := make([]Result, len(cmd.Ops))
	for i := range cmd.Ops {
		a.pos = position{index: entry.Index, op: i}
		results[i] = f.applyOp(a, &cmd.Ops[i])
	}
	return results
}

// applyCtx is what an op's outcome depends on besides the op: its place,
// and its command's time, rules and deduplication settings.
type applyCtx struct {
	pos     position
	now     int64
	version uint8
	dedup   dedupSettings
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

func (f *FSM) applyOp(a applyCtx, op *Op) Result {
	pos := a.pos
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
		_, err := f.create(op.Log, op.Settings, a)
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
			if fl, err = f.create(op.Log, op.Settings, a); err != nil {
				return Result{Err: err}
			}
		}
		return f.appendOp(fl, a, op)
	}
	return Result{Err: fmt.Errorf("%w: unknown op kind %d", ErrBadCommand, op.Kind)}
}

func (f *FSM) appendOp(fl *fsmLog, a applyCtx, op *Op) Result {
	pos, now := a.pos, a.now
	if !fl.applied.before(pos) {
		// Replayed after a restart: this entry's records are already in
		// the log. Nobody waits for this result.
		return Result{}
	}
	if len(op.Records) == 0 {
		return Result{Err: fmt.Errorf("%w: append of no records", ErrBadCommand)}
	}
	if op.MsgID != "" {
		if e, ok := fl.dedup.lookup(op.MsgID, now, a.dedup); ok {
			return Result{First: e.first, Count: e.count, Duplicate: true}
		}
	}
	if op.Expected != nil && *op.Expected != fl.log.NextOffset() {
		return Result{Err: &ExpectedOffsetError{Log: fl.name, Expected: *op.Expected, Next: fl.log.NextOffset()}}
	}
	if seg := fl.log.Config().MaxSegmentBytes; a.version >= 1 && AppendBytes(op) > seg {
		// Decided by the op and the log's settings, the same on every
		// replica. A larger batch would span segments, and a crash could
		// keep a prefix of it.
		return Result{Err: fmt.Errorf("%w: log %s: %d records take %d bytes, segments hold %d", ErrTooLarge, fl.name, len(op.Records), AppendBytes(op), seg)}
	}
	recs := make([]logcore.Record, len(op.Records))
	at := pos.String()
	for i, r := range op.Records {
		hs := storedHeaders(make([]logcore.Header, 0, len(r.Headers)+2), op, i, at)
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
		fl.dedup.add(op.MsgID, dedupEntry{first: first, count: len(recs), at: now}, a.dedup)
	}
	return Result{First: first, Count: len(recs)}
}

// storedHeaders appends to dst the headers record i of append op is stored
// with: its own, but for the FSM's, which are added: the msg id (and count)
// on the first record, the Raft index at on the last.
func storedHeaders(dst []logcore.Header, op *Op, i int, at string) []logcore.Header {
	for _, h := range op.Records[i].Headers {
		if h.Key != RaftIndexHeader && h.Key != MsgIDHeader && h.Key != MsgCountHeader {
			dst = append(dst, logcore.Header{Key: h.Key, Value: h.Value})
		}
	}
	if op.MsgID != "" && i == 0 {
		dst = append(dst, logcore.Header{Key: MsgIDHeader, Value: op.MsgID})
		if len(op.Records) > 1 {
			dst = append(dst, logcore.Header{Key: MsgCountHeader, Value: strconv.Itoa(len(op.Records))})
		}
	}
	if i == len(op.Records)-1 {
		dst = append(dst, logcore.Header{Key: RaftIndexHeader, Value: at})
	}
	return dst
}

// longestPosition is a RaftIndexHeader value of the greatest length: a
// uint64 index, an op number that is an int32.
const longestPosition = "18446744073709551615.2147483647"

// AppendBytes returns the bytes that the records of append op take in a
// log's segment as the FSM stores them (with its headers, the Raft index
// counted at its longest). Under CommandVersion 1 the FSM refuses, with
// ErrTooLarge, an append for which it exceeds the log's
// MaxSegmentBytes: a leader compares the same to refuse it before it
// costs a Raft entry. The bytes of several appends merged into one op are
// at most the sum of theirs.
func AppendBytes(op *Op) int64 {
	var total int64
	var r logcore.Record
	for i := range op.Records {
		r.Headers = storedHeaders(r.Headers[:0], op, i, longestPosition)
		r.Value = op.Records[i].Value
		total += int64(logcore.FrameSize(&r))
	}
	return total
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
// before any record), its segments. a is the create's place, time and
// rules.
//
// Settings that no replica could use are ErrBadCommand, decided by the
// entry alone: the log is not created, and a later op may create it.
func (f *FSM) create(name string, s *LogSettings, a applyCtx) (*fsmLog, error) {
	settings := f.cfg.Defaults
	if s != nil {
		settings = *s
	}
	if err := checkSettings(settings, s != nil, a.version); err != nil {
		return nil, fmt.Errorf("%w: create %s: %v", ErrBadCommand, name, err)
	}
	meta := logMeta{Settings: settings, Created: a.pos.index, CreatedTime: a.now}
	dir := f.path("logs", name)
	// A create that fails from here on (a full disk) marks the log failed
	// on this replica: a later op must not create it at a later index, which would
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
//
// If the rename fails, or cannot be made durable, the log's files may stay
// under logs/ while the other replicas have deleted it: the log is marked
// failed here, so that no later op creates it again on top of its old
// segments (at their offsets) and no snapshot holds it. A restart replays
// the delete. Once the rename is durable the delete has happened; emptying
// the trash is housekeeping, retried on the next open.
func (f *FSM) delete(fl *fsmLog, index uint64) error {
	f.mu.Lock()
	delete(f.logs, fl.name)
	f.mu.Unlock()
	fl.log.Close()
	trash := f.path("trash")
	if err := f.fs.MkdirAll(trash, 0o755); err != nil {
		return f.fail(fl, fmt.Errorf("delete: %w", err))
	}
	to := filepath.Join(trash, fl.name+"."+strconv.FormatUint(index, 10))
	if err := f.fs.Rename(fl.dir, to); err != nil {
		return f.fail(fl, fmt.Errorf("delete: %w", err))
	}
	if err := f.fs.SyncDir(f.path("logs")); err != nil {
		return f.fail(fl, fmt.Errorf("delete: %w", err))
	}
	if err := f.emptyTrash(); err != nil {
		f.cfg.Logger.Warn("raftfsm: a deleted log's files stay in the trash until the next open", "log", fl.name, "err", err)
	}
	return nil
}

// checkSettings refuses settings no replica could open a log with. given
// says the op carried them; under CommandVersion 1 they must, with a
// segment size (see CommandVersion). The check reads no local
// configuration: logcore's defaults stand for the fields settings do not
// hold.
func checkSettings(s LogSettings, given bool, version uint8) error {
	if version >= 1 && (!given || s.MaxSegmentBytes <= 0) {
		return errors.New("settings without a segment size")
	}
	c := logcore.DefaultConfig()
	if s.MaxSegmentBytes > 0 { // as logConfig reads it
		c.MaxSegmentBytes = s.MaxSegmentBytes
	}
	c.Retention = logcore.Retention{MaxBytes: s.RetentionBytes, MaxAge: s.RetentionAgeDuration(), MaxSegments: s.RetentionSegments}
	return c.Validate()
}

// brokenErr returns the error ops answer while the FSM is broken (see
// FSM.broken), or nil.
func (f *FSM) brokenErr() error {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if f.broken == nil {
		return nil
	}
	return fmt.Errorf("%w: a snapshot restore failed on this replica; restart the node: %v", ErrStorage, f.broken)
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

// setApplied sets AppliedIndex to index and wakes the goroutines in
// WaitApplied. (A restore may set it lower than it was: a snapshot older
// than what a failed restore had left is still the state; waiters then
// wait for the commands after it.)
func (f *FSM) setApplied(index uint64) {
	f.applied.Store(index)
	f.notifyApplied()
}

// notifyApplied wakes the goroutines in WaitApplied, if any.
func (f *FSM) notifyApplied() {
	if f.appliedWaiters.Load() > 0 {
		f.appliedMu.Lock()
		close(f.appliedCh)
		f.appliedCh = make(chan struct{})
		f.appliedMu.Unlock()
	}
}

// WaitApplied blocks until AppliedIndex is at least index (nil) or ctx is
// done (ctx.Err()). It wakes when AppliedIndex changes, not on a timer:
// reads that must see a point of the replicated history (a Raft index an
// append reply named) wait with it. It does not end when the FSM is
// closed; ctx bounds it. Safe for concurrent use.
func (f *FSM) WaitApplied(ctx context.Context, index uint64) error {
	f.appliedWaiters.Add(1)
	defer f.appliedWaiters.Add(-1)
	for {
		// The channel is taken before the index is read: a change
		// after the read closes this channel (setApplied stores, then
		// sees the waiter).
		f.appliedMu.Lock()
		ch := f.appliedCh
		f.appliedMu.Unlock()
		if f.applied.Load() >= index {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

// Covers reports whether the logs on disk are known to hold the state of a
// snapshot whose applied index (SnapshotApplied) is applied: the FSM wrote
// such a snapshot, or finished restoring one. A node whose newest Raft
// snapshot it does not cover must restore it before Raft starts: Raft
// (with NoSnapshotRestoreOnStart) replays only the entries after a
// snapshot, and a restore that a crash interrupted after Raft had stored
// the snapshot left the old logs in place.
func (f *FSM) Covers(applied uint64) bool { return f.covered.Load() >= applied }

// noteCovered records durably that the logs on disk hold the state up to
// applied. It only raises the covered index (a snapshot Persist wrote).
func (f *FSM) noteCovered(applied uint64) error {
	return f.setCovered(applied, false)
}

// setCovered records the covered index durably: raised to applied, or, if
// exact, set to it (a Restore installs exactly that state).
func (f *FSM) setCovered(applied uint64, exact bool) error {
	f.coveredMu.Lock()
	defer f.coveredMu.Unlock()
	if cur := f.covered.Load(); applied == cur || !exact && applied < cur {
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
		if cur >= index {
			return
		}
		if f.applied.CompareAndSwap(cur, index) {
			f.notifyApplied()
			return
		}
	}
}

// Created returns when the named log was created (Unix nanoseconds; 0 if
// not known: logs created before this was kept), the Raft index of the
// entry that created it (which tells it from an older log of the same
// name), and whether it exists.
func (f *FSM) Created(name string) (at int64, index uint64, ok bool) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	if fl := f.logs[name]; fl != nil {
		return fl.meta.CreatedTime, fl.meta.Created, true
	}
	return 0, 0, false
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
