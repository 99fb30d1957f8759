package protocol

import (
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
)

// ErrCode identifies an error precisely; Error.Code (the status) only
// classifies it. Codes are stable: clients switch on them.
type ErrCode int

// The error codes, with the status each is sent with.
const (
	CodeBadRequest       ErrCode = 10001 // 400: the request makes no sense (wrong subject shape, bad header value)
	CodeMalformedBody    ErrCode = 10002 // 400: the body does not decode, or a field is out of its range
	CodeBadLogName       ErrCode = 10003 // 400: the log name is not [A-Za-z0-9_-]{1,128}
	CodeBadSettings      ErrCode = 10004 // 400: log settings in a create request are invalid
	CodeUnknownLog       ErrCode = 10010 // 404: no log of that name
	CodeOffsetOutOfRange ErrCode = 10011 // 404: the offset is below the log's lowest or beyond its end
	CodeNotLeader        ErrCode = 10020 // 409: this node cannot take writes; retry (another node will)
	CodeExpectedOffset   ErrCode = 10021 // 409: Natlog-Expected-Offset does not match the log's next offset
	CodeLogExists        ErrCode = 10022 // 409: create of a log that exists with other settings
	CodePayloadTooLarge  ErrCode = 10030 // 413: a record or batch exceeds the node's limit
	CodeStorage          ErrCode = 10040 // 500: the storage failed (I/O error); see ErrStorage
	CodeCorrupt          ErrCode = 10041 // 500: a stored record failed its checksum
	CodeUnavailable      ErrCode = 10042 // 500: the log or node is shutting down, or the log is being deleted
	CodeInternal         ErrCode = 10043 // 500: a bug: the node caught a panic while serving the request
)

// Error is the typed error of a failed request, as carried in an error
// reply's body: {"error":{"code":404,"err_code":10011,"description":"..."}}.
// Code is the HTTP-like status (also in the Status header), ErrCode the
// precise error, Description a message for people (also in the Description
// header).
//
// errors.Is(err, ErrX) holds for an *Error whose ErrCode is ErrX's, so
// callers compare with the sentinels below.
type Error struct {
	Code        int     `json:"code" msgpack:"code"`
	ErrCode     ErrCode `json:"err_code" msgpack:"err_code"`
	Description string  `json:"description" msgpack:"description"`
}

// ErrorReply is the body of an error reply.
type ErrorReply struct {
	Error *Error `json:"error" msgpack:"error"`
}

// Sentinel errors, one per ErrCode. Unless said otherwise the outcome of a
// request that fails with one is definite: nothing was written.
var (
	// ErrBadRequest: the request is not one natlog understands.
	ErrBadRequest = &Error{400, CodeBadRequest, "bad request"}
	// ErrMalformedBody: the body does not decode as the subject's request.
	ErrMalformedBody = &Error{400, CodeMalformedBody, "malformed body"}
	// ErrBadLogName: the subject names no valid log.
	ErrBadLogName = &Error{400, CodeBadLogName, "bad log name"}
	// ErrBadSettings: a create request's settings are invalid.
	ErrBadSettings = &Error{400, CodeBadSettings, "bad log settings"}
	// ErrUnknownLog: the log does not exist (reads, info and delete never
	// create a log; appends do).
	ErrUnknownLog = &Error{404, CodeUnknownLog, "unknown log"}
	// ErrOffsetOutOfRange: the offset is not in the log. The description
	// gives the valid range, e.g. "offset 99 out of range [0, 41]".
	ErrOffsetOutOfRange = &Error{404, CodeOffsetOutOfRange, "offset out of range"}
	// ErrNotLeader: this node does not take appends now. Retry; with
	// Natlog-Msg-Id the retry is safe even if the outcome was indefinite.
	ErrNotLeader = &Error{409, CodeNotLeader, "not leader"}
	// ErrExpectedOffset: the conditional append's Natlog-Expected-Offset
	// was not the log's next offset. The description says what it is.
	ErrExpectedOffset = &Error{409, CodeExpectedOffset, "expected offset mismatch"}
	// ErrLogExists: a create request named an existing log with different
	// settings. (Creating it again with the same settings succeeds.)
	ErrLogExists = &Error{409, CodeLogExists, "log exists with other settings"}
	// ErrPayloadTooLarge: a record, or a batch, is larger than the node
	// takes (see the node's max_record_bytes in its status).
	ErrPayloadTooLarge = &Error{413, CodePayloadTooLarge, "payload too large"}
	// ErrStorage: the storage failed. For an append the outcome is
	// INDEFINITE: the records may or may not survive a crash. The log
	// refuses further appends until the node reopens it.
	ErrStorage = &Error{500, CodeStorage, "storage failure"}
	// ErrCorrupt: a stored record failed its checksum; it is never
	// returned as data.
	ErrCorrupt = &Error{500, CodeCorrupt, "corrupt record"}
	// ErrUnavailable: the node is shutting down or the log is being
	// deleted. For an append the outcome is definite (not written).
	ErrUnavailable = &Error{500, CodeUnavailable, "unavailable"}
	// ErrInternal: the node failed while serving the request (a bug). For
	// an append the outcome is INDEFINITE.
	ErrInternal = &Error{500, CodeInternal, "internal error"}
)

var sentinels = []*Error{
	ErrBadRequest, ErrMalformedBody, ErrBadLogName, ErrBadSettings, ErrUnknownLog,
	ErrOffsetOutOfRange, ErrNotLeader, ErrExpectedOffset, ErrLogExists,
	ErrPayloadTooLarge, ErrStorage, ErrCorrupt, ErrUnavailable, ErrInternal,
}

// Sentinel returns the sentinel error for code, or nil if code is unknown.
func Sentinel(code ErrCode) *Error {
	for _, e := range sentinels {
		if e.ErrCode == code {
			return e
		}
	}
	return nil
}

// Errorf returns a copy of the sentinel kind with a specific description.
func Errorf(kind *Error, format string, args ...any) *Error {
	return &Error{Code: kind.Code, ErrCode: kind.ErrCode, Description: fmt.Sprintf(format, args...)}
}

// Error implements error: "natlog: <description> (<status>/<err_code>)".
func (e *Error) Error() string {
	return "natlog: " + e.Description + " (" + strconv.Itoa(e.Code) + "/" + strconv.Itoa(int(e.ErrCode)) + ")"
}

// Is reports whether target is an *Error with the same ErrCode, so that
// errors.Is(err, ErrUnknownLog) holds for every unknown-log error.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	return ok && t.ErrCode == e.ErrCode
}

// AsError returns err as an *Error if it is or wraps one, and otherwise
// ErrInternal carrying err's text. It never returns nil for a non-nil err.
func AsError(err error) *Error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return Errorf(ErrInternal, "%v", err)
}

// AppendJSON appends e's error reply body in JSON.
func (e *Error) AppendJSON(dst []byte) []byte {
	b, _ := json.Marshal(ErrorReply{Error: e}) // cannot fail: strings and ints
	return append(dst, b...)
}

// AppendMsgpack appends e's error reply body in msgpack:
// map{"error": map{"code": int, "err_code": int, "description": str}}.
func (e *Error) AppendMsgpack(dst []byte) []byte {
	dst = appendMapLen(dst, 1)
	dst = appendString(dst, "error")
	dst = appendMapLen(dst, 3)
	dst = appendString(dst, "code")
	dst = appendInt(dst, int64(e.Code))
	dst = appendString(dst, "err_code")
	dst = appendInt(dst, int64(e.ErrCode))
	dst = appendString(dst, "description")
	dst = appendString(dst, e.Description)
	return dst
}

// ReplyError returns the error a reply carries, or nil if the reply is not
// an error reply (it has no Status header, or a 1xx/2xx one). It reads the
// typed body (msgpack if the reply's Content-Type says so, JSON otherwise),
// falling back to the Status and Description headers if the body does not
// decode. header may be a nats.Header.
func ReplyError(header map[string][]string, body []byte) *Error {
	status := first(header, HeaderStatus)
	if status == "" {
		return nil
	}
	code, err := strconv.Atoi(status)
	if err != nil || (code >= 100 && code < 300) {
		if err == nil {
			return nil
		}
		code = 500
	}
	var rep ErrorReply
	if first(header, HeaderContentType) == ContentTypeMsgpack {
		if e, err := decodeErrorMsgpack(body); err == nil {
			rep.Error = e
		}
	} else if json.Unmarshal(body, &rep) != nil {
		rep.Error = nil
	}
	if rep.Error != nil && rep.Error.Code != 0 {
		return rep.Error
	}
	e := &Error{Code: code, Description: first(header, HeaderDescription)}
	if e.Description == "" {
		e.Description = "status " + status
	}
	return e
}

func first(h map[string][]string, key string) string {
	if v := h[key]; len(v) > 0 {
		return v[0]
	}
	return ""
}
