package raftfsm

import (
	"bytes"
	"context"
	"errors"
	"io"
	"testing"
	"time"

	"github.com/natlog/natlog/logcore"
)

// WaitApplied returns once the FSM has applied the index: at once for one
// already applied, on the Apply (or restore) that reaches it otherwise, and
// with the context's error if none does.
func TestFSMWaitApplied(t *testing.T) {
	f := openFSM(t, fsmConfig(t.TempDir(), logcore.OSFS{}))
	defer f.Close()
	ctx := context.Background()
	if err := f.WaitApplied(ctx, 0); err != nil {
		t.Fatalf("WaitApplied(0) on a new FSM: %v", err)
	}
	f.Apply(entry(t, 1, 1, appendOp("a", "x")))
	if err := f.WaitApplied(ctx, 1); err != nil {
		t.Fatalf("WaitApplied(1) after applying 1: %v", err)
	}

	// Waiters for 3 and 5; entries 2..5 applied one by one wake them in
	// turn.
	done := map[uint64]chan error{3: make(chan error, 1), 5: make(chan error, 1)}
	for idx, ch := range done {
		go func() { ch <- f.WaitApplied(ctx, idx) }()
	}
	deadline := time.Now().Add(10 * time.Second)
	for f.appliedWaiters.Load() != 2 {
		if time.Now().After(deadline) {
			t.Fatal("waiters did not start")
		}
		time.Sleep(time.Millisecond)
	}
	for idx := uint64(2); idx <= 5; idx++ {
		for w, ch := range done {
			select {
			case err := <-ch:
				t.Fatalf("WaitApplied(%d) returned %v with %d applied", w, err, idx-1)
			default:
			}
		}
		f.Apply(entry(t, idx, int64(idx), appendOp("a", "x")))
		if ch, ok := done[idx]; ok {
			select {
			case err := <-ch:
				if err != nil {
					t.Fatalf("WaitApplied(%d): %v", idx, err)
				}
			case <-time.After(10 * time.Second):
				t.Fatalf("WaitApplied(%d) not woken by applying %d", idx, idx)
			}
			delete(done, idx)
		}
	}

	// Not reached: the context decides.
	cctx, cancel := context.WithTimeout(ctx, 20*time.Millisecond)
	defer cancel()
	if err := f.WaitApplied(cctx, 100); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("WaitApplied(100) with 5 applied: %v, want the deadline", err)
	}

	// A restore reaches it too, and so does StartedFrom.
	snap, err := f.Snapshot()
	must(t, err)
	var sink memSink
	must(t, snap.Persist(&sink))
	dst := openFSM(t, fsmConfig(t.TempDir(), logcore.OSFS{}))
	defer dst.Close()
	restored := make(chan error, 1)
	go func() { restored <- dst.WaitApplied(ctx, 5) }()
	must(t, dst.Restore(io.NopCloser(bytes.NewReader(sink.Bytes()))))
	if err := <-restored; err != nil {
		t.Fatalf("WaitApplied(5) across a restore of the cut at 5: %v", err)
	}
	started := make(chan error, 1)
	go func() { started <- dst.WaitApplied(ctx, 9) }()
	dst.StartedFrom(9)
	if err := <-started; err != nil {
		t.Fatalf("WaitApplied(9) across StartedFrom(9): %v", err)
	}
}

// Created gives the index of the entry that created a log: a log deleted
// and created again under its name has a later one.
func TestFSMCreatedIndex(t *testing.T) {
	f := openFSM(t, fsmConfig(t.TempDir(), logcore.OSFS{}))
	defer f.Close()
	f.Apply(entry(t, 3, 30, appendOp("a", "x")))
	if at, idx, ok := f.Created("a"); !ok || idx != 3 || at != 30 {
		t.Fatalf("Created(a) = %d, %d, %v; want 30, 3, true", at, idx, ok)
	}
	f.Apply(entry(t, 4, 40, Op{Kind: OpDelete, Log: "a"}))
	if _, _, ok := f.Created("a"); ok {
		t.Fatal("Created(a) after its delete: still there")
	}
	f.Apply(entry(t, 5, 50, Op{Kind: OpCreate, Log: "a", Settings: &LogSettings{}}))
	if at, idx, ok := f.Created("a"); !ok || idx != 5 || at != 50 {
		t.Fatalf("Created(a) after a new create = %d, %d, %v; want 50, 5, true", at, idx, ok)
	}
}
