package bench

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"
)

// target is one system under load: natlog (natlog.go) or JetStream
// (jetstream.go). Offsets are 0-based for both (JetStream's sequence 1 is
// offset 0). A target is used by one goroutine at a time.
type target interface {
	// Setup makes the log or stream, retrying while the system is not
	// ready (no leader yet), until ctx ends.
	Setup(ctx context.Context) error
	// Append appends one record and waits for its acknowledgement.
	Append(ctx context.Context, payload []byte) error
	// AppendWindow keeps window appends of payload in flight until the
	// time until, then waits for those in flight. It records each
	// append's latency in lat and returns how many were acknowledged.
	AppendWindow(ctx context.Context, payload []byte, window int, until time.Time, lat *latencies) (int64, error)
	// AppendBatch appends the records in one request (atomically where
	// the system can) and waits for the acknowledgement.
	AppendBatch(ctx context.Context, payloads [][]byte) error
	// Read reads the record at off.
	Read(ctx context.Context, off uint64) error
	// Fetch reads up to max records in order from where the previous
	// Fetch ended, from offset 0 again once total records were read.
	// It returns how many it read.
	Fetch(ctx context.Context, max int, total uint64) (int, error)
	// Consume streams the records [0, total) in order, calling each after
	// every `every` records received.
	Consume(ctx context.Context, total uint64, every int, each func()) error
	// Settle waits until every replica can serve the records [0, total),
	// so that reads spread over the replicas find them.
	Settle(ctx context.Context, total uint64) error
	// Close releases the target's connection (the log stays).
	Close()
}

// opTimeout bounds one request: far beyond any sane latency, so that a
// lost reply fails the step rather than hanging it.
const opTimeout = 30 * time.Second

// load runs mode sc.Mode against t until the time until and returns how
// many records it appended or read; lat gets each operation's latency.
func load(ctx context.Context, t target, cfg *Config, sc Scenario, until time.Time, lat *latencies) (int64, error) {
	payload := makePayload(sc.Payload)
	var n int64
	seq := func(op func() (int, error)) error {
		for time.Now().Before(until) {
			if err := ctx.Err(); err != nil {
				return err
			}
			t0 := time.Now()
			k, err := op()
			if err != nil {
				return err
			}
			lat.record(time.Since(t0))
			n += int64(k)
		}
		return nil
	}
	var err error
	switch sc.Mode {
	case ModeOne:
		err = seq(func() (int, error) { return 1, t.Append(ctx, payload) })
	case ModeWindow:
		n, err = t.AppendWindow(ctx, payload, cfg.Window, until, lat)
	case ModeBatch:
		batch := make([][]byte, cfg.BatchSize)
		for i := range batch {
			batch[i] = payload
		}
		err = seq(func() (int, error) { return len(batch), t.AppendBatch(ctx, batch) })
	case ModeRead:
		rng := rand.New(rand.NewPCG(uint64(time.Now().UnixNano()), 1))
		total := uint64(cfg.Prefill)
		err = seq(func() (int, error) { return 1, t.Read(ctx, rng.Uint64N(total)) })
	case ModeFetch:
		err = seq(func() (int, error) { return t.Fetch(ctx, cfg.ReadMax, uint64(cfg.Prefill)) })
	case ModeConsume:
		for time.Now().Before(until) && err == nil {
			last := time.Now()
			err = t.Consume(ctx, uint64(cfg.Prefill), cfg.ReadMax, func() {
				now := time.Now()
				lat.record(now.Sub(last))
				last = now
			})
			if err == nil {
				n += int64(cfg.Prefill)
			}
		}
	default:
		err = fmt.Errorf("unknown mode %q", sc.Mode)
	}
	return n, err
}

// prefill appends cfg.Prefill records of the scenario's payload in
// batches, for the read modes.
func prefill(ctx context.Context, t target, cfg *Config, sc Scenario) error {
	payload := makePayload(sc.Payload)
	const batch = 100
	full := make([][]byte, batch)
	for i := range full {
		full[i] = payload
	}
	for done := 0; done < cfg.Prefill; done += batch {
		if err := t.AppendBatch(ctx, full[:min(batch, cfg.Prefill-done)]); err != nil {
			return fmt.Errorf("prefill: %w", err)
		}
	}
	if err := t.Settle(ctx, uint64(cfg.Prefill)); err != nil {
		return fmt.Errorf("prefill: waiting for the replicas: %w", err)
	}
	return nil
}

// makePayload is n bytes of printable, not very compressible data.
func makePayload(n int) []byte {
	const alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
	rng := rand.New(rand.NewPCG(uint64(n), 42))
	b := make([]byte, n)
	for i := range b {
		b[i] = alphabet[rng.IntN(len(alphabet))]
	}
	return b
}

// retry calls f until it succeeds, fails with an error that retryable
// says is final, or ctx ends; it polls every interval.
func retry(ctx context.Context, interval time.Duration, f func() error, retryable func(error) bool) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		err := f()
		if err == nil {
			return nil
		}
		if !retryable(err) {
			return err
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-tick.C:
		}
	}
}
