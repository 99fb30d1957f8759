package protocol

import (
	"bytes"
	"errors"
	"reflect"
	"testing"
)

// The decoders take bodies from the network: they must never panic, and
// whatever they accept must survive a round trip.

func FuzzDecodeAppendBatch(f *testing.F) {
	req := AppendBatchRequest{Records: []AppendRecord{{Value: []byte("a")}, {Value: []byte("bc"), Headers: Headers{"k": {"v"}}}}}
	f.Add(req.AppendMsgpack(nil))
	f.Add([]byte{0x81, 0xa7, 'r', 'e', 'c', 'o', 'r', 'd', 's', 0xdd, 0xff, 0xff, 0xff, 0xff})
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := DecodeAppendBatch(body)
		if err != nil {
			if !errors.Is(err, ErrMalformedBody) {
				t.Fatalf("error %v is not ErrMalformedBody", err)
			}
			return
		}
		again, err := DecodeAppendBatch(got.AppendMsgpack(nil))
		if err != nil {
			t.Fatalf("re-encoded batch does not decode: %v", err)
		}
		if len(again.Records) != len(got.Records) {
			t.Fatalf("round trip changed the record count")
		}
		for i := range got.Records {
			if !bytes.Equal(again.Records[i].Value, got.Records[i].Value) {
				t.Fatalf("round trip changed record %d", i)
			}
		}
	})
}

func FuzzParseReadBody(f *testing.F) {
	f.Add([]byte("42"), false)
	f.Add([]byte(`{"offset":1,"max":2,"max_bytes":3,"wait_ms":4}`), false)
	r := ReadRequest{Offset: 9, Max: 1}
	f.Add(r.AppendMsgpack(nil), true)
	mo := uint64(3)
	r = ReadRequest{Offset: 9, MinOffset: &mo, MinIndex: 12, Linearizable: true}
	f.Add(r.AppendMsgpack(nil), true)
	f.Add([]byte(`{"offset":1,"min_offset":0,"min_index":5}`), false)
	f.Fuzz(func(t *testing.T, body []byte, isMsgpack bool) {
		ct := ""
		if isMsgpack {
			ct = ContentTypeMsgpack
		}
		req, _, err := ParseReadBody(body, ct)
		if err != nil {
			if !errors.Is(err, ErrMalformedBody) {
				t.Fatalf("error %v is not ErrMalformedBody", err)
			}
			return
		}
		if req.Max < 0 || req.MaxBytes < 0 || req.WaitMs < 0 {
			t.Fatalf("accepted negative limits: %+v", req)
		}
		back, err := DecodeReadRequest(req.AppendMsgpack(nil))
		if err != nil || !reflect.DeepEqual(back, req) {
			t.Fatalf("round trip: %+v, %v; want %+v", back, err, req)
		}
	})
}

func FuzzDecodeReadReply(f *testing.F) {
	rep := ReadReply{Log: "x", Records: []Record{{Offset: 1, Time: 2, Value: []byte("v"), Headers: Headers{"a": {"b"}}}}, Next: 2, End: 2}
	f.Add(rep.AppendMsgpack(nil))
	rep.Index = 9
	f.Add(rep.AppendMsgpack(nil))
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := DecodeReadReply(body)
		if err != nil {
			return
		}
		if _, err := DecodeReadReply(got.AppendMsgpack(nil)); err != nil {
			t.Fatalf("re-encoded reply does not decode: %v", err)
		}
	})
}

func FuzzParseLogSettings(f *testing.F) {
	f.Add([]byte(`{"max_segment_bytes":1048576,"sync":"never"}`), false)
	f.Add([]byte{0x81, 0xa4, 's', 'y', 'n', 'c', 0xa3, 'a', 'b', 'c'}, true)
	f.Fuzz(func(t *testing.T, body []byte, isMsgpack bool) {
		if _, err := ParseLogSettings(body, isMsgpack); err != nil && !errors.Is(err, ErrMalformedBody) {
			t.Fatalf("error %v is not ErrMalformedBody", err)
		}
	})
}

func FuzzReplyError(f *testing.F) {
	f.Add("404", []byte(`{"error":{"code":404,"err_code":10010,"description":"x"}}`), false)
	f.Add("500", Errorf(ErrStorage, "disk").AppendMsgpack(nil), true)
	f.Fuzz(func(t *testing.T, status string, body []byte, isMsgpack bool) {
		h := map[string][]string{"Status": {status}}
		if isMsgpack {
			h["Content-Type"] = []string{ContentTypeMsgpack}
		}
		ReplyError(h, body)
	})
}
