package main

import (
	"encoding/json"
	"io"
	"net/http"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/natlog/natlog/internal/testnats"
	"github.com/natlog/natlog/sidecar/protocol"
)

// The natlog CLI against the real binary: every command, human and JSON
// output, and its errors.
func TestCLI(t *testing.T) {
	n := startNode(t, "")
	steps := []struct {
		args   []string
		stdin  string
		code   int
		out    string // regexp the stdout must match
		errOut string // regexp the stderr must match
	}{
		{[]string{"append", "orders", "hello"}, "", 0, `^orders: appended at offset 0\n$`, ""},
		{[]string{"append", "orders", "a", "b", "c"}, "", 0, `^orders: appended 3 records at offsets 1-3\n$`, ""},
		{[]string{"append", "orders"}, "l1\nl2\n\nl4\n", 0, `^orders: appended 4 records at offsets 4-7\n$`, ""},
		{[]string{"append", "orders", "x", "-H", "trace=t1", "--json"}, "", 0, `^\{"log":"orders","offset":8\}\n$`, ""},
		{[]string{"append", "orders", "once", "--msg-id", "m1"}, "", 0, `offset 9\n$`, ""},
		{[]string{"append", "orders", "once", "--msg-id", "m1"}, "", 0, `offset 9 \(a duplicate`, ""},
		{[]string{"append", "orders", "cond", "--expected-offset", "3"}, "", 1, `^$`, `expected offset 3 but log "orders"'s next offset is 10 \(status 409, err_code 10021\)`},
		// The client gives every append a Natlog-Msg-Id (its retries
		// are safe with it), and the node stores it with the records;
		// people see it with --json only.
		{[]string{"read", "orders", "0"}, "", 0, `^0  \d{4}-\d\d-\d\dT[\d:.]+Z  hello\n$`, ""},
		{[]string{"read", "orders", "8", "--json"}, "", 0, `^\{"log":"orders","offset":8,"time":\d+,"headers":\{"Natlog-Msg-Id":\["\w+-\d+"\],"trace":\["t1"\]\},"value":"x"\}\n$`, ""},
		{[]string{"read", "orders", "1", "--count", "3", "--raw"}, "", 0, `^a\nb\nc\n$`, ""},
		{[]string{"read", "orders", "8", "--count", "100", "--raw"}, "", 0, `^x\nonce\n$`, `2 of 100 records: the log ends at offset 10`},
		{[]string{"read", "orders", "99"}, "", 1, `^$`, `^natlog: offset 99 out of range \[0, 9\] \(status 404, err_code 10011\)\n$`},
		{[]string{"read", "nope", "0"}, "", 1, `^$`, `unknown log "nope"`},
		{[]string{"read", "orders"}, "", 2, `^$`, `want LOG OFFSET`},
		{[]string{"read", "orders", "x"}, "", 2, `^$`, `OFFSET "x"`},
		{[]string{"append", "bad.name", "v"}, "", 2, `^$`, `bad log name`},
		{[]string{"tail", "orders", "-n", "2", "--raw"}, "", 0, `^x\nonce\n$`, ""},
		{[]string{"tail", "orders", "--from", "6", "--raw"}, "", 0, `^\nl4\nx\nonce\n$`, ""},
		{[]string{"logs"}, "", 0, `LOG +RECORDS +FIRST +LAST +SEGMENTS +SIZE +SYNC\norders +10 +0 +9 +1 +\d+ B +always\n`, ""},
		{[]string{"logs", "--json"}, "", 0, `^\{"logs":\[\{"log":"orders",`, ""},
		{[]string{"info", "orders"}, "", 0, `(?s)log: +orders\n.*records: +10\n.*next offset: +10\n`, ""},
		{[]string{"info", "orders", "--json"}, "", 0, `"next_offset":10`, ""},
		{[]string{"status"}, "", 0, `(?s)^node \S+ \(leader, single mode\).*PEER +STATE`, ""},
		{[]string{"status", "--json"}, "", 0, `"state":"leader"`, ""},
		{[]string{"create", "audit", "--segment-bytes", "1MiB", "--retention-segments", "3"}, "", 0, `segment size: +1.0 MiB\n(?s:.*)retention segments: 3`, ""},
		{[]string{"create", "audit", "--segment-bytes", "2MiB"}, "", 1, `^$`, `exists with other settings \(status 409`},
		{[]string{"delete", "audit"}, "", 0, `^audit: deleted\n$`, ""},
		{[]string{"delete", "audit"}, "", 1, `^$`, `unknown log "audit"`},
		{[]string{"cluster", "step-down"}, "", 1, `^$`, `no natlog node answers on natlog.cluster.stepdown`},
		{[]string{"cluster", "step-down", "a", "b"}, "", 2, `^$`, `want at most one NODE`},
		{[]string{"frobnicate"}, "", 2, `^$`, `unknown command "frobnicate"`},
		{[]string{"logs", "--prefix", "elsewhere"}, "", 1, `^$`, `no natlog node answers on elsewhere.logs`},
		{[]string{"version"}, "", 0, `^natlog \S+\n$`, ""},
	}
	for _, st := range steps {
		out, errOut, code := n.cli(st.stdin, st.args...)
		if code != st.code || !regexp.MustCompile(st.out).MatchString(out) || (st.errOut != "" && !regexp.MustCompile(st.errOut).MatchString(errOut)) {
			t.Errorf("natlog %s: exit %d (want %d)\nstdout: %q (want /%s/)\nstderr: %q (want /%s/)",
				strings.Join(st.args, " "), code, st.code, out, st.out, errOut, st.errOut)
		}
	}
	// The client cannot reach a server.
	_, errOut, code := runCLI(t, "nats://127.0.0.1:1", "", "logs")
	if code != 1 || !strings.Contains(errOut, "cannot connect to NATS at nats://127.0.0.1:1") {
		t.Errorf("unreachable server: exit %d, %q", code, errOut)
	}
}

// The commands of the design document, from the real nats CLI, against
// the real binary; and the HTTP gateway, as curl would use it.
func TestBinaryWithNatsCLIAndHTTP(t *testing.T) {
	cli := testnats.CLI(t)
	n := startNode(t, "")
	out, err := testnats.RunCLI(t, cli, n.natsURL, "req", "natlog.append.orders", "hello")
	if err != nil || !strings.Contains(out, `{"log":"orders","offset":0}`) {
		t.Fatalf("nats req append: %v\n%s", err, out)
	}
	out, err = testnats.RunCLI(t, cli, n.natsURL, "req", "natlog.read.orders", "0")
	if err != nil || !strings.Contains(out, "Natlog-Offset: 0") || !strings.Contains(out, "Natlog-Time: ") || !strings.HasSuffix(strings.TrimSpace(out), "hello") {
		t.Fatalf("nats req read: %v\n%s", err, out)
	}
	out, err = testnats.RunCLI(t, cli, n.natsURL, "req", "natlog.info.orders", "")
	if err != nil || !strings.Contains(out, `"next_offset":1`) {
		t.Fatalf("nats req info: %v\n%s", err, out)
	}
	out, err = testnats.RunCLI(t, cli, n.natsURL, "micro", "ls")
	if err != nil || !strings.Contains(out, "natlog") {
		t.Fatalf("nats micro ls: %v\n%s", err, out)
	}

	resp, err := http.Post(n.httpURL+"/v1/logs/orders/records", "text/plain", strings.NewReader("from curl"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || string(body) != `{"log":"orders","offset":1}`+"\n" {
		t.Fatalf("POST: %d %s", resp.StatusCode, body)
	}
	resp, err = http.Get(n.httpURL + "/v1/logs/orders/records/1")
	if err != nil {
		t.Fatal(err)
	}
	var rec map[string]any
	json.NewDecoder(resp.Body).Decode(&rec)
	resp.Body.Close()
	if rec["value"] != "from curl" {
		t.Fatalf("GET: %v", rec)
	}
	resp, err = http.Get(n.httpURL + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ = io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), `natlog_requests_total{op="append",outcome="ok"} 1`) {
		t.Fatalf("metrics lack the append")
	}
}

// natlog serve on an existing nats-server process (--nats-url), with its
// settings from the environment.
func TestBinaryOnExternalNATS(t *testing.T) {
	ns := testnats.StartServer(t)
	t.Setenv("NATLOG_PREFIX", "acme.log")
	t.Setenv("NATLOG_NODE_ID", "env-node")
	n := startNode(t, "", "--nats-url", ns.URL)
	n.natsURL = ns.URL
	out := n.mustCLI("", "append", "orders", "v", "--prefix", "acme.log")
	if out != "orders: appended at offset 0\n" {
		t.Fatalf("append: %q", out)
	}
	out = n.mustCLI("", "status", "--json") // NATLOG_PREFIX applies to the client too
	var st protocol.ClusterStatus
	if err := json.Unmarshal([]byte(out), &st); err != nil || st.NodeID != "env-node" || st.Prefix != "acme.log" {
		t.Fatalf("status: %q %v", out, err)
	}
	if code := n.signal(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, n.out)
	}
}

func TestServeFlags(t *testing.T) {
	out, errOut, code := runCLI(t, "", "", "serve", "--help")
	if code != 0 {
		t.Fatalf("serve --help: exit %d", code)
	}
	for _, f := range []string{"--data-dir", "--node-id", "--nats-listen", "--nats-url", "--nats-config", "--http-listen", "--prefix",
		"--fsync", "--segment-bytes", "--retention-bytes", "--retention-age", "--retention-segments", "--leaf-remote", "--read-replica",
		"--pprof-listen", "--raft-snapshot-interval", "--raft-trailing-logs", "NATLOG_DATA_DIR", "NATLOG_FSYNC"} {
		if !strings.Contains(out+errOut, f) {
			t.Errorf("serve --help does not explain %s", f)
		}
	}
	for _, bad := range [][]string{
		{"serve", "--fsync", "sometimes"},
		{"serve", "--segment-bytes", "lots"},
		{"serve", "--nats-url", "nats://x:4222", "--nats-config", "f.conf"},
		{"serve", "extra"},
		{"serve", "--nats-url", "nats://x:4222", "--nats-listen", "127.0.0.1:4333"},
		{"serve", "--nats-url", "nats://x:4222", "--leaf-remote", "nats-leaf://hub:7422"},
		{"serve", "--leaf-remote", "::bad"},
		{"serve", "--cluster", "c", "--read-replica", "--bootstrap-expect", "3"},
		{"serve", "--cluster", "c", "--raft-snapshot-interval", "1ms"},
		{"serve", "--bootstrap-expect", "3"}, // cluster flags without --cluster
		{"serve", "--read-replica"},
	} {
		_, errOut, code := runCLI(t, "", "", bad...)
		if code != 2 || !strings.Contains(errOut, "natlog serve:") {
			t.Errorf("natlog %v: exit %d, %q; want a usage error", bad, code, errOut)
		}
	}
	t.Setenv("NATLOG_FSYNC", "bogus")
	if _, errOut, code := runCLI(t, "", "", "serve"); code != 2 || !strings.Contains(errOut, "NATLOG_FSYNC") && !strings.Contains(errOut, "--fsync") {
		t.Errorf("bad NATLOG_FSYNC: exit %d, %q", code, errOut)
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"0": 0, "4096": 4096, "64MiB": 64 << 20, "1GB": 1e9, "10 KiB": 10240, "5B": 5, "2kb": 2000} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "-1", "1.5MB", "MiB", "9999999999999GiB"} {
		if _, err := parseSize(bad); err == nil {
			t.Errorf("parseSize(%q) succeeded", bad)
		}
	}
}

// Signals: SIGTERM and SIGINT stop the node gracefully (exit 0) and its
// data is there after a restart; a second signal exits at once, even when
// the graceful shutdown is stuck (here: its NATS server is frozen).
func TestSignals(t *testing.T) {
	n := startNode(t, "")
	n.mustCLI("", "append", "orders", "before")
	if code := n.signal(syscall.SIGTERM); code != 0 {
		t.Fatalf("exit %d after SIGTERM:\n%s", code, n.out)
	}
	if !strings.Contains(n.out.String(), "natlog: stopped") {
		t.Fatalf("no clean stop in the log:\n%s", n.out)
	}
	n.start()
	if out := n.mustCLI("", "read", "orders", "0", "--raw"); out != "before\n" {
		t.Fatalf("after restart: %q", out)
	}
	if code := n.signal(syscall.SIGINT); code != 0 {
		t.Fatalf("exit %d after SIGINT:\n%s", code, n.out)
	}

	ns := testnats.StartServer(t)
	m := startNode(t, "", "--nats-url", ns.URL)
	ns.Freeze(t)
	defer ns.Thaw()
	m.cmd.Process.Signal(syscall.SIGTERM)
	waitFor(t, 10*time.Second, "the node to start shutting down", func() bool {
		return strings.Contains(m.out.String(), "signal received")
	})
	if code := m.signal(syscall.SIGTERM); code != 1 {
		t.Fatalf("exit %d after a second signal, want 1:\n%s", code, m.out)
	}
	if !strings.Contains(m.out.String(), "second signal") {
		t.Fatalf("the second signal was not what stopped it:\n%s", m.out)
	}
}
