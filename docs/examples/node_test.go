// Package examples_test runs the client examples in docs/examples against a
// real natlog node, so that they stay true to the protocol.
package examples_test

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/sidecar"
)

// startNode starts a natlog node with an embedded NATS server on a free
// loopback port, HTTP off and its data in a temporary directory, shut down
// when the test ends.
func startNode(t *testing.T) *sidecar.Server {
	t.Helper()
	cfg := sidecar.DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.NATSListen = "127.0.0.1:0"
	cfg.HTTPListen = ""
	cfg.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	s, err := sidecar.Start(cfg)
	if err != nil {
		t.Fatalf("sidecar.Start: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if err := s.Shutdown(ctx); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return s
}

// TestNodeExample runs docs/examples/node/example.mjs, which checks every
// reply it gets and exits non-zero if one is wrong, then checks from Go that
// the log holds what it wrote: "hello", a batch of three, and "late".
func TestNodeExample(t *testing.T) {
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node (Node.js) is not on PATH: the JavaScript example is not run")
	}
	const dir = "node"
	if _, err := os.Stat(filepath.Join(dir, "node_modules")); err != nil {
		t.Skip("docs/examples/node/node_modules is missing: run `npm ci --prefix docs/examples/node` to run the JavaScript example")
	}

	s := startNode(t)
	const log = "node-example"

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, node, "example.mjs", log)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "NATS_URL="+s.NATSURL())
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("node example.mjs: %v (context: %v)\n%s", err, ctx.Err(), out.String())
	}
	t.Logf("node example.mjs:\n%s", out.String())

	nc, err := nats.Connect(s.NATSURL(), nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	defer nc.Close()

	m, err := nc.Request(s.Subjects().Info(log), nil, 5*time.Second)
	if err != nil {
		t.Fatalf("info: %v", err)
	}
	var info struct {
		NextOffset uint64 `json:"next_offset"`
		Records    uint64 `json:"records"`
	}
	if err := json.Unmarshal(m.Data, &info); err != nil || m.Header.Get("Status") != "" {
		t.Fatalf("info reply %q (headers %v): %v", m.Data, m.Header, err)
	}
	if info.NextOffset != 5 || info.Records != 5 {
		t.Fatalf("log %s: next_offset %d, records %d; want 5 and 5", log, info.NextOffset, info.Records)
	}

	for offset, want := range []string{"hello", "one", "two", "three", "late"} {
		m, err := nc.Request(s.Subjects().Read(log), []byte(strconv.Itoa(offset)), 5*time.Second)
		if err != nil {
			t.Fatalf("read %d: %v", offset, err)
		}
		if m.Header.Get("Status") != "" || string(m.Data) != want {
			t.Errorf("read %d: got %q (headers %v), want %q", offset, m.Data, m.Header, want)
		}
	}
}
