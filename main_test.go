package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/natlog/natlog/internal/testnats"
)

// The tests in this package run the real natlog binary, built once by
// TestMain, as a user would: natlog serve in a process of its own, driven
// by the natlog CLI, the nats CLI, a NATS client and HTTP.

var natlogBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "natlog-bin-")
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	natlogBin = filepath.Join(dir, "natlog")
	if out, err := exec.Command("go", "build", "-o", natlogBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "go build natlog: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	testnats.Cleanup()
	os.Exit(code)
}

// syncBuffer is a bytes.Buffer safe for a process to write while a test
// reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// node is a natlog serve process.
type node struct {
	t       *testing.T
	dataDir string
	natsURL string
	httpURL string
	args    []string
	cmd     *exec.Cmd
	out     *syncBuffer
	exited  chan struct{}
	err     error // the process's exit, once exited is closed
}

// startNode runs natlog serve on free loopback ports with its data in
// dataDir (a new temporary directory if ""), plus extra flags, and waits
// until it is ready.
func startNode(t *testing.T, dataDir string, extra ...string) *node {
	t.Helper()
	if dataDir == "" {
		dataDir = t.TempDir()
	}
	n := &node{t: t, dataDir: dataDir}
	natsPort, httpPort := testnats.FreePort(t), testnats.FreePort(t)
	n.natsURL = "nats://127.0.0.1:" + strconv.Itoa(natsPort)
	n.httpURL = "http://127.0.0.1:" + strconv.Itoa(httpPort)
	n.args = append([]string{"serve", "--data-dir", dataDir, "--http-listen", "127.0.0.1:" + strconv.Itoa(httpPort)}, extra...)
	if !hasFlag(extra, "--nats-url") {
		n.args = append(n.args, "--nats-listen", "127.0.0.1:"+strconv.Itoa(natsPort))
	}
	n.start()
	t.Cleanup(n.kill)
	return n
}

func hasFlag(args []string, name string) bool {
	for _, a := range args {
		if a == name || strings.HasPrefix(a, name+"=") {
			return true
		}
	}
	return false
}

func (n *node) start() {
	n.t.Helper()
	n.out = &syncBuffer{}
	n.cmd = exec.Command(natlogBin, n.args...)
	n.cmd.Stdout, n.cmd.Stderr = n.out, n.out
	n.cmd.Env = append(os.Environ(), "NATS_URL=") // the node's flags only
	if err := n.cmd.Start(); err != nil {
		n.t.Fatal(err)
	}
	n.exited = make(chan struct{})
	go func() { n.err = n.cmd.Wait(); close(n.exited) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		resp, err := http.Get(n.httpURL + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return
			}
		}
		select {
		case <-n.exited:
			n.t.Fatalf("natlog serve exited: %v\n%s", n.err, n.out)
		default:
		}
		if time.Now().After(deadline) {
			n.t.Fatalf("natlog serve not ready after 20s:\n%s", n.out)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// kill kills the process (kill -9) and waits for it.
func (n *node) kill() {
	if n.cmd != nil && n.cmd.Process != nil {
		n.cmd.Process.Kill()
		<-n.exited
	}
}

// signal sends sig and waits for the process to exit, returning its exit
// code.
func (n *node) signal(sig syscall.Signal) int {
	n.t.Helper()
	n.cmd.Process.Signal(sig)
	select {
	case <-n.exited:
	case <-time.After(30 * time.Second):
		n.t.Fatalf("natlog serve did not exit after %v:\n%s", sig, n.out)
	}
	return exitCode(n.err)
}

func exitCode(err error) int {
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		return ee.ExitCode()
	}
	if err != nil {
		return -1
	}
	return 0
}

// cli runs a natlog client command against the node and returns its
// stdout, stderr and exit code.
func (n *node) cli(stdin string, args ...string) (string, string, int) {
	n.t.Helper()
	return runCLI(n.t, n.natsURL, stdin, args...)
}

func runCLI(t *testing.T, url, stdin string, args ...string) (string, string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, natlogBin, args...)
	cmd.Env = append(os.Environ(), "NATS_URL="+url)
	cmd.Stdin = strings.NewReader(stdin)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	if ctx.Err() != nil {
		t.Fatalf("natlog %v timed out", args)
	}
	return stdout.String(), stderr.String(), exitCode(err)
}

// mustCLI runs a client command that must succeed and returns its stdout.
func (n *node) mustCLI(stdin string, args ...string) string {
	n.t.Helper()
	out, errOut, code := n.cli(stdin, args...)
	if code != 0 {
		n.t.Fatalf("natlog %s: exit %d\n%s%s", strings.Join(args, " "), code, out, errOut)
	}
	return out
}

// waitFor polls cond until it holds or the deadline passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(d)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", d, what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}
