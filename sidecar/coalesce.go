package sidecar

import (
	"context"
	"sync"
)

// coalescer shares one run of an index query (a leader's read index, or a
// follower's question for it) among the callers that arrive together. A
// caller may only take the answer of a run that began after it arrived
// (an earlier run may have read the commit index before the caller's
// write was acknowledged), so a caller that arrives during a run waits for
// the next, which starts when the current one ends and answers everyone
// who arrived meanwhile: at most two runs per round trip, however many
// callers.
type coalescer struct {
	run func(context.Context) (uint64, error)

	mu      sync.Mutex // guards running and next
	running bool
	next    *coalesced // the run the next callers join
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
	if !c.running {
		c.running = true
		c.next = nil
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
		if r == nil {
			c.running = false
		}
		c.mu.Unlock()
	}
}
