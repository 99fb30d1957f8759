package sidecar

import (
	"bytes"
	"errors"
	"math/rand/v2"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/sidecar/protocol"
)

// garbageRequest sends one request built from fuzz inputs to a node and
// checks that it is answered: with an error reply, or a success that makes
// sense for the subject. It never hangs and never crashes the node.
func garbageRequest(t testing.TB, nc *nats.Conn, op byte, name string, body []byte, msgpack bool, hk, hv string) {
	ops := []string{"append", "read", "info", "create", "delete", "logs", "cluster.status"}
	subject := "natlog." + ops[int(op)%len(ops)]
	if !strings.Contains(subject, "logs") && !strings.Contains(subject, "status") {
		subject += "." + name
	}
	if !validSubject(subject) {
		return // not something NATS would deliver
	}
	hdr := nats.Header{}
	if msgpack {
		hdr.Set(protocol.HeaderContentType, protocol.ContentTypeMsgpack)
	}
	if hk != "" && validHeader(hk) && validHeader(hv) {
		hdr.Add(hk, hv)
	}
	if len(body) > 64<<10 {
		body = body[:64<<10]
	}
	m, err := nc.RequestMsg(&nats.Msg{Subject: subject, Data: body, Header: hdr}, 10*time.Second)
	if errors.Is(err, nats.ErrBadHeaderMsg) {
		return // the client library refuses such headers; nothing was sent
	}
	if err != nil {
		t.Fatalf("request %q %q (headers %v): no answer: %v", subject, body, hdr, err)
	}
	if e := protocol.ReplyError(m.Header, m.Data); e != nil {
		if protocol.Sentinel(e.ErrCode) == nil || e.Code == 500 && e.ErrCode != protocol.CodeStorage {
			t.Fatalf("request %q %q (headers %v): unexpected error %v", subject, body, hdr, e)
		}
	}
}

// validSubject reports whether NATS would deliver a publish to subject.
func validSubject(s string) bool {
	if s == "" || strings.ContainsAny(s, " \t\r\n*>") {
		return false
	}
	for tok := range strings.SplitSeq(s, ".") {
		if tok == "" {
			return false
		}
	}
	return true
}

func validHeader(s string) bool {
	return s != "" && !strings.ContainsAny(s, "\r\n:") && strings.TrimSpace(s) == s
}

func TestGarbageRequests(t *testing.T) {
	s := startNode(t, testConfig(t))
	nc := connectTo(t, s)
	wantOK(t, request(t, nc, "natlog.append.seed", []byte("seed"), nil))
	r := rand.New(rand.NewPCG(1, 2))
	names := []string{"g", "h", "", "a.b", "x*", strings.Repeat("n", 200), "ü", "ok-name"}
	headers := [][2]string{{"", ""}, {protocol.HeaderExpectedOffset, "x"}, {protocol.HeaderExpectedOffset, "0"},
		{protocol.HeaderMsgID, "id"}, {protocol.HeaderAccept, protocol.ContentTypeJSON}, {"Status", "503"}}
	// Bodies: random bytes, truncations of valid msgpack bodies, JSON.
	valid := [][]byte{
		(&protocol.AppendBatchRequest{Records: []protocol.AppendRecord{{Value: []byte("v"), Headers: protocol.Headers{"k": {"v"}}}}}).AppendMsgpack(nil),
		(&protocol.ReadRequest{Offset: 0, Max: 5, WaitMs: 1}).AppendMsgpack(nil),
		[]byte(`{"offset":0,"max":3,"wait_ms":1}`),
		[]byte(`{"max_segment_bytes":4096}`),
		[]byte("0"),
	}
	for range 600 {
		var body []byte
		switch r.IntN(3) {
		case 0:
			body = make([]byte, r.IntN(64))
			for i := range body {
				body[i] = byte(r.Uint32())
			}
		case 1:
			v := valid[r.IntN(len(valid))]
			body = v[:r.IntN(len(v)+1)]
		default:
			v := bytes.Clone(valid[r.IntN(len(valid))])
			if len(v) > 0 {
				v[r.IntN(len(v))] = byte(r.Uint32())
			}
			body = v
		}
		h := headers[r.IntN(len(headers))]
		garbageRequest(t, nc, byte(r.IntN(256)), names[r.IntN(len(names))], body, r.IntN(2) == 0, h[0], h[1])
	}
	// The node still works, and garbage never changed the seeded record.
	m := request(t, nc, "natlog.read.seed", []byte("0"), nil)
	if string(m.Data) != "seed" {
		t.Fatalf("after garbage: %q", m.Data)
	}
}

// FuzzRequests sends fuzzed requests to a live node.
func FuzzRequests(f *testing.F) {
	s := startNode(f, testConfig(f))
	nc := connectTo(f, s)
	f.Add(byte(0), "orders", []byte("hello"), false, "", "")
	f.Add(byte(0), "orders", []byte{0x81, 0xa7, 'r', 'e', 'c', 'o', 'r', 'd', 's', 0x90}, true, "", "")
	f.Add(byte(1), "orders", []byte(`{"offset":0,"wait_ms":1}`), false, "", "")
	f.Add(byte(1), "orders", []byte("0"), false, "", "")
	f.Add(byte(3), "new", []byte(`{"sync":"never"}`), false, "", "")
	f.Add(byte(0), "orders", []byte("x"), false, protocol.HeaderExpectedOffset, "abc")
	f.Fuzz(func(t *testing.T, op byte, name string, body []byte, msgpack bool, hk, hv string) {
		if len(name) > 200 {
			return
		}
		garbageRequest(t, nc, op, name, body, msgpack, hk, hv)
	})
}
