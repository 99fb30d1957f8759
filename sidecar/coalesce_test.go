package sidecar

import (
	"context"
	"errors"
	"sync"
	"testing"
	"time"
)

// A caller that arrives while a run is in flight gets the next run's
// answer, never the current one's; callers that arrive together share a
// run.
func TestCoalescerTakesOnlyLaterRuns(t *testing.T) {
	started := make(chan uint64)
	release := make(chan struct{})
	var mu sync.Mutex
	runs := uint64(0)
	c := coalescer{run: func(context.Context) (uint64, error) {
		mu.Lock()
		runs++
		n := runs
		mu.Unlock()
		started <- n
		<-release
		return n, nil
	}}
	bg := func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) }
	do := func() <-chan uint64 {
		ch := make(chan uint64, 1)
		go func() {
			idx, err := c.do(context.Background(), bg)
			if err != nil {
				t.Errorf("do: %v", err)
			}
			ch <- idx
		}()
		return ch
	}
	first := do()
	if n := <-started; n != 1 {
		t.Fatalf("first run %d", n)
	}
	// Run 1 is in flight: these two must wait for run 2.
	second, third := do(), do()
	eventually(t, 10*time.Second, "two callers waiting for the next run", func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		return c.next != nil && c.next.joined == 2
	})
	release <- struct{}{}
	if got := <-first; got != 1 {
		t.Fatalf("first caller got run %d, want 1", got)
	}
	if n := <-started; n != 2 {
		t.Fatalf("second run %d", n)
	}
	release <- struct{}{}
	for _, ch := range []<-chan uint64{second, third} {
		if got := <-ch; got != 2 {
			t.Fatalf("a caller that arrived during run 1 got run %d, want 2", got)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if runs != 2 {
		t.Fatalf("%d runs for three callers, want 2", runs)
	}
}

// A caller whose context ends stops waiting; the run goes on for others.
func TestCoalescerCallerGivesUp(t *testing.T) {
	release := make(chan struct{})
	c := coalescer{run: func(context.Context) (uint64, error) {
		<-release
		return 7, nil
	}}
	bg := func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) }
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := c.do(ctx, bg)
		errc <- err
	}()
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("do after cancel: %v", err)
	}
	close(release)
	if idx, err := c.do(context.Background(), bg); err != nil || idx != 7 {
		t.Fatalf("do: %d, %v", idx, err)
	}
}
