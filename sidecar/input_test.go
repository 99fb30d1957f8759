package sidecar

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/sidecar/protocol"
)

// restart shuts s down and starts a node on the same data dir.
func restart(t *testing.T, s *Server, cfg Config) (*Server, *nats.Conn) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := s.Shutdown(ctx); err != nil {
		t.Fatal(err)
	}
	s = startNode(t, cfg)
	return s, connectTo(t, s)
}

// A Natlog-Msg-Id among a record's own headers (a record copied from
// another log, say) is not stored: stored, it became a dedup id once the
// log's ids were loaded, and a later append with that id was answered as
// a duplicate and dropped. Over HTTP likewise.
func TestRecordMsgIDIsNotStored(t *testing.T) {
	cfg := testConfig(t)
	s := startNode(t, cfg)
	nc := connectTo(t, s)
	b := (&protocol.AppendBatchRequest{Records: []protocol.AppendRecord{
		{Value: []byte("copied"), Headers: protocol.Headers{protocol.HeaderMsgID: {"p-1"}, "K": {"v"}}},
	}}).AppendMsgpack(nil)
	wantOK(t, request(t, nc, "natlog.append.c", b, msgpackHdr))
	code, body := httpDo(t, "POST", s.HTTPURL()+"/v1/logs/c/records", "application/json",
		[]byte(`{"value":"x","headers":{"Natlog-Msg-Id":["z"]}}`), nil)
	if code != 200 {
		t.Fatalf("HTTP append: %d %s", code, body)
	}
	s, nc = restart(t, s, cfg)
	for i, id := range []string{"p-1", "z"} {
		m := request(t, nc, "natlog.append.c", []byte("new"), nats.Header{protocol.HeaderMsgID: {id}})
		if want := fmt.Sprintf(`{"log":"c","offset":%d}`, 2+i); string(m.Data) != want {
			t.Fatalf("new append with id %s: %s, want %s", id, m.Data, want)
		}
	}
	m := request(t, nc, "natlog.read.c", []byte("0"), nil)
	if m.Header.Get(protocol.HeaderMsgID) != "" || m.Header.Get("K") != "v" {
		t.Fatalf("stored headers: %v", m.Header)
	}
}

// One Natlog-Msg-Id per request: with two, deduplication used the first
// and a restart loaded the last.
func TestTwoMsgIDsRefused(t *testing.T) {
	s := startNode(t, testConfig(t))
	nc := connectTo(t, s)
	wantError(t, request(t, nc, "natlog.append.d", []byte("v"), nats.Header{protocol.HeaderMsgID: {"a", "b"}}), protocol.ErrBadRequest)
	if _, perr := s.info("d"); perr == nil {
		t.Fatal("the refused append created the log")
	}
}

// A header key that nats.go parses but cannot send (from a raw HPUB) is
// refused on a single append as on a batch: stored, the record could never
// be read alone.
func TestSingleAppendBadHeaderKey(t *testing.T) {
	s := startNode(t, testConfig(t))
	u, err := url.Parse(s.NATSURL())
	if err != nil {
		t.Fatal(err)
	}
	conn, err := net.Dial("tcp", u.Host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	br := bufio.NewReader(conn)
	if _, err := br.ReadString('\n'); err != nil { // INFO
		t.Fatal(err)
	}
	hdr, body, inbox := "NATS/1.0\r\nBad Key(x): v\r\n\r\n", "hello", "_INBOX.raw"
	fmt.Fprintf(conn, "CONNECT {\"verbose\":false,\"headers\":true}\r\nSUB %s 1\r\nHPUB natlog.append.h %s %d %d\r\n%s%s\r\n",
		inbox, inbox, len(hdr), len(hdr)+len(body), hdr, body)
	conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	for {
		l, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("no reply to the raw append: %v", err)
		}
		if strings.HasPrefix(l, "HMSG "+inbox) {
			// The reply's headers follow: its status.
			status, _ := br.ReadString('\n')
			for {
				h, err := br.ReadString('\n')
				if err != nil || h == "\r\n" {
					break
				}
				status += h
			}
			if !strings.Contains(status, "Status: 400") || !strings.Contains(status, "not a valid NATS header key") {
				t.Fatalf("raw append with a bad header key answered %q", status)
			}
			break
		}
	}
	if li, perr := s.info("h"); perr == nil && li.NextOffset != 0 {
		t.Fatalf("the record was stored: %+v", li)
	}
}

// A batch read asked for in JSON fits in a NATS message: the batch is
// sized for msgpack, and base64 makes values a third larger.
func TestJSONBatchReadFits(t *testing.T) {
	s := startNode(t, testConfig(t))
	nc := connectTo(t, s)
	val := []byte(strings.Repeat("x", 1000))
	batch := make([]protocol.AppendRecord, 300)
	for i := range batch {
		batch[i].Value = val
	}
	for range 3 {
		wantOK(t, request(t, nc, "natlog.append.j", (&protocol.AppendBatchRequest{Records: batch}).AppendMsgpack(nil), msgpackHdr))
	}
	var next uint64
	for next < 900 {
		m := request(t, nc, "natlog.read.j", fmt.Appendf(nil, `{"offset":%d}`, next), nats.Header{protocol.HeaderAccept: {protocol.ContentTypeJSON}})
		wantOK(t, m)
		var rep protocol.ReadReply
		if err := json.Unmarshal(m.Data, &rep); err != nil {
			t.Fatal(err)
		}
		if len(rep.Records) == 0 || rep.Records[0].Offset != next || rep.Next != next+uint64(len(rep.Records)) {
			t.Fatalf("JSON read from %d: %d records, next %d", next, len(rep.Records), rep.Next)
		}
		next = rep.Next
	}
}

// An error that quotes a huge part of the request is still answered: its
// description is cut, in the body as in the header.
func TestHugeErrorIsAnswered(t *testing.T) {
	s := startNode(t, testConfig(t))
	nc := connectTo(t, s)
	key := strings.Repeat("\xff", 300_000)
	b := []byte{0x81, 0xdb, byte(len(key) >> 24), byte(len(key) >> 16), byte(len(key) >> 8), byte(len(key))}
	b = append(b, key...)
	b = append(b, 0xc0)
	e := wantError(t, request(t, nc, "natlog.append.e", b, msgpackHdr), protocol.ErrMalformedBody)
	if len(e.Description) > 1100 {
		t.Fatalf("description of %d bytes", len(e.Description))
	}
	body := []byte(`{"` + strings.Repeat("\\u0080", 170_000) + `":1}`)
	wantError(t, request(t, nc, "natlog.read.e", body, nil), protocol.ErrMalformedBody)
}

// A batch of more than protocol.MaxBatchRecords records is refused, and a
// body of a million empty records costs no more than its decode.
func TestBatchRecordLimit(t *testing.T) {
	s := startNode(t, testConfig(t))
	nc := connectTo(t, s)
	const n = 1<<20 - 256
	b := []byte{0x81, 0xa7}
	b = append(b, "records"...)
	cnt := uint32(n - 14)
	b = append(b, 0xdd, byte(cnt>>24), byte(cnt>>16), byte(cnt>>8), byte(cnt))
	for len(b) < n {
		b = append(b, 0x80)
	}
	wantError(t, request(t, nc, "natlog.append.big", b, msgpackHdr), protocol.ErrPayloadTooLarge)
}

// Group commit cuts a round into chunks that each fit in a segment, in
// records too: no segment starts inside a request's batch (a crash could
// keep a prefix of it).
func TestRoundChunksFitSegmentIndexes(t *testing.T) {
	cfg := testConfig(t) // segments of 4096 records
	s := startNode(t, cfg)
	nc := connectTo(t, s)
	wantOK(t, request(t, nc, "natlog.append.r", []byte("x"), nil))
	recs := make([]protocol.AppendRecord, 3000)
	for i := range recs {
		recs[i].Value = []byte("v")
	}
	body := (&protocol.AppendBatchRequest{Records: recs}).AppendMsgpack(nil)
	var wg sync.WaitGroup
	var mu sync.Mutex
	var ranges [][2]uint64
	for range 8 {
		wg.Go(func() {
			m, err := nc.RequestMsg(&nats.Msg{Subject: "natlog.append.r", Data: body, Header: msgpackHdr}, 20*time.Second)
			if err != nil {
				t.Error(err)
				return
			}
			var r protocol.AppendBatchReply
			if err := json.Unmarshal(m.Data, &r); err != nil || r.Count != 3000 {
				t.Errorf("batch reply %s (%v)", m.Data, err)
				return
			}
			mu.Lock()
			ranges = append(ranges, [2]uint64{r.First, r.Last})
			mu.Unlock()
		})
	}
	wg.Wait()
	ents, err := os.ReadDir(filepath.Join(cfg.DataDir, "logs", "r", "segments"))
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		base, err := strconv.ParseUint(strings.TrimSuffix(e.Name(), filepath.Ext(e.Name())), 10, 64)
		if err != nil {
			continue
		}
		for _, r := range ranges {
			if base > r[0] && base <= r[1] {
				t.Fatalf("segment %d starts inside the batch %d..%d", base, r[0], r[1])
			}
		}
	}
}

// Claims of appends that failed (a conditional append refused, a full
// disk) are forgotten at once, and the bound counts them: a stream of
// refused appends with fresh ids holds no memory for a window.
func TestDedupFailedClaimsAreBounded(t *testing.T) {
	d := newDedup(2*time.Minute, 1000, nil)
	d.loaded = true
	for i := range 20_000 {
		id := strconv.Itoa(i)
		e, owner := d.claim(id)
		if !owner {
			t.Fatal("not owner")
		}
		d.finish(id, e, 0, 0, fmt.Errorf("expected offset mismatch"))
	}
	if len(d.fifo) > 1 || len(d.ids) != 0 {
		t.Fatalf("%d claims queued, %d ids, after 20,000 failed appends", len(d.fifo), len(d.ids))
	}
	for i := range 2000 {
		id := "ok-" + strconv.Itoa(i)
		e, _ := d.claim(id)
		d.finish(id, e, uint64(i), 1, nil)
	}
	if len(d.fifo) > 1000 || len(d.ids) > 1000 {
		t.Fatalf("%d queued, %d ids: more than the bound of 1000", len(d.fifo), len(d.ids))
	}
	if _, owner := d.claim("ok-1999"); owner {
		t.Fatal("the newest id was forgotten")
	}
}

// A conditional append refused for a log that does not exist does not
// create it; one expecting offset 0 does.
func TestConditionalAppendToMissingLog(t *testing.T) {
	s := startNode(t, testConfig(t))
	nc := connectTo(t, s)
	wantError(t, request(t, nc, "natlog.append.m", []byte("v"), nats.Header{protocol.HeaderExpectedOffset: {"3"}}), protocol.ErrExpectedOffset)
	if _, perr := s.info("m"); perr == nil {
		t.Fatal("the refused append created the log")
	}
	wantOK(t, request(t, nc, "natlog.append.m", []byte("v"), nats.Header{protocol.HeaderExpectedOffset: {"0"}}))
}

// A record limit above what a read reply can carry is refused at start.
func TestMaxRecordBytesAboveMaxPayload(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxRecordBytes = 2 << 20
	if s, err := Start(cfg); err == nil {
		s.Shutdown(context.Background())
		t.Fatal("started with records larger than NATS carries")
	}
}
