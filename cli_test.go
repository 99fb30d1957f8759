package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/client"
	"github.com/natlog/natlog/sidecar/protocol"
)

// The client's errors become messages for people: a node's error reply in
// today's "description (status N, err_code M)" form, no node answering,
// and no reply in time (saying so when an append may have been written).
func TestExplain(t *testing.T) {
	subjects, _ := protocol.NewSubjects("natlog")
	c := cliConn{server: "nats://127.0.0.1:4222", prefix: "natlog", timeout: 2 * time.Second, subjects: subjects}
	other := errors.New("something else")
	for _, tc := range []struct {
		name    string
		subject string
		err     error
		want    string
	}{
		{"node error reply", "natlog.read.orders",
			&client.Error{Op: "read", Log: "orders", Err: protocol.Errorf(protocol.ErrOffsetOutOfRange, "offset 99 out of range [0, 9]")},
			"offset 99 out of range [0, 9] (status 404, err_code 10011)"},
		{"no node answers", "natlog.logs",
			&client.Error{Op: "logs", Err: nats.ErrNoResponders, Attempts: 9},
			`no natlog node answers on natlog.logs at nats://127.0.0.1:4222 (is "natlog serve" running, with --prefix natlog? a cluster without a leader?)`},
		{"no node answers on connect", "natlog.info.orders",
			&client.Error{Op: "connect", Err: nats.ErrNoResponders, Attempts: 1},
			`no natlog node answers on natlog.info.orders at nats://127.0.0.1:4222 (is "natlog serve" running, with --prefix natlog? a cluster without a leader?)`},
		{"read timeout", "natlog.read.orders",
			&client.Error{Op: "read", Log: "orders", Err: context.DeadlineExceeded, Indefinite: true},
			"no reply on natlog.read.orders within 2s"},
		{"append timeout, outcome unknown", "natlog.append.orders",
			&client.Error{Op: "append", Log: "orders", Err: nats.ErrTimeout, Indefinite: true},
			"no reply on natlog.append.orders within 2s (the append may have been written)"},
		{"append timeout on connect: nothing sent", "natlog.append.orders",
			&client.Error{Op: "connect", Err: context.DeadlineExceeded},
			"no reply on natlog.append.orders within 2s"},
		{"refused by the NATS server's permissions", "natlog.append.orders",
			&client.Error{Op: "connect", Err: fmt.Errorf("%w: Permissions Violation for Publish to \"natlog.cluster.status\"", nats.ErrPermissionViolation)},
			`not permitted: this NATS user may not publish to natlog.cluster.status (the NATS server's permissions)`},
		{"other errors as they are", "natlog.logs", other, other.Error()},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c.subject = tc.subject
			if got := c.explain(tc.err).Error(); got != tc.want {
				t.Errorf("explain(%v)\n got %q\nwant %q", tc.err, got, tc.want)
			}
		})
	}
	if c.explain(nil) != nil {
		t.Error("explain(nil) is not nil")
	}
}

// natlog tail -f prints the newest records, then each new one as it is
// appended, until SIGINT, and exits 0.
func TestCLITailFollow(t *testing.T) {
	n := startNode(t, "")
	n.mustCLI("", "append", "orders", "a", "b", "c")
	cmd, out, errOut := startTail(t, n, "orders", "-n", "2", "-f", "--raw")
	waitFor(t, 10*time.Second, "the last 2 records", func() bool { return out.String() == "b\nc\n" })
	n.mustCLI("", "append", "orders", "d")
	n.mustCLI("d2\nd3\n", "append", "orders")
	waitFor(t, 10*time.Second, "the new records", func() bool { return out.String() == "b\nc\nd\nd2\nd3\n" })
	interruptTail(t, cmd, errOut)
	if s := out.String(); s != "b\nc\nd\nd2\nd3\n" || strings.TrimSpace(errOut.String()) != "" {
		t.Fatalf("stdout %q, stderr %q", s, errOut.String())
	}
}

// natlog tail -f on a log that does not exist yet waits for it, as tail -F
// waits for a file, and prints its records from the first.
func TestCLITailFollowWaitsForLog(t *testing.T) {
	n := startNode(t, "")
	cmd, out, errOut := startTail(t, n, "later", "-f", "--raw")
	waitFor(t, 10*time.Second, "the waiting notice", func() bool { return strings.Contains(errOut.String(), "does not exist yet") })
	n.mustCLI("", "append", "later", "first", "second")
	waitFor(t, 10*time.Second, "the records", func() bool { return out.String() == "first\nsecond\n" })
	interruptTail(t, cmd, errOut)
}

// startTail starts "natlog tail ARGS" against n; it is killed at the end
// of the test if still running.
func startTail(t *testing.T, n *node, args ...string) (*exec.Cmd, *syncBuffer, *syncBuffer) {
	t.Helper()
	cmd := exec.Command(natlogBin, append([]string{"tail"}, args...)...)
	cmd.Env = append(os.Environ(), "NATS_URL="+n.natsURL)
	out, errOut := &syncBuffer{}, &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, errOut
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { cmd.Process.Kill() })
	return cmd, out, errOut
}

// interruptTail sends SIGINT to a following tail and checks that it exits 0.
func interruptTail(t *testing.T, cmd *exec.Cmd, errOut *syncBuffer) {
	t.Helper()
	cmd.Process.Signal(syscall.SIGINT)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if code := exitCode(err); code != 0 {
			t.Fatalf("exit %d after SIGINT; stderr %q", code, errOut.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("tail -f did not stop after SIGINT")
	}
}
