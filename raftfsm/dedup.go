package raftfsm

import (
	"strconv"
	"time"

	"github.com/natlog/natlog/logcore"
)

// dedupTable remembers a log's recent Natlog-Msg-Ids and the offsets their
// appends got. Time is the leader's, from the entries, so every replica
// forgets an id at the same entry. Only the applying goroutine uses it.
type dedupTable struct {
	window int64 // nanoseconds
	max    int
	ids    map[string]dedupEntry
	fifo   []dedupKey // ids in the order they were added
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

func newDedupTable(window time.Duration, max int) *dedupTable {
	return &dedupTable{window: window.Nanoseconds(), max: max, ids: map[string]dedupEntry{}}
}

// expire forgets the ids older than the window at now, and the oldest ones
// beyond max.
func (d *dedupTable) expire(now int64) {
	n := 0
	for n < len(d.fifo) && (d.fifo[n].at < now-d.window || len(d.fifo)-n > d.max) {
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
func (d *dedupTable) lookup(id string, now int64) (dedupEntry, bool) {
	d.expire(now)
	e, ok := d.ids[id]
	return e, ok
}

// add remembers an append's id.
func (d *dedupTable) add(id string, e dedupEntry) {
	d.ids[id] = e
	d.fifo = append(d.fifo, dedupKey{id: id, at: e.at})
	d.expire(e.at)
}

// rebuild fills the table from the log's records of the last window
// before now (the newest record's time): each append stored its id on its
// first record, with its length if it has more than one (appends written
// before that stored the id on every record, ended by the Raft index).
func (d *dedupTable) rebuild(l *logcore.Log, now int64) error {
	from, err := l.OffsetForTime(now - d.window)
	if err != nil {
		return err
	}
	from = max(from, l.LowestOffset())
	var cur string
	var curEntry dedupEntry
	flush := func() {
		if cur != "" {
			d.add(cur, curEntry)
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
				d.add(id, dedupEntry{first: r.Offset, count: n, at: r.Time})
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
