package sidecar

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/sidecar/protocol"
)

// startHTTP serves health, metrics and the JSON gateway on cfg.HTTPListen.
func (s *Server) startHTTP() error {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if !s.Ready() {
			// HTTP's own "unavailable", for load balancers and probes
			// (the NATS side never uses 503).
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, "not ready\n")
			return
		}
		io.WriteString(w, "ready\n")
	})
	mux.Handle("GET /metrics", promhttp.HandlerFor(s.metrics.reg, promhttp.HandlerOpts{}))
	mux.HandleFunc("POST /v1/logs/{log}/records", s.httpAppend)
	mux.HandleFunc("GET /v1/logs/{log}/records/{offset}", s.httpRead)
	mux.HandleFunc("GET /v1/logs", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.listLogs())
	})
	mux.HandleFunc("GET /v1/logs/{log}", func(w http.ResponseWriter, r *http.Request) {
		name := r.PathValue("log")
		if err := protocol.CheckLogName(name); err != nil {
			writeError(w, protocol.AsError(err))
			return
		}
		li, perr := s.info(name)
		if perr != nil {
			writeError(w, perr)
			return
		}
		writeJSON(w, http.StatusOK, li)
	})
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.status())
	})

	ln, err := net.Listen("tcp", s.cfg.HTTPListen)
	if err != nil {
		return fmt.Errorf("http listen: %w", err)
	}
	s.httpURL = "http://" + ln.Addr().String()
	s.httpSrv = &http.Server{
		Handler:           mux,
		ReadHeaderTimeout: 10 * time.Second,
		ErrorLog:          nil,
	}
	go func() {
		if err := s.httpSrv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.logger.Error("natlog: http server", "err", err)
		}
	}()
	return nil
}

// httpAppendBody is the JSON form of an HTTP append (Content-Type
// application/json): a string value is stored as its UTF-8 bytes, any
// other JSON value as its JSON text.
type httpAppendBody struct {
	Value   json.RawMessage  `json:"value"`
	Headers protocol.Headers `json:"headers,omitempty"`
}

// httpAppend serves POST /v1/logs/{log}/records: the body is the record's
// value, or with Content-Type application/json {"value": ..., "headers":
// {...}}. Natlog-Msg-Id and Natlog-Expected-Offset headers work as on NATS.
func (s *Server) httpAppend(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	perr := s.httpAppendErr(w, r)
	if perr != nil {
		writeError(w, perr)
	}
	s.metrics.observe(opHTTPAppend, perr, time.Since(start))
}

func (s *Server) httpAppendErr(w http.ResponseWriter, r *http.Request) *protocol.Error {
	name := r.PathValue("log")
	if err := protocol.CheckLogName(name); err != nil {
		return protocol.AsError(err)
	}
	conds := map[string][]string{}
	for _, k := range []string{protocol.HeaderMsgID, protocol.HeaderExpectedOffset} {
		if v := r.Header.Values(k); len(v) > 0 {
			conds[k] = v
		}
	}
	o, perr := parseAppendHeaders(conds)
	if perr != nil {
		return perr
	}
	isJSON := false
	if mt, _, err := mime.ParseMediaType(r.Header.Get("Content-Type")); err == nil && mt == protocol.ContentTypeJSON {
		isJSON = true
	}
	limit := s.maxRecord + 1
	if isJSON {
		limit = 6*s.maxRecord + 4096 // escaping can make JSON text up to six times larger
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, limit))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return protocol.Errorf(protocol.ErrPayloadTooLarge, "body exceeds %d bytes", limit-1)
		}
		return protocol.Errorf(protocol.ErrBadRequest, "reading body: %v", err)
	}
	rec := logcore.Record{Value: body}
	if isJSON {
		var b httpAppendBody
		if err := decodeStrict(body, &b); err != nil {
			return protocol.Errorf(protocol.ErrMalformedBody, `malformed body: %v (want {"value": ...})`, err)
		}
		if len(b.Value) == 0 {
			return protocol.Errorf(protocol.ErrMalformedBody, `malformed body: no "value" (want {"value": ...})`)
		}
		var str string
		if b.Value[0] == '"' && json.Unmarshal(b.Value, &str) == nil {
			rec.Value = []byte(str)
		} else {
			rec.Value = b.Value
		}
		// The node stores a Natlog-Msg-Id only as the request's
		// (below): one among the body's headers would become a dedup
		// id when the log's ids are loaded from its records.
		rec.Headers = fromHeaders(b.Headers, protocol.HeaderMsgID)
		if perr := checkHeaders(rec.Headers); perr != nil {
			return perr
		}
	}
	if o.msgID != "" {
		rec.Headers = append(rec.Headers, logcore.Header{Key: protocol.HeaderMsgID, Value: o.msgID})
	}
	if perr := s.checkRecord(&rec); perr != nil {
		return perr
	}
	res, perr := s.appendRecords(name, []logcore.Record{rec}, o)
	if perr != nil {
		return perr
	}
	writeJSON(w, http.StatusOK, protocol.AppendReply{Log: name, Offset: res.first, Duplicate: res.duplicate, Index: res.index})
	return nil
}

// httpRecord is a record in the HTTP gateway's JSON: Value holds the value
// if it is valid UTF-8, ValueBase64 otherwise.
type httpRecord struct {
	Log         string           `json:"log"`
	Offset      uint64           `json:"offset"`
	Time        int64            `json:"time"`
	Headers     protocol.Headers `json:"headers,omitempty"`
	Value       *string          `json:"value,omitempty"`
	ValueBase64 []byte           `json:"value_base64,omitempty"`
}

// httpRead serves GET /v1/logs/{log}/records/{offset}.
func (s *Server) httpRead(w http.ResponseWriter, r *http.Request) {
	start := time.Now()
	perr := s.httpReadErr(w, r)
	if perr != nil {
		writeError(w, perr)
	}
	s.metrics.observe(opHTTPRead, perr, time.Since(start))
}

func (s *Server) httpReadErr(w http.ResponseWriter, r *http.Request) *protocol.Error {
	name := r.PathValue("log")
	if err := protocol.CheckLogName(name); err != nil {
		return protocol.AsError(err)
	}
	off, err := strconv.ParseUint(r.PathValue("offset"), 10, 64)
	if err != nil {
		return protocol.Errorf(protocol.ErrBadRequest, "bad offset %q: want a decimal offset", r.PathValue("offset"))
	}
	minIndex, perr := parseMinIndex(r.Header)
	if perr != nil {
		return perr
	}
	// A wait for min_index ends with the request or the node.
	ctx, cancel := context.WithCancel(r.Context())
	defer cancel()
	stop := context.AfterFunc(s.stopCtx, cancel)
	defer stop()
	rec, perr := s.readOne(ctx, name, off, minIndex)
	if perr != nil {
		return perr
	}
	out := httpRecord{Log: name, Offset: rec.Offset, Time: rec.Time, Headers: toHeaders(rec.Headers)}
	if utf8.Valid(rec.Value) {
		v := string(rec.Value)
		out.Value = &v
	} else {
		out.ValueBase64 = rec.Value
	}
	writeJSON(w, http.StatusOK, out)
	return nil
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		writeError(w, protocol.Errorf(protocol.ErrInternal, "encoding reply: %v", err))
		return
	}
	w.Header().Set("Content-Type", protocol.ContentTypeJSON)
	w.WriteHeader(status)
	w.Write(append(b, '\n'))
}

func writeError(w http.ResponseWriter, e *protocol.Error) {
	w.Header().Set("Content-Type", protocol.ContentTypeJSON)
	w.WriteHeader(e.Code)
	w.Write(append(e.AppendJSON(nil), '\n'))
}

func decodeStrict(body []byte, v any) error {
	d := json.NewDecoder(bytes.NewReader(body))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return err
	}
	if d.More() {
		return errors.New("data after the JSON value")
	}
	return nil
}
