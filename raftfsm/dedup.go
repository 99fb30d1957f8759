package raftfsm

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	"github.com/natlog/natlog/logcore"
)

// dedupSettings are a deduplication window and bound: the leader's, from a
// Command, or the node's own for commands that carry none.
type dedupSettings struct {
	Window int64 `msgpack:"w"` // nanoseconds
	Max    int   `msgpack:"m"`
}

// dedupFile holds the newest dedupSettings a command carried (see
// FSM.dedup).
const dedupFile = "dedup"

// DedupConfig returns the deduplication settings this node's FSM is
// configured with (defaults filled in): a leader puts them in the
// Commands it makes (Command.DedupWindow, DedupMax), and they decide on
// every replica.
func (f *FSM) DedupConfig() (window time.Duration, max int) {
	return f.cfg.DedupWindow, f.cfg.DedupMax
}

// localDedup returns the node's own settings.
func (f *FSM) localDedup() dedupSettings {
	return dedupSettings{Window: f.cfg.DedupWindow.Nanoseconds(), Max: f.cfg.DedupMax}
}

// commandDedup returns the settings cmd's ops are deduplicated with: the
// ones it carries, else the node's own. Settings a command carries become
// the FSM's dedup settings, saved for the next open (a failure to save is
// logged and retried with the next command: it only narrows what a
// restart rebuilds).
func (f *FSM) commandDedup(cmd *Command) dedupSettings {
	if cmd.DedupWindow == 0 || cmd.DedupMax <= 0 {
		return f.localDedup()
	}
	d := dedupSettings{Window: cmd.DedupWindow, Max: cmd.DedupMax}
	f.noteDedup(d)
	return d
}

// noteDedup makes d the FSM's dedup settings, saving them if they changed.
func (f *FSM) noteDedup(d dedupSettings) {
	f.dedup = d
	if d == f.dedupSaved {
		return
	}
	if err := logcore.WriteFileAtomic(f.fs, f.path(dedupFile), mustMarshal(d)); err != nil {
		f.cfg.Logger.Warn("raftfsm: cannot save the leader's dedup settings", "err", err)
		return
	}
	f.dedupSaved = d
}

// loadDedup reads Dir/dedup (missing: the node's own settings).
func (f *FSM) loadDedup() error {
	b, err := logcore.ReadFile(f.fs, f.path(dedupFile), 1<<10)
	if errors.Is(err, os.ErrNotExist) {
		f.dedup = f.localDedup()
		return nil
	}
	if err != nil {
		return fmt.Errorf("raftfsm: %w", err)
	}
	var d dedupSettings
	if err := unmarshal(b, &d); err != nil || d.Window == 0 || d.Max <= 0 {
		return fmt.Errorf("raftfsm: %s: bad dedup settings %q", f.path(dedupFile), b)
	}
	f.dedup, f.dedupSaved = d, d
	return nil
}

// rebuildDedup returns the settings a log's table is rebuilt with on open:
// the larger of the leader's (as last seen) and the node's own, so that it
// holds every id that a command carrying either may ask for.
func (f *FSM) rebuildDedup() dedupSettings {
	l := f.localDedup()
	return dedupSettings{Window: max(f.dedup.Window, l.Window), Max: max(f.dedup.Max, l.Max)}
}

// dedupTable remembers a log's recent Natlog-Msg-Ids and the offsets their
// appends got. Time is the leader's, from the entries, and so are the
// window and bound (each command's), so every replica forgets an id at
// the same entry. Only the applying goroutine uses it.
//
// When the leader's window grows, an id the old window had already
// forgotten stays forgotten on a replica that kept running, while one that
// rebuilds its table (a restart, a restored snapshot) reads it back from
// its records: a retry of such an id, older than the old window, may then
// be answered differently. Grow the window when no such retry is expected.
type dedupTable struct {
	ids  map[string]dedupEntry
	fifo []dedupKey // ids in the order they were added
}

type dedupEntry struct {
	first uint64
	count int
	at    int64 // leader time of the append
}

type dedupKey struct {
	id string
	at int64
}

func newDedupTable() *dedupTable {
	return &dedupTable{ids: map[string]dedupEntry{}}
}

// expire forgets the ids older than the window at now, and the oldest ones
// beyond the bound.
func (d *dedupTable) expire(now int64, s dedupSettings) {
	n := 0
	for n < len(d.fifo) && (d.fifo[n].at < now-s.Window || len(d.fifo)-n > s.Max) {
		k := d.fifo[n]
		if e, ok := d.ids[k.id]; ok && e.at == k.at {
			delete(d.ids, k.id)
		}
		n++
	}
	if n > 0 {
		d.fifo = append(d.fifo[:0], d.fifo[n:]...)
	}
}

// lookup returns the append an id names, if it is within the window.
func (d *dedupTable) lookup(id string, now int64, s dedupSettings) (dedupEntry, bool) {
	d.expire(now, s)
	e, ok := d.ids[id]
	return e, ok
}

// add remembers an append's id.
func (d *dedupTable) add(id string, e dedupEntry, s dedupSettings) {
	d.ids[id] = e
	d.fifo = append(d.fifo, dedupKey{id: id, at: e.at})
	d.expire(e.at, s)
}

// rebuild fills the table from the log's records of the last window
// before now (the newest record's time): each append stored its id on its
// first record, with its length if it has more than one (appends written
// before that stored the id on every record, ended by the Raft index).
func (d *dedupTable) rebuild(l *logcore.Log, now int64, s dedupSettings) error {
	from, err := l.OffsetForTime(now - s.Window)
	if err != nil {
		return err
	}
	from = max(from, l.LowestOffset())
	var cur string
	var curEntry dedupEntry
	flush := func() {
		if cur != "" {
			d.add(cur, curEntry, s)
		}
		cur = ""
	}
	for {
		recs, err := l.ReadBatch(from, 1024, 1<<20)
		if err != nil {
			return err
		}
		if len(recs) == 0 {
			break
		}
		for _, r := range recs {
			id, n := "", 0
			for _, h := range r.Headers {
				switch h.Key {
				case MsgIDHeader:
					id = h.Value
				case MsgCountHeader:
					n, _ = strconv.Atoi(h.Value)
				}
			}
			if id != "" && n > 1 {
				// The first record of an append of n records.
				flush()
				d.add(id, dedupEntry{first: r.Offset, count: n, at: r.Time}, s)
				continue
			}
			last := false
			for _, h := range r.Headers {
				if h.Key == RaftIndexHeader {
					last = true
				}
			}
			if id != "" && cur == "" {
				cur, curEntry = id, dedupEntry{first: r.Offset, at: r.Time}
			}
			if cur != "" {
				curEntry.count++
			}
			if last {
				flush() // the last record of an append
			}
		}
		from = recs[len(recs)-1].Offset + 1
	}
	flush()
	return nil
}
