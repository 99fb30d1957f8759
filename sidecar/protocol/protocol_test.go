package protocol

import (
	"bytes"
	"encoding/json"
	"errors"
	"math"
	"reflect"
	"strings"
	"testing"

	"github.com/vmihailenco/msgpack/v5"
)

func TestValidLogName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"orders", true},
		{"A-z_0-9", true},
		{strings.Repeat("x", 128), true},
		{"", false},
		{strings.Repeat("x", 129), false},
		{"a.b", false},
		{"a*", false},
		{">", false},
		{"a b", false},
		{"ünï", false},
		{"a/b", false},
		{"..", false},
	}
	for _, tt := range tests {
		if got := ValidLogName(tt.name); got != tt.ok {
			t.Errorf("ValidLogName(%q) = %v, want %v", tt.name, got, tt.ok)
		}
		if err := CheckLogName(tt.name); (err == nil) != tt.ok || (err != nil && !errors.Is(err, ErrBadLogName)) {
			t.Errorf("CheckLogName(%q) = %v", tt.name, err)
		}
	}
}

func TestSubjects(t *testing.T) {
	s, err := NewSubjects("")
	if err != nil {
		t.Fatal(err)
	}
	for got, want := range map[string]string{
		s.Append("orders"):  "natlog.append.orders",
		s.Read("orders"):    "natlog.read.orders",
		s.Info("orders"):    "natlog.info.orders",
		s.Create("orders"):  "natlog.create.orders",
		s.Delete("orders"):  "natlog.delete.orders",
		s.Logs():            "natlog.logs",
		s.Status():          "natlog.cluster.status",
		s.Wildcard(OpRead):  "natlog.read.>",
		s.Prefix():          "natlog",
		s.Wildcard(OpInfo):  "natlog.info.>",
		s.Append("a-b_C9"):  "natlog.append.a-b_C9",
		s.Delete("x"):       "natlog.delete.x",
		s.Create("created"): "natlog.create.created",
	} {
		if got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	}
	for _, bad := range []string{"a..b", ".a", "a.", "a b", "a.*", "a.>", strings.Repeat("p", 257)} {
		if _, err := NewSubjects(bad); err == nil {
			t.Errorf("NewSubjects(%q) succeeded", bad)
		}
	}
	if _, err := NewSubjects("acme.prod.natlog"); err != nil {
		t.Errorf("NewSubjects with a multi-token prefix: %v", err)
	}
}

func TestLogName(t *testing.T) {
	s, _ := NewSubjects("acme.natlog")
	tests := []struct {
		name    string
		op      string
		subject string
		want    string
		code    ErrCode
	}{
		{"plain", OpAppend, "acme.natlog.append.orders", "orders", 0},
		{"read", OpRead, "acme.natlog.read.x-1", "x-1", 0},
		{"extra token", OpAppend, "acme.natlog.append.orders.eu", "", CodeBadLogName},
		{"bad char", OpAppend, "acme.natlog.append.ord$rs", "", CodeBadLogName},
		{"too long", OpRead, "acme.natlog.read." + strings.Repeat("a", 129), "", CodeBadLogName},
		{"no log", OpRead, "acme.natlog.read.", "", CodeBadLogName},
		{"other op", OpRead, "acme.natlog.append.orders", "", CodeBadRequest},
		{"other prefix", OpRead, "other.natl.read.orders", "", CodeBadRequest},
		{"short", OpRead, "acme", "", CodeBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := s.LogName(tt.op, tt.subject)
			if tt.code == 0 {
				if err != nil || got != tt.want {
					t.Fatalf("LogName = %q, %v; want %q", got, err, tt.want)
				}
				return
			}
			var e *Error
			if !errors.As(err, &e) || e.ErrCode != tt.code {
				t.Fatalf("LogName = %q, %v; want err_code %d", got, err, tt.code)
			}
		})
	}
}

func TestErrors(t *testing.T) {
	seen := map[ErrCode]bool{}
	for _, e := range sentinels {
		if seen[e.ErrCode] {
			t.Errorf("duplicate err_code %d", e.ErrCode)
		}
		seen[e.ErrCode] = true
		switch e.Code {
		case 400, 404, 409, 413, 500:
		default:
			t.Errorf("%v: status %d is not one natlog uses", e, e.Code)
		}
		if Sentinel(e.ErrCode) != e {
			t.Errorf("Sentinel(%d) is not %v", e.ErrCode, e)
		}
	}
	e := Errorf(ErrOffsetOutOfRange, "offset %d out of range [0, 41]", 99)
	if !errors.Is(e, ErrOffsetOutOfRange) || errors.Is(e, ErrUnknownLog) {
		t.Errorf("errors.Is on %v is wrong", e)
	}
	if got, want := e.Error(), "natlog: offset 99 out of range [0, 41] (404/10011)"; got != want {
		t.Errorf("Error() = %q, want %q", got, want)
	}
	if got := string(e.AppendJSON(nil)); got != `{"error":{"code":404,"err_code":10011,"description":"offset 99 out of range [0, 41]"}}` {
		t.Errorf("JSON = %s", got)
	}
	// The msgpack body decodes with a general msgpack library to the same.
	var rep ErrorReply
	if err := msgpack.Unmarshal(e.AppendMsgpack(nil), &rep); err != nil || *rep.Error != *e {
		t.Errorf("msgpack body decodes to %+v, %v", rep.Error, err)
	}
}

func TestReplyError(t *testing.T) {
	e := Errorf(ErrUnknownLog, "unknown log %q", "x")
	tests := []struct {
		name   string
		header map[string][]string
		body   []byte
		want   *Error
	}{
		{"success", nil, []byte(`{"log":"x","offset":1}`), nil},
		{"status 200", map[string][]string{"Status": {"200"}}, nil, nil},
		{"json", map[string][]string{"Status": {"404"}, "Description": {"unknown log \"x\""}}, e.AppendJSON(nil), e},
		{"msgpack", map[string][]string{"Status": {"404"}, "Content-Type": {ContentTypeMsgpack}}, e.AppendMsgpack(nil), e},
		{"headers only", map[string][]string{"Status": {"409"}, "Description": {"not leader"}}, nil, &Error{Code: 409, Description: "not leader"}},
		{"garbage body", map[string][]string{"Status": {"500"}, "Description": {"boom"}}, []byte("\xff\x00"), &Error{Code: 500, Description: "boom"}},
		{"bad status", map[string][]string{"Status": {"teapot"}}, nil, &Error{Code: 500, Description: "status teapot"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ReplyError(tt.header, tt.body)
			if !reflect.DeepEqual(got, tt.want) {
				t.Fatalf("ReplyError = %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestAsError(t *testing.T) {
	if AsError(nil) != nil {
		t.Fatal("AsError(nil) != nil")
	}
	wrapped := errors.Join(errors.New("ctx"), ErrNotLeader)
	if AsError(wrapped) != ErrNotLeader {
		t.Fatalf("AsError did not unwrap")
	}
	if e := AsError(errors.New("boom")); e.ErrCode != CodeInternal || e.Description != "boom" {
		t.Fatalf("AsError(plain) = %+v", e)
	}
}

func TestAppendBatchCodecMatchesLibrary(t *testing.T) {
	req := AppendBatchRequest{Records: []AppendRecord{
		{Value: []byte("hello")},
		{Value: []byte{}, Headers: Headers{"k": {"v1", "v2"}, "a": {""}}},
		{Value: bytes.Repeat([]byte{0, 0xff}, 40000)},
	}}
	// Library -> ours.
	lib, err := msgpack.Marshal(&req)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeAppendBatch(lib)
	if err != nil {
		t.Fatal(err)
	}
	assertBatchEqual(t, got, req)
	// Ours -> library.
	var back AppendBatchRequest
	if err := msgpack.Unmarshal(req.AppendMsgpack(nil), &back); err != nil {
		t.Fatal(err)
	}
	assertBatchEqual(t, back, req)
	// Ours -> ours.
	got, err = DecodeAppendBatch(req.AppendMsgpack(nil))
	if err != nil {
		t.Fatal(err)
	}
	assertBatchEqual(t, got, req)
}

func assertBatchEqual(t *testing.T, got, want AppendBatchRequest) {
	t.Helper()
	if len(got.Records) != len(want.Records) {
		t.Fatalf("%d records, want %d", len(got.Records), len(want.Records))
	}
	for i := range want.Records {
		g, w := got.Records[i], want.Records[i]
		if !bytes.Equal(g.Value, w.Value) || len(g.Headers) != len(w.Headers) || (len(w.Headers) > 0 && !reflect.DeepEqual(g.Headers, w.Headers)) {
			t.Fatalf("record %d = %+v, want %+v", i, g, w)
		}
	}
}

func TestDecodeAppendBatchRejects(t *testing.T) {
	lib := func(v any) []byte {
		b, err := msgpack.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		return b
	}
	tests := []struct {
		name string
		body []byte
	}{
		{"empty", nil},
		{"json", []byte(`{"records":[{"value":"aGk="}]}`)},
		{"no records", lib(map[string]any{"records": []any{}})},
		{"missing records", lib(map[string]any{})},
		{"unknown field", lib(map[string]any{"records": []any{map[string]any{"value": []byte("x")}}, "extra": 1})},
		{"record unknown field", lib(map[string]any{"records": []any{map[string]any{"valu": []byte("x")}}})},
		{"value is a number", lib(map[string]any{"records": []any{map[string]any{"value": 5}}})},
		{"records not an array", lib(map[string]any{"records": "x"})},
		{"header value a number", lib(map[string]any{"records": []any{map[string]any{"value": []byte("x"), "headers": map[string]any{"k": 1}}}})},
		{"empty header key", lib(map[string]any{"records": []any{map[string]any{"value": []byte("x"), "headers": map[string]any{"": "v"}}}})},
		{"trailing bytes", append(lib(map[string]any{"records": []any{map[string]any{"value": []byte("x")}}}), 0)},
		{"huge array claim", []byte{0x81, 0xa7, 'r', 'e', 'c', 'o', 'r', 'd', 's', 0xdd, 0xff, 0xff, 0xff, 0xff}},
		{"huge bin claim", []byte{0x81, 0xa7, 'r', 'e', 'c', 'o', 'r', 'd', 's', 0x91, 0x81, 0xa5, 'v', 'a', 'l', 'u', 'e', 0xc6, 0x7f, 0xff, 0xff, 0xff}},
		{"cut short", lib(map[string]any{"records": []any{map[string]any{"value": []byte("hello")}}})[:15]},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := DecodeAppendBatch(tt.body)
			if !errors.Is(err, ErrMalformedBody) {
				t.Fatalf("DecodeAppendBatch = %v, want ErrMalformedBody", err)
			}
		})
	}
}

func TestReadRequestCodecs(t *testing.T) {
	zero, big := uint64(0), uint64(math.MaxUint64)
	t0, tneg := int64(1764083125123456789), int64(-1)
	for _, req := range []ReadRequest{
		{StartTime: &t0, Max: 10},
		{Offset: 3, StartTime: &tneg},
		{},
		{Offset: 42},
		{Offset: math.MaxUint64, Max: 100, MaxBytes: 1 << 20, WaitMs: 5000},
		{Offset: 7, MinOffset: &zero},
		{Offset: 7, MinOffset: &big, Linearizable: true, WaitMs: 10},
		{Linearizable: true},
		{Offset: 7, MinIndex: 1},
		{Offset: 7, MinIndex: math.MaxUint64, MinOffset: &zero, Max: 1},
		{MinIndex: 300, StartTime: &t0, Linearizable: true},
	} {
		lib, err := msgpack.Marshal(&req)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeReadRequest(lib)
		if err != nil || !reflect.DeepEqual(got, req) {
			t.Errorf("library bytes decode to %+v, %v; want %+v", got, err, req)
		}
		var back ReadRequest
		if err := msgpack.Unmarshal(req.AppendMsgpack(nil), &back); err != nil || !reflect.DeepEqual(back, req) {
			t.Errorf("our bytes decode with the library to %+v, %v; want %+v", back, err, req)
		}
		got, err = DecodeReadRequest(req.AppendMsgpack(nil))
		if err != nil || !reflect.DeepEqual(got, req) {
			t.Errorf("our bytes decode to %+v, %v; want %+v", got, err, req)
		}
		js, _ := json.Marshal(req)
		got, single, err := ParseReadBody(js, "")
		if err != nil || single || !reflect.DeepEqual(got, req) {
			t.Errorf("JSON %s parses to %+v, %v, %v", js, got, single, err)
		}
	}
}

func TestParseReadBody(t *testing.T) {
	tests := []struct {
		name   string
		body   string
		ct     string
		want   ReadRequest
		single bool
		bad    bool
	}{
		{"offset", "42", "", ReadRequest{Offset: 42}, true, false},
		{"offset with newline", " 7\n", "", ReadRequest{Offset: 7}, true, false},
		{"json", `{"offset":3,"max":10,"wait_ms":100}`, "", ReadRequest{Offset: 3, Max: 10, WaitMs: 100}, false, false},
		{"empty", "", "", ReadRequest{}, false, true},
		{"negative", "-1", "", ReadRequest{}, false, true},
		{"word", "hello", "", ReadRequest{}, false, true},
		{"overflow", "18446744073709551616", "", ReadRequest{}, false, true},
		{"json unknown field", `{"ofset":3}`, "", ReadRequest{}, false, true},
		{"json negative max", `{"offset":3,"max":-1}`, "", ReadRequest{}, false, true},
		{"json huge max", `{"offset":3,"max":4294967296}`, "", ReadRequest{}, false, true},
		{"json trailing", `{"offset":3} {}`, "", ReadRequest{}, false, true},
		{"json broken", `{"offset":`, "", ReadRequest{}, false, true},
		{"msgpack garbage", "\xc1", ContentTypeMsgpack, ReadRequest{}, false, true},
		{"msgpack empty", "", ContentTypeMsgpack, ReadRequest{}, false, true},
		{"msgpack negative", "\x81\xa3max\xff", ContentTypeMsgpack, ReadRequest{}, false, true},
		{"msgpack nil optional", "\x82\xa6offset\x05\xa3max\xc0", ContentTypeMsgpack, ReadRequest{Offset: 5}, false, false},
		{"msgpack nil offset", "\x81\xa6offset\xc0", ContentTypeMsgpack, ReadRequest{}, false, true},
		{"json min_index", `{"offset":3,"min_index":1234}`, "", ReadRequest{Offset: 3, MinIndex: 1234}, false, false},
		{"json negative min_index", `{"offset":3,"min_index":-1}`, "", ReadRequest{}, false, true},
		{"json string min_index", `{"offset":3,"min_index":"7"}`, "", ReadRequest{}, false, true},
		{"msgpack min_index", "\x82\xa6offset\x05\xa9min_index\xcd\x01\x2c", ContentTypeMsgpack, ReadRequest{Offset: 5, MinIndex: 300}, false, false},
		{"msgpack nil min_index", "\x82\xa6offset\x05\xa9min_index\xc0", ContentTypeMsgpack, ReadRequest{Offset: 5}, false, false},
		{"msgpack negative min_index", "\x82\xa6offset\x05\xa9min_index\xff", ContentTypeMsgpack, ReadRequest{}, false, true},
		{"msgpack string min_index", "\x82\xa6offset\x05\xa9min_index\xa17", ContentTypeMsgpack, ReadRequest{}, false, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, single, err := ParseReadBody([]byte(tt.body), tt.ct)
			if tt.bad {
				if !errors.Is(err, ErrMalformedBody) {
					t.Fatalf("ParseReadBody = %+v, %v; want ErrMalformedBody", got, err)
				}
				return
			}
			if err != nil || got != tt.want || single != tt.single {
				t.Fatalf("ParseReadBody = %+v, %v, %v; want %+v, %v", got, single, err, tt.want, tt.single)
			}
		})
	}
}

func TestReadReplyCodecMatchesLibrary(t *testing.T) {
	rep := ReadReply{
		Log: "orders",
		Records: []Record{
			{Offset: 0, Time: 1700000000123456789, Value: []byte("hello")},
			{Offset: 1, Time: -5, Headers: Headers{"b": {"2"}, "a": {"1", "x"}}, Value: nil},
			{Offset: math.MaxUint64, Time: math.MinInt64, Value: bytes.Repeat([]byte("z"), 70000)},
		},
		Next: 3, Lowest: 0, End: 3, Index: math.MaxUint64,
	}
	ours := rep.AppendMsgpack(nil)
	size := ReadReplyOverhead
	for i := range rep.Records {
		size += RecordSize(&rep.Records[i])
	}
	if len(ours) > size {
		t.Errorf("encoded %d bytes, more than the computed bound %d", len(ours), size)
	}
	var lib ReadReply
	if err := msgpack.Unmarshal(ours, &lib); err != nil {
		t.Fatal(err)
	}
	assertReplyEqual(t, lib, rep)
	libBytes, err := msgpack.Marshal(&rep)
	if err != nil {
		t.Fatal(err)
	}
	got, err := DecodeReadReply(libBytes)
	if err != nil {
		t.Fatal(err)
	}
	assertReplyEqual(t, got, rep)
	// RecordSize is exact for our encoding.
	for i := range rep.Records {
		one := ReadReply{Records: rep.Records[i : i+1]}
		empty := ReadReply{}
		if d := len(one.AppendMsgpack(nil)) - len(empty.AppendMsgpack(nil)); d != RecordSize(&rep.Records[i])+lenDelta(0, 1) {
			t.Errorf("record %d: encodes to %d bytes, RecordSize says %d", i, d, RecordSize(&rep.Records[i]))
		}
	}
}

func lenDelta(a, b int) int { return lenSize(b) - lenSize(a) }

func assertReplyEqual(t *testing.T, got, want ReadReply) {
	t.Helper()
	if got.Log != want.Log || got.Next != want.Next || got.Lowest != want.Lowest || got.End != want.End || got.Index != want.Index || len(got.Records) != len(want.Records) {
		t.Fatalf("reply %+v, want %+v", got, want)
	}
	for i := range want.Records {
		g, w := got.Records[i], want.Records[i]
		if g.Offset != w.Offset || g.Time != w.Time || !bytes.Equal(g.Value, w.Value) ||
			len(g.Headers) != len(w.Headers) || (len(w.Headers) > 0 && !reflect.DeepEqual(g.Headers, w.Headers)) {
			t.Fatalf("record %d = %+v, want %+v", i, g, w)
		}
	}
}

func TestLogSettings(t *testing.T) {
	seg, sync, segs := int64(1<<20), "interval", 3
	want := LogSettings{MaxSegmentBytes: &seg, Sync: &sync, RetentionSegments: &segs}
	js, _ := json.Marshal(want)
	got, err := ParseLogSettings(js, false)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("JSON: %+v, %v", got, err)
	}
	mp, _ := msgpack.Marshal(&want)
	got, err = ParseLogSettings(mp, true)
	if err != nil || !reflect.DeepEqual(got, want) {
		t.Fatalf("msgpack: %+v, %v", got, err)
	}
	if got, err := ParseLogSettings(nil, false); err != nil || !reflect.DeepEqual(got, LogSettings{}) {
		t.Fatalf("empty: %+v, %v", got, err)
	}
	for _, bad := range []string{`{"segment":1}`, `{"max_segment_bytes":"big"}`, `[`} {
		if _, err := ParseLogSettings([]byte(bad), false); !errors.Is(err, ErrMalformedBody) {
			t.Errorf("%s: %v", bad, err)
		}
	}
}

func TestAppendReplyJSON(t *testing.T) {
	r := AppendReply{Log: "orders", Offset: 42}
	if got := string(r.AppendJSON(nil)); got != `{"log":"orders","offset":42}` {
		t.Errorf("got %s", got)
	}
	r = AppendReply{Log: "orders", Offset: 42, Duplicate: true, Index: 1234}
	if got := string(r.AppendJSON(nil)); got != `{"log":"orders","offset":42,"duplicate":true,"index":1234}` {
		t.Errorf("got %s", got)
	}
	for _, b := range []AppendBatchReply{
		{Log: "orders", First: 1, Last: 100, Count: 100, Duplicate: true},
		{Log: "orders", First: 1, Last: 100, Count: 100, Index: math.MaxUint64},
	} {
		var back AppendBatchReply
		if err := json.Unmarshal(b.AppendJSON(nil), &back); err != nil || back != b {
			t.Errorf("batch reply round trip: %+v, %v", back, err)
		}
		std, _ := json.Marshal(b)
		if string(std) != string(b.AppendJSON(nil)) {
			t.Errorf("AppendJSON %s, encoding/json %s", b.AppendJSON(nil), std)
		}
	}
}

// A reply without "index" (a standalone node, or a server from before it
// was sent) decodes with Index 0, and a reader that does not know the
// field skips it.
func TestReadReplyIndexOptional(t *testing.T) {
	rep := ReadReply{Log: "x", Records: []Record{}, Next: 4, End: 4}
	without := rep.AppendMsgpack(nil)
	rep.Index = 77
	with := rep.AppendMsgpack(nil)
	if len(with) <= len(without) {
		t.Fatalf("index not encoded: %d bytes with it, %d without", len(with), len(without))
	}
	got, err := DecodeReadReply(without)
	if err != nil || got.Index != 0 {
		t.Fatalf("without index: %+v, %v", got, err)
	}
	got, err = DecodeReadReply(with)
	if err != nil || got.Index != 77 {
		t.Fatalf("with index: %+v, %v", got, err)
	}
	var old struct {
		Log  string `msgpack:"log"`
		Next uint64 `msgpack:"next"`
	}
	if err := msgpack.Unmarshal(with, &old); err != nil || old.Next != 4 {
		t.Fatalf("a reader without the field: %+v, %v", old, err)
	}
}

func TestSkip(t *testing.T) {
	// A reply with fields this version does not know still decodes.
	v := map[string]any{
		"log": "x", "next": 1, "lowest": 0, "end": 1,
		"future":  map[string]any{"a": []any{1.5, float32(2), true, nil, "s", []byte("b"), int64(-100000), uint64(1 << 40)}},
		"records": []any{map[string]any{"offset": 0, "time": 1, "value": []byte("v"), "new": []int{1, 2}}},
	}
	b, err := msgpack.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := DecodeReadReply(b)
	if err != nil || len(rep.Records) != 1 || string(rep.Records[0].Value) != "v" {
		t.Fatalf("DecodeReadReply = %+v, %v", rep, err)
	}
	deep := bytes.Repeat([]byte{0x91}, 100)
	r := reader{b: append(deep, 0xc0)}
	if err := r.skip(); err == nil {
		t.Fatal("skip of 100 nested arrays succeeded")
	}
}
