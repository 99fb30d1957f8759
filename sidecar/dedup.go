package sidecar

import (
	"strconv"
	"sync"
	"time"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/sidecar/protocol"
)

// dedup remembers, per log, the Natlog-Msg-Id of recent appends and the
// offsets they got, so that a retried append is answered with the first
// one's offsets instead of being written twice.
//
// The ids are stored with the records (the header is kept), so the memory
// is rebuilt from the log's recent records the first time an id is claimed
// after the log is opened: a retry after a crash and restart is still
// recognised. Ids older than the window, or beyond the max most recent,
// are forgotten.
type dedup struct {
	window time.Duration
	max    int
	log    *logcore.Log

	mu     sync.Mutex // guards everything below
	loaded bool
	ids    map[string]*dedupEntry
	fifo   []fifoItem // ids in the order they were claimed
}

// dedupEntry is what an id maps to. It is in flight until done is closed
// (by finish); after that it is read-only.
type dedupEntry struct {
	first  uint64
	count  int
	at     int64         // Unix nanoseconds of the append
	done   chan struct{} // closed when the owner has finished; nil if loaded
	failed bool          // the append failed: the id is free again
}

type fifoItem struct {
	id string
	e  *dedupEntry
}

func newDedup(window time.Duration, max int, l *logcore.Log) *dedup {
	return &dedup{window: window, max: max, log: l, ids: map[string]*dedupEntry{}}
}

// claim returns the entry for id. If owner is true the caller must append
// and then call finish; otherwise the entry is another append's: wait for
// its done (if not nil) and use it unless it failed, in which case claim
// again.
func (d *dedup) claim(id string) (e *dedupEntry, owner bool) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := time.Now().UnixNano()
	if !d.loaded {
		d.load(now)
		d.loaded = true
	}
	d.expire(now)
	if e, ok := d.ids[id]; ok && !e.failed {
		return e, false
	}
	e = &dedupEntry{at: now, done: make(chan struct{})}
	d.ids[id] = e
	d.fifo = append(d.fifo, fifoItem{id, e})
	d.expire(now) // the bound holds with it
	return e, true
}

// tryClaim is claim for a caller that must not block: ok is false (and
// nothing is claimed) if the log's ids have not been loaded yet, which
// reads the log.
func (d *dedup) tryClaim(id string) (e *dedupEntry, owner, ok bool) {
	d.mu.Lock()
	loaded := d.loaded
	d.mu.Unlock()
	if !loaded {
		return nil, false, false
	}
	e, owner = d.claim(id)
	return e, owner, true
}

// finish records the outcome of the owner's append and wakes those waiting
// for it.
func (d *dedup) finish(id string, e *dedupEntry, first uint64, count int, err error) {
	d.mu.Lock()
	if err != nil {
		e.failed = true
		if d.ids[id] == e {
			delete(d.ids, id)
		}
	} else {
		e.first, e.count = first, count
	}
	d.mu.Unlock()
	close(e.done)
}

// expire forgets ids older than the window and the oldest beyond max, and
// the claims of failed appends that lead the queue whatever their age (a
// stream of refused appends with fresh ids would otherwise hold memory for
// a whole window; the bound counts them too). An append still in flight is
// never forgotten (it is recent anyway).
func (d *dedup) expire(now int64) {
	cutoff := now - int64(d.window)
	i := 0
	for ; i < len(d.fifo); i++ {
		it := d.fifo[i]
		if !it.e.failed && it.e.at >= cutoff && len(d.fifo)-i <= d.max {
			break
		}
		if it.e.done != nil && !isClosed(it.e.done) {
			break
		}
		if d.ids[it.id] == it.e {
			delete(d.ids, it.id)
		}
	}
	if i > 0 {
		// Drop the expired prefix; compact when it is most of the slice.
		d.fifo = d.fifo[i:]
		if cap(d.fifo) > 64 && len(d.fifo) < cap(d.fifo)/4 {
			d.fifo = append([]fifoItem(nil), d.fifo...)
		}
	}
}

func isClosed(c chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// load rebuilds the ids from the log's records of the last window (at
// most max records back). Consecutive records with the same id are one
// append (a batch). Errors stop the scan: dedup is best effort for what it
// cannot read.
func (d *dedup) load(now int64) {
	next := d.log.NextOffset()
	from, err := d.log.OffsetForTime(now - int64(d.window))
	if err != nil {
		return
	}
	if low := d.log.LowestOffset(); from < low {
		from = low
	}
	if next > uint64(d.max) && from < next-uint64(d.max) {
		from = next - uint64(d.max)
	}
	var last *dedupEntry
	var lastID string
	for off := from; off < next; {
		recs, err := d.log.ReadBatch(off, 1000, 1<<20)
		if err != nil || len(recs) == 0 {
			return
		}
		for _, r := range recs {
			off = r.Offset + 1
			id, n := "", 0
			for _, h := range r.Headers {
				switch h.Key {
				case protocol.HeaderMsgID:
					id = h.Value
				case protocol.HeaderMsgCount:
					n, _ = strconv.Atoi(h.Value)
				}
			}
			if id == "" {
				last = nil
				continue
			}
			if n > 1 {
				// The first record of a batch of n.
				last, lastID = nil, ""
				e := &dedupEntry{first: r.Offset, count: n, at: r.Time}
				d.ids[id] = e
				d.fifo = append(d.fifo, fifoItem{id, e})
				continue
			}
			// One record; or (written before Natlog-Msg-Count) a batch
			// with the id on each record.
			if last != nil && id == lastID && last.first+uint64(last.count) == r.Offset {
				last.count++
				continue
			}
			last, lastID = &dedupEntry{first: r.Offset, count: 1, at: r.Time}, id
			d.ids[id] = last
			d.fifo = append(d.fifo, fifoItem{id, last})
		}
	}
}
