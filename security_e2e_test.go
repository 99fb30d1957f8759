package main

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/client"
	"github.com/natlog/natlog/internal/testnats"
)

// permissionsConf is the nats-server authorization of docs/operations.md:
// the nodes' own user, an application that may append to and read one log,
// and an operator who may do anything but speak the nodes' internal
// subjects (Raft, membership).
const permissionsConf = `
authorization {
  users = [
    { user: natlog, password: "s3cret" }
    { user: app, password: "app-pass",
      permissions: {
        publish: ["natlog.append.orders", "natlog.read.orders", "natlog.info.orders",
                  "natlog.cluster.status"]
        subscribe: ["_INBOX.>"] } }
    { user: ops, password: "ops-pass",
      permissions: {
        publish: { allow: ["natlog.>", "$SRV.>"], deny: ["natlog._raft.>", "natlog._cluster.>"] }
        subscribe: ["_INBOX.>"] } }
  ]
}
`

// TestClusterWithPermissions: a three-node cluster on a nats-server
// process with users and permissions (docs/operations.md). The application
// user appends and reads its log from the nats CLI, the natlog CLI and the
// Go client, and is refused at once (not after a timeout) everything else;
// the operator steps the leader down; neither can publish on the nodes'
// internal subjects, which the nodes themselves use.
func TestClusterWithPermissions(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "nats.conf")
	if err := os.WriteFile(conf, []byte(permissionsConf), 0o644); err != nil {
		t.Fatal(err)
	}
	ns := testnats.StartServer(t, "-c", conf)
	for _, id := range []string{"n1", "n2", "n3"} {
		startNode(t, "", "--nats-url", ns.URL, "--nats-user", "natlog", "--nats-password", "s3cret",
			"--node-id", id, "--cluster", "sec", "--bootstrap-expect", "3", "--raft-timeout", "300ms",
			"--announce-interval", "100ms", "--raft-log-level", "off")
	}
	as := func(user, pass string) string {
		return strings.Replace(ns.URL, "nats://", "nats://"+user+":"+pass+"@", 1)
	}
	nodeConn, err := nats.Connect(as("natlog", "s3cret"))
	if err != nil {
		t.Fatal(err)
	}
	defer nodeConn.Close()
	leader := clusterLeader(t, nodeConn, "")

	// The application, from the nats CLI.
	cli := testnats.CLI(t)
	app := as("app", "app-pass")
	out, err := testnats.RunCLI(t, cli, app, "req", "natlog.append.orders", "hello")
	// In cluster mode the reply also names the append's Raft index.
	if err != nil || !strings.Contains(out, `{"log":"orders","offset":0,"index":`) {
		t.Fatalf("nats req natlog.append.orders as app: %v\n%s", err, out)
	}
	out, err = testnats.RunCLI(t, cli, app, "req", "natlog.read.orders", "0")
	if err != nil || !strings.Contains(out, "hello") {
		t.Fatalf("nats req natlog.read.orders as app: %v\n%s", err, out)
	}
	// (nats req reports the violation but exits 0.)
	out, err = testnats.RunCLI(t, cli, app, "req", "natlog.append.payments", "x")
	if !strings.Contains(out, "Permissions Violation") {
		t.Fatalf("nats req natlog.append.payments as app: %v\n%s", err, out)
	}

	// The application, from the natlog CLI.
	natlogAs := func(user, pass string, args ...string) (string, string, int) {
		t.Helper()
		return runCLI(t, ns.URL, "", append(args, "--user", user, "--password", pass)...)
	}
	if o, e, code := natlogAs("app", "app-pass", "append", "orders", "from-cli"); code != 0 || o != "orders: appended at offset 1\n" {
		t.Fatalf("natlog append as app: exit %d\n%s%s", code, o, e)
	}
	if o, e, code := natlogAs("app", "app-pass", "read", "orders", "0", "--count", "2", "--json"); code != 0 || !strings.Contains(o, "from-cli") {
		t.Fatalf("natlog read as app: exit %d\n%s%s", code, o, e)
	}
	// Refused on the server's violation (a request that waited for its
	// timeout would say "no reply on ... within").
	for _, args := range [][]string{{"append", "payments", "x"}, {"logs"}, {"cluster", "step-down"}} {
		o, e, code := natlogAs("app", "app-pass", append(args, "--timeout", "1m")...)
		if code == 0 || !strings.Contains(e, `not permitted: NATS user "app" may not publish to natlog.`) {
			t.Fatalf("natlog %v as app: exit %d\n%s%s", args, code, o, e)
		}
	}

	// The application, from the Go client: appends, and reads that the
	// client would route to a node's own subject, which app may not
	// publish to, so it falls back to the shared one.
	var (
		handlerMu sync.Mutex
		seen      []error // by the application's own error handler
	)
	appConn, err := nats.Connect(app, nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		handlerMu.Lock()
		seen = append(seen, err)
		handlerMu.Unlock()
	}))
	if err != nil {
		t.Fatal(err)
	}
	defer appConn.Close()
	cl, err := client.Connect(appConn, client.WithRequestTimeout(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer cl.Close()
	ctx := t.Context()
	off, err := cl.Append(ctx, "orders", []byte("from-go"))
	if err != nil {
		t.Fatalf("client append as app: %v", err)
	}
	b, err := cl.Fetch(ctx, "orders", 0, client.FetchOptions{Max: 10, MinOffset: &off})
	if err != nil || len(b.Records) != 3 || string(b.Records[2].Value) != "from-go" {
		t.Fatalf("client fetch as app: %+v, %v", b, err)
	}
	// The violation, not a timeout (the client would retry those until
	// ctx ends).
	if _, err := cl.Append(ctx, "payments", []byte("x")); !errors.Is(err, nats.ErrPermissionViolation) {
		t.Fatalf("client append to payments as app: %v, want the permissions violation", err)
	}

	// The client's error handler called the application's.
	waitFor(t, 5*time.Second, "the application's error handler to see the violations", func() bool {
		handlerMu.Lock()
		defer handlerMu.Unlock()
		return len(seen) > 0
	})

	// The internal subjects: the nodes use them; app and ops cannot.
	probe, err := nodeConn.SubscribeSync("natlog._cluster.sec.probe")
	if err != nil {
		t.Fatal(err)
	}
	nodeConn.Flush()
	for _, u := range []string{app, as("ops", "ops-pass")} {
		for _, subj := range []string{"natlog._cluster.sec.probe", "natlog._raft.probe"} {
			out, err := testnats.RunCLI(t, cli, u, "pub", subj, "forged")
			if err == nil || !strings.Contains(out, "Permissions Violation") {
				t.Fatalf("nats pub %s as %s: %v\n%s", subj, u, err, out)
			}
		}
	}
	if err := nodeConn.Publish("natlog._cluster.sec.probe", []byte("real")); err != nil {
		t.Fatal(err)
	}
	if m, err := probe.NextMsg(5 * time.Second); err != nil || string(m.Data) != "real" {
		t.Fatalf("probe on the internal subject got %v (%v), want only the node user's message", m, err)
	}

	// The operator moves the leadership.
	ops := func(args ...string) string {
		t.Helper()
		o, e, code := natlogAs("ops", "ops-pass", args...)
		if code != 0 {
			t.Fatalf("natlog %v as ops: exit %d\n%s%s", args, code, o, e)
		}
		return o
	}
	ops("cluster", "step-down")
	if got := clusterLeader(t, nodeConn, leader); got == leader {
		t.Fatalf("leader still %s after the operator's step-down", got)
	}
	var logs struct {
		Logs []struct {
			Log string `json:"log"`
		} `json:"logs"`
	}
	if err := json.Unmarshal([]byte(ops("logs", "--json")), &logs); err != nil || len(logs.Logs) != 1 || logs.Logs[0].Log != "orders" {
		t.Fatalf("natlog logs as ops: %+v %v", logs, err)
	}
}
