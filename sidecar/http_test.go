package sidecar

import (
	"bytes"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/natlog/natlog/sidecar/protocol"
)

func httpDo(t *testing.T, method, url, contentType string, body []byte, hdr map[string]string) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

func TestHTTP(t *testing.T) {
	cfg := testConfig(t)
	cfg.MaxRecordBytes = 1000
	s := startNode(t, cfg)
	base := s.HTTPURL()

	if code, body := httpDo(t, "GET", base+"/healthz", "", nil, nil); code != 200 || string(body) != "ok\n" {
		t.Fatalf("healthz: %d %q", code, body)
	}
	if code, body := httpDo(t, "GET", base+"/readyz", "", nil, nil); code != 200 || string(body) != "ready\n" {
		t.Fatalf("readyz: %d %q", code, body)
	}

	type step struct {
		name        string
		method, url string
		ct          string
		body        string
		hdr         map[string]string
		wantCode    int
		wantBody    string // exact, or
		wantErrCode protocol.ErrCode
	}
	steps := []step{
		{"raw append", "POST", "/v1/logs/web/records", "text/plain", "hello", nil, 200, `{"log":"web","offset":0}` + "\n", 0},
		{"json string value", "POST", "/v1/logs/web/records", "application/json", `{"value":"héllo","headers":{"k":["v"]}}`, nil, 200, `{"log":"web","offset":1}` + "\n", 0},
		{"json object value", "POST", "/v1/logs/web/records", "application/json; charset=utf-8", `{"value":{"a":[1,2]}}`, nil, 200, `{"log":"web","offset":2}` + "\n", 0},
		{"binary value", "POST", "/v1/logs/web/records", "application/octet-stream", "\xff\x00\xfe", nil, 200, `{"log":"web","offset":3}` + "\n", 0},
		{"with msg id", "POST", "/v1/logs/web/records", "", "once", map[string]string{"Natlog-Msg-Id": "h1"}, 200, `{"log":"web","offset":4}` + "\n", 0},
		{"retry with msg id", "POST", "/v1/logs/web/records", "", "once", map[string]string{"Natlog-Msg-Id": "h1"}, 200, `{"log":"web","offset":4,"duplicate":true}` + "\n", 0},
		{"read raw", "GET", "/v1/logs/web/records/0", "", "", nil, 200, "", 0},
		{"json without value", "POST", "/v1/logs/web/records", "application/json", `{"headers":{}}`, nil, 400, "", protocol.CodeMalformedBody},
		{"json unknown field", "POST", "/v1/logs/web/records", "application/json", `{"value":"x","extra":1}`, nil, 400, "", protocol.CodeMalformedBody},
		{"broken json", "POST", "/v1/logs/web/records", "application/json", `{"value":`, nil, 400, "", protocol.CodeMalformedBody},
		{"bad header key", "POST", "/v1/logs/web/records", "application/json", `{"value":"x","headers":{"a b":["v"]}}`, nil, 400, "", protocol.CodeMalformedBody},
		{"bad log name", "POST", "/v1/logs/we$b/records", "", "x", nil, 400, "", protocol.CodeBadLogName},
		{"too large", "POST", "/v1/logs/web/records", "", strings.Repeat("x", 1001), nil, 413, "", protocol.CodePayloadTooLarge},
		{"expected offset mismatch", "POST", "/v1/logs/web/records", "", "x", map[string]string{"Natlog-Expected-Offset": "1"}, 409, "", protocol.CodeExpectedOffset},
		{"bad expected offset", "POST", "/v1/logs/web/records", "", "x", map[string]string{"Natlog-Expected-Offset": "-"}, 400, "", protocol.CodeBadRequest},
		{"bad offset", "GET", "/v1/logs/web/records/x", "", "", nil, 400, "", protocol.CodeBadRequest},
		{"offset out of range", "GET", "/v1/logs/web/records/99", "", "", nil, 404, "", protocol.CodeOffsetOutOfRange},
		{"unknown log", "GET", "/v1/logs/nope/records/0", "", "", nil, 404, "", protocol.CodeUnknownLog},
		{"info unknown log", "GET", "/v1/logs/nope", "", "", nil, 404, "", protocol.CodeUnknownLog},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			code, body := httpDo(t, st.method, base+st.url, st.ct, []byte(st.body), st.hdr)
			if code != st.wantCode {
				t.Fatalf("status %d, want %d: %s", code, st.wantCode, body)
			}
			if st.wantBody != "" && string(body) != st.wantBody {
				t.Fatalf("body %q, want %q", body, st.wantBody)
			}
			if st.wantErrCode != 0 {
				var rep protocol.ErrorReply
				if err := json.Unmarshal(body, &rep); err != nil || rep.Error == nil || rep.Error.ErrCode != st.wantErrCode || rep.Error.Code != code {
					t.Fatalf("error body %s, want err_code %d", body, st.wantErrCode)
				}
			}
		})
	}

	read := func(off string) map[string]any {
		t.Helper()
		code, body := httpDo(t, "GET", base+"/v1/logs/web/records/"+off, "", nil, nil)
		if code != 200 {
			t.Fatalf("read %s: %d %s", off, code, body)
		}
		var m map[string]any
		if err := json.Unmarshal(body, &m); err != nil {
			t.Fatal(err)
		}
		return m
	}
	if r := read("0"); r["value"] != "hello" || r["offset"] != 0.0 || r["log"] != "web" || r["time"] == 0.0 {
		t.Errorf("record 0: %v", r)
	}
	if r := read("1"); r["value"] != "héllo" || r["headers"].(map[string]any)["k"].([]any)[0] != "v" {
		t.Errorf("record 1: %v", r)
	}
	if r := read("2"); r["value"] != `{"a":[1,2]}` {
		t.Errorf("record 2: %v", r)
	}
	if r := read("3"); r["value"] != nil || r["value_base64"] != "/wD+" {
		t.Errorf("record 3: %v", r)
	}

	// The gateway and NATS see the same log.
	nc := connectTo(t, s)
	m := request(t, nc, "natlog.read.web", []byte("1"), nil)
	if string(m.Data) != "héllo" || m.Header.Get("k") != "v" {
		t.Fatalf("NATS read of an HTTP append: %q %v", m.Data, m.Header)
	}

	code, body := httpDo(t, "GET", base+"/v1/logs", "", nil, nil)
	if code != 200 || !strings.Contains(string(body), `"log":"web"`) {
		t.Fatalf("GET /v1/logs: %d %s", code, body)
	}

	code, body = httpDo(t, "GET", base+"/metrics", "", nil, nil)
	if code != 200 {
		t.Fatalf("metrics: %d", code)
	}
	for _, want := range []string{
		`natlog_requests_total{op="http_append",outcome="ok"} 6`,
		`natlog_requests_total{op="http_append",outcome="too_large"} 1`,
		`natlog_requests_total{op="read",outcome="ok"} 1`,
		`natlog_request_duration_seconds_count{op="http_read",outcome="not_found"} 2`,
		`natlog_fsync_duration_seconds_count `,
		`natlog_log_bytes{log="web"} `,
		`natlog_log_segments{log="web"} 1`,
		`natlog_log_records{log="web"} 5`,
		`natlog_logs 1`,
		`natlog_log_no_space_total{log="web"} 0`,
		`natlog_data_dir_free_bytes `,
		`natlog_data_dir_size_bytes `,
		`go_goroutines `,
	} {
		if !strings.Contains(string(body), want) {
			t.Errorf("metrics lack %q", want)
		}
	}
}
