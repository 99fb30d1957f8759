package sidecar

import (
	"bytes"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/sidecar/protocol"
)

// Every error a client can get, through a real NATS connection. (ErrNotLeader
// needs replication, ErrInternal a bug: a single node never sends them.)
func TestErrorReplies(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxRecordBytes = 1000
	s := startNode(t, cfg)
	nc := connectTo(t, s)
	wantOK(t, request(t, nc, "natlog.append.orders", []byte("a"), nil))
	long := strings.Repeat("x", 129)
	garbage := []byte{0xc1, 0xff, 0x00, 0x13}

	tests := []struct {
		name    string
		subject string
		body    []byte
		hdr     nats.Header
		want    *protocol.Error
		desc    string // expected Description, if not empty
	}{
		{"append bad char", "natlog.append.ord$rs", []byte("x"), nil, protocol.ErrBadLogName, ""},
		{"append two tokens", "natlog.append.orders.eu", []byte("x"), nil, protocol.ErrBadLogName, ""},
		{"read long name", "natlog.read." + long, []byte("0"), nil, protocol.ErrBadLogName, ""},
		{"info bad name", "natlog.info.a*b", nil, nil, protocol.ErrBadLogName, ""},
		{"create bad name", "natlog.create.a%b", nil, nil, protocol.ErrBadLogName, ""},
		{"delete bad name", "natlog.delete.x.y.z", nil, nil, protocol.ErrBadLogName, ""},

		{"read empty body", "natlog.read.orders", nil, nil, protocol.ErrMalformedBody, ""},
		{"read a word", "natlog.read.orders", []byte("hello"), nil, protocol.ErrMalformedBody, ""},
		{"read negative", "natlog.read.orders", []byte("-1"), nil, protocol.ErrMalformedBody, ""},
		{"read json typo", "natlog.read.orders", []byte(`{"ofset":0}`), nil, protocol.ErrMalformedBody, ""},
		{"read garbage msgpack", "natlog.read.orders", garbage, msgpackHdr, protocol.ErrMalformedBody, ""},
		{"batch garbage msgpack", "natlog.append.orders", garbage, msgpackHdr, protocol.ErrMalformedBody, ""},
		{"batch empty body", "natlog.append.orders", nil, msgpackHdr, protocol.ErrMalformedBody, ""},
		{"batch of json", "natlog.append.orders", []byte(`{"records":[]}`), msgpackHdr, protocol.ErrMalformedBody, ""},
		{"batch no records", "natlog.append.orders", (&protocol.AppendBatchRequest{}).AppendMsgpack(nil), msgpackHdr, protocol.ErrMalformedBody, ""},
		{"batch bad header key", "natlog.append.orders", (&protocol.AppendBatchRequest{Records: []protocol.AppendRecord{{Value: []byte("v"), Headers: protocol.Headers{"a key": {"v"}}}}}).AppendMsgpack(nil), msgpackHdr, protocol.ErrMalformedBody, ""},
		{"batch header value with newline", "natlog.append.orders", (&protocol.AppendBatchRequest{Records: []protocol.AppendRecord{{Value: []byte("v"), Headers: protocol.Headers{"k": {"a\r\nStatus: 200"}}}}}).AppendMsgpack(nil), msgpackHdr, protocol.ErrMalformedBody, ""},
		{"create settings not json", "natlog.create.x", []byte("{"), nil, protocol.ErrMalformedBody, ""},

		{"bad expected offset", "natlog.append.orders", []byte("x"), nats.Header{protocol.HeaderExpectedOffset: {"soon"}}, protocol.ErrBadRequest, ""},
		{"msg id too long", "natlog.append.orders", []byte("x"), nats.Header{protocol.HeaderMsgID: {strings.Repeat("i", 1025)}}, protocol.ErrBadRequest, ""},
		{"bad settings", "natlog.create.x", []byte(`{"retention_bytes":-5}`), nil, protocol.ErrBadSettings, ""},

		{"read unknown log", "natlog.read.nope", []byte("0"), nil, protocol.ErrUnknownLog, `unknown log "nope"`},
		{"batch read unknown log", "natlog.read.nope", []byte(`{"offset":0}`), nil, protocol.ErrUnknownLog, ""},
		{"info unknown log", "natlog.info.nope", nil, nil, protocol.ErrUnknownLog, ""},
		{"delete unknown log", "natlog.delete.nope", nil, nil, protocol.ErrUnknownLog, ""},
		{"read past the end", "natlog.read.orders", []byte("99"), nil, protocol.ErrOffsetOutOfRange, "offset 99 out of range [0, 0]"},
		{"read at the end", "natlog.read.orders", []byte("1"), nil, protocol.ErrOffsetOutOfRange, "offset 1 out of range [0, 0]"},
		{"batch read past the end", "natlog.read.orders", []byte(`{"offset":2}`), nil, protocol.ErrOffsetOutOfRange, ""},

		{"expected offset mismatch", "natlog.append.orders", []byte("x"), nats.Header{protocol.HeaderExpectedOffset: {"7"}}, protocol.ErrExpectedOffset, ""},
		{"record too large", "natlog.append.orders", bytes.Repeat([]byte("x"), 1001), nil, protocol.ErrPayloadTooLarge, ""},
		{"record with headers too large", "natlog.append.orders", bytes.Repeat([]byte("x"), 990), nats.Header{"K": {"0123456789"}}, protocol.ErrPayloadTooLarge, ""},
		{"batch record too large", "natlog.append.orders", (&protocol.AppendBatchRequest{Records: []protocol.AppendRecord{{Value: []byte("ok")}, {Value: make([]byte, 1001)}}}).AppendMsgpack(nil), msgpackHdr, protocol.ErrPayloadTooLarge, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := request(t, nc, tt.subject, tt.body, tt.hdr)
			e := wantError(t, m, tt.want)
			if tt.desc != "" && e.Description != tt.desc {
				t.Errorf("description %q, want %q", e.Description, tt.desc)
			}
			if m.Header.Get(protocol.HeaderDescription) != e.Description {
				t.Errorf("Description header %q, body %q", m.Header.Get(protocol.HeaderDescription), e.Description)
			}
			wantCT := protocol.ContentTypeJSON
			if tt.hdr.Get(protocol.HeaderContentType) == protocol.ContentTypeMsgpack {
				wantCT = protocol.ContentTypeMsgpack
			}
			if ct := m.Header.Get(protocol.HeaderContentType); ct != wantCT {
				t.Errorf("error body content type %q, want %q", ct, wantCT)
			}
		})
	}
	// Nothing that failed was written.
	m := request(t, nc, "natlog.info.orders", nil, nil)
	if !bytes.Contains(m.Data, []byte(`"records":1,`)) {
		t.Fatalf("failed requests wrote records: %s", m.Data)
	}
	for _, name := range []string{"x", "nope"} {
		if _, ok := s.logs.get(name); ok {
			t.Errorf("a failed request created log %q", name)
		}
	}
}

// The NATS max payload bounds records and batch replies: with a small
// max_payload from a nats-server configuration file.
func TestPayloadLimits(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "nats.conf")
	os.WriteFile(conf, []byte("host: 127.0.0.1\nport: -1\nmax_payload: 8192\n"), 0o644)
	cfg := testConfig(t)
	cfg.NATSConfigFile = conf
	s := startNode(t, cfg)
	nc := connectTo(t, s)
	if nc.MaxPayload() != 8192 {
		t.Fatalf("max payload %d, the config file says 8192", nc.MaxPayload())
	}
	// Over the NATS max payload: refused by the client library; never sent.
	if err := nc.Publish("natlog.append.p", make([]byte, 8193)); !errors.Is(err, nats.ErrMaxPayload) {
		t.Fatalf("oversized publish: %v", err)
	}
	// Under it but over the record limit (max payload less the reply headroom).
	wantError(t, request(t, nc, "natlog.append.p", make([]byte, 8192-ReplyHeadroom+1), nil), protocol.ErrPayloadTooLarge)
	// The largest record is accepted and can be read back alone...
	big := bytes.Repeat([]byte("b"), 8192-ReplyHeadroom)
	wantOK(t, request(t, nc, "natlog.append.p", big, nil))
	m := request(t, nc, "natlog.read.p", []byte("0"), nil)
	if !bytes.Equal(m.Data, big) {
		t.Fatalf("read back %d bytes", len(m.Data))
	}
	// ...but not in a batch, whose framing does not leave it room.
	wantError(t, request(t, nc, "natlog.read.p", []byte(`{"offset":0}`), nil), protocol.ErrPayloadTooLarge)
	// Batch replies are cut to fit.
	for range 10 {
		wantOK(t, request(t, nc, "natlog.append.p", make([]byte, 1000), nil))
	}
	m = request(t, nc, "natlog.read.p", []byte(`{"offset":1,"max":100}`), nil)
	rep, err := protocol.DecodeReadReply(m.Data)
	if err != nil || len(rep.Records) == 0 || len(rep.Records) == 10 || len(m.Data) > 8192 {
		t.Fatalf("batch of 10 KB in an 8 KB payload: %d records, %d bytes, %v", len(rep.Records), len(m.Data), err)
	}
}

// A failed fsync fails the append with ErrStorage (outcome indefinite) and
// the log refuses appends until the node restarts.
func TestStorageFailure(t *testing.T) {
	cfg := testConfig(t)
	ffs := logcore.NewFaultFS(logcore.OSFS{})
	cfg.Log.FS = ffs
	s, err := Start(cfg)
	if err != nil {
		t.Fatal(err)
	}
	nc := connectTo(t, s)
	wantOK(t, request(t, nc, "natlog.append.f", []byte("ok"), nil))
	ffs.SetHook(logcore.Rule{Ops: []logcore.Op{logcore.OpSync}, Suffix: ".store", Fault: logcore.Fault{Err: syscall.EIO}}.Hook())
	wantError(t, request(t, nc, "natlog.append.f", []byte("lost?"), nil), protocol.ErrStorage)
	ffs.SetHook(nil)
	wantError(t, request(t, nc, "natlog.append.f", []byte("after"), nil), protocol.ErrStorage)
	// Reads of what was acknowledged still work.
	m := request(t, nc, "natlog.read.f", []byte("0"), nil)
	if string(m.Data) != "ok" {
		t.Fatalf("read after failure: %q", m.Data)
	}
	// Shutdown says the log failed.
	if err := s.Shutdown(t.Context()); !errors.Is(err, logcore.ErrFailed) {
		t.Fatalf("Shutdown after a failed fsync: %v", err)
	}
}

// A full disk: an append whose file space cannot be reserved fails with
// ErrStorage saying nothing was written, and the log takes appends again
// once there is room, without a restart.
func TestDiskFull(t *testing.T) {
	cfg := testConfig(t)
	ffs := logcore.NewFaultFS(logcore.OSFS{})
	cfg.Log.FS = ffs
	cfg.Log.PrewriteBytes = 64 << 10
	s := startNode(t, cfg)
	nc := connectTo(t, s)
	wantOK(t, request(t, nc, "natlog.append.f", []byte("ok"), nil))
	// The disk is full (and the space written ahead is too small).
	ffs.SetHook(logcore.Rule{Ops: []logcore.Op{logcore.OpWriteAt}, Suffix: ".store", Fault: logcore.Fault{Err: syscall.ENOSPC}}.Hook())
	big := bytes.Repeat([]byte("x"), 512<<10)
	for range 3 {
		m := request(t, nc, "natlog.append.f", big, nil)
		wantError(t, m, protocol.ErrStorage)
		if d := m.Header.Get("Description"); !strings.Contains(d, "no space left on device") || !strings.Contains(d, "nothing was written") {
			t.Fatalf("append on a full disk: %q", d)
		}
	}
	ffs.SetHook(nil) // room again
	m := request(t, nc, "natlog.append.f", big, nil)
	wantOK(t, m)
	var r protocol.AppendReply
	if err := json.Unmarshal(m.Data, &r); err != nil || r.Offset != 1 {
		t.Fatalf("append after the disk had room again: %s (%v), want offset 1", m.Data, err)
	}
	if m := request(t, nc, "natlog.read.f", []byte("1"), nil); !bytes.Equal(m.Data, big) {
		t.Fatalf("read back %d bytes, want %d", len(m.Data), len(big))
	}
}

// A record that fails its checksum is an error, never data; a log whose
// active segment is corrupt is out of service, and the rest of the node
// works.
func TestCorruption(t *testing.T) {
	cfg := testConfig(t)
	s := startNode(t, cfg)
	nc := connectTo(t, s)
	wantOK(t, request(t, nc, "natlog.create.sealed", []byte(`{"max_segment_bytes":1024}`), nil))
	for i := range 40 {
		wantOK(t, request(t, nc, "natlog.append.sealed", bytes.Repeat([]byte{'a' + byte(i%26)}, 100), nil))
		wantOK(t, request(t, nc, "natlog.append.active", bytes.Repeat([]byte{'a' + byte(i%26)}, 100), nil))
	}
	wantOK(t, request(t, nc, "natlog.append.healthy", []byte("fine"), nil))
	if err := s.Shutdown(t.Context()); err != nil {
		t.Fatal(err)
	}
	// Flip a byte in the value of the second record of each log's first
	// segment (sealed for "sealed", active for "active"), and make the
	// active one look like a crash left it (its index not cut to length),
	// so that opening it scans the store.
	idx := filepath.Join(cfg.DataDir, "logs", "active", "segments", "00000000000000000000.index")
	if f, err := os.OpenFile(idx, os.O_WRONLY|os.O_APPEND, 0); err != nil {
		t.Fatal(err)
	} else {
		f.Write(make([]byte, 1200))
		f.Close()
	}
	for _, name := range []string{"sealed", "active"} {
		path := filepath.Join(cfg.DataDir, "logs", name, "segments", "00000000000000000000.store")
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		i := bytes.Index(b, bytes.Repeat([]byte("b"), 100))
		b[i+50] ^= 0xff
		if err := os.WriteFile(path, b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	cfg2 := testConfig(t)
	cfg2.DataDir = cfg.DataDir
	s = startNode(t, cfg2)
	nc = connectTo(t, s)

	wantOK(t, request(t, nc, "natlog.read.sealed", []byte("0"), nil))
	wantError(t, request(t, nc, "natlog.read.sealed", []byte("1"), nil), protocol.ErrCorrupt)
	wantError(t, request(t, nc, "natlog.read.sealed", []byte(`{"offset":1}`), nil), protocol.ErrCorrupt)

	wantError(t, request(t, nc, "natlog.read.active", []byte("0"), nil), protocol.ErrCorrupt)
	wantError(t, request(t, nc, "natlog.read.active", []byte(`{"offset":0}`), nil), protocol.ErrCorrupt)
	wantError(t, request(t, nc, "natlog.append.active", []byte("x"), nil), protocol.ErrCorrupt)
	wantError(t, request(t, nc, "natlog.info.active", nil, nil), protocol.ErrCorrupt)
	m := request(t, nc, "natlog.logs", nil, nil)
	if !bytes.Contains(m.Data, []byte(`"log":"active","first_offset":0,"next_offset":0,`)) || !bytes.Contains(m.Data, []byte(`out of service`)) {
		t.Errorf("logs does not show the broken log: %s", m.Data)
	}
	m = request(t, nc, "natlog.read.healthy", []byte("0"), nil)
	if string(m.Data) != "fine" {
		t.Fatalf("healthy log: %q", m.Data)
	}
	// Deleting the broken log puts the name back in service.
	wantOK(t, request(t, nc, "natlog.delete.active", nil, nil))
	m = request(t, nc, "natlog.append.active", []byte("new"), nil)
	if string(m.Data) != `{"log":"active","offset":0}` {
		t.Fatalf("append after deleting the broken log: %s", m.Data)
	}
}
