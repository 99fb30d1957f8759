package sidecar

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"regexp"
	"strconv"
	"testing"
	"time"
)

// openFDs returns the process's open file descriptors, or -1 where /proc
// does not say.
func openFDs() int {
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return -1
	}
	return len(ents)
}

// TestManyLogsWithinOpenFiles: a node whose logs may keep 12 files open
// (four segments) serves 100 logs, each appended to and read back, without
// holding more descriptors than that: idle logs give theirs back and
// reopen them when used. After a restart every record is still there.
func TestManyLogsWithinOpenFiles(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxOpenFiles = 12
	const nLogs = 100
	value := func(i, k int) []byte { return fmt.Appendf(nil, "log %d record %d", i, k) }

	before := openFDs()
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	nc := connectTo(t, s)
	for k := range 2 {
		for i := range nLogs {
			wantOK(t, request(t, nc, fmt.Sprintf("natlog.append.l%d", i), value(i, k), nil))
		}
	}
	for i := range nLogs {
		for k := range 2 {
			m := request(t, nc, fmt.Sprintf("natlog.read.l%d", i), []byte(strconv.Itoa(k)), nil)
			if !bytes.Equal(m.Data, value(i, k)) {
				t.Fatalf("read l%d/%d = %q (%v), want %q", i, k, m.Data, m.Header, value(i, k))
			}
		}
	}
	if b := s.cfg.Log.Files; b.Max() != 4 || b.OpenSegments() > b.Max() {
		t.Fatalf("open segments %d, bound %d; want at most 4", b.OpenSegments(), b.Max())
	}
	if before >= 0 {
		// The node's own descriptors (NATS listener and connections,
		// HTTP, data dir lock, Go runtime) are a few dozen; 100 logs
		// with their files open would add 300.
		if grown := openFDs() - before; grown > 12+60 {
			t.Fatalf("%d more descriptors open with %d logs and a bound of 12 files", grown, nLogs)
		}
	}
	code, metrics := httpDo(t, "GET", s.HTTPURL()+"/metrics", "", nil, nil)
	if code != 200 {
		t.Fatalf("metrics: %d", code)
	}
	for _, want := range []string{`natlog_open_segments [0-4]$`, `natlog_open_segments_max 4$`, `natlog_segment_closes_total [1-9]`} {
		if !regexp.MustCompile(`(?m)^` + want).Match(metrics) {
			t.Fatalf("metrics lack %q:\n%s", want, metrics)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}

	s = startNode(t, cfg)
	nc = connectTo(t, s)
	for i := range nLogs {
		m := request(t, nc, fmt.Sprintf("natlog.read.l%d", i), []byte("1"), nil)
		if !bytes.Equal(m.Data, value(i, 1)) {
			t.Fatalf("after restart: read l%d/1 = %q (%v)", i, m.Data, m.Header)
		}
	}
}
