package sidecar

import (
	"context"
	"sync"
	"time"
)

// coalescer shares one run of an index query (a leader's read index, or a
// follower's question for it) among the callers that arrive together. A
// caller may only take the answer of a run that began after it arrived
// (an earlier run may have read the commit index before the caller's
// write was acknowledged), so a caller that arrives during a run waits for
// the next, which starts when a run ends and answers everyone who arrived
// meanwhile: about two runs per round trip, however many callers. A run
// that has taken longer than stale (a question to a leader that died with
// it) no longer holds the next one back: the next starts at once, beside
// it.
type coalescer struct {
	run   func(context.Context) (uint64, error)
	stale time.Duration // 0: never

	mu      sync.Mutex // guards running, newest and next
	running int        // runs in flight
	newest  time.Time  // when the newest run in flight began
	next    *coalesced // the run the next callers join, not begun yet
}

// coalesced is one run's outcome, ready once done is closed.
type coalesced struct {
	done   chan struct{}
	joined int // callers waiting for it (c.mu)
	idx    uint64
	err    error
}

// do returns the outcome of a run that began after the call, or ctx's
// error. A run is bounded by its own context (runCtx), not by any one
// caller's.
func (c *coalescer) do(ctx context.Context, runCtx func() (context.Context, context.CancelFunc)) (uint64, error) {
	c.mu.Lock()
	r := c.next
	if r == nil {
		r = &coalesced{done: make(chan struct{})}
		c.next = r
	}
	r.joined++
	if c.running == 0 || c.stale > 0 && time.Since(c.newest) > c.stale {
		c.next = nil
		c.running++
		c.newest = time.Now()
		go c.loop(r, runCtx)
	}
	c.mu.Unlock()
	select {
	case <-r.done:
		return r.idx, r.err
	case <-ctx.Done():
		return 0, ctx.Err()
	}
}

// loop runs r, then the run that callers joined meanwhile, until none did.
func (c *coalescer) loop(r *coalesced, runCtx func() (context.Context, context.CancelFunc)) {
	for r != nil {
		ctx, cancel := runCtx()
		r.idx, r.err = c.run(ctx)
		cancel()
		close(r.done)
		c.mu.Lock()
		r = c.next
		c.next = nil
		if r != nil {
			c.newest = time.Now()
		} else {
			c.running--
		}
		c.mu.Unlock()
	}
}
