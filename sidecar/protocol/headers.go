package protocol

import "strings"

// NATS headers natlog reads or writes. Header names are matched exactly
// (nats.go's Header.Get is case-sensitive), in the spelling given here.
const (
	// HeaderOffset is set on a single-record read reply: the record's
	// offset, in decimal.
	HeaderOffset = "Natlog-Offset"
	// HeaderTime is set on a single-record read reply: the record's
	// timestamp in Unix nanoseconds, in decimal.
	HeaderTime = "Natlog-Time"
	// HeaderMsgID on an append names the message for deduplication: an
	// append whose id the log has seen within its dedup window is not
	// written again; the reply gives the first append's offset and
	// "duplicate": true. It is stored with the record.
	HeaderMsgID = "Natlog-Msg-Id"
	// HeaderMsgCount is stored, with HeaderMsgID, on the first record of
	// a batch appended with a Natlog-Msg-Id: the number of records of the
	// batch (the id is stored once per append, on its first record). It
	// cannot be set by clients.
	HeaderMsgCount = "Natlog-Msg-Count"
	// HeaderExpectedOffset on an append makes it conditional: it is written
	// only if the log's next offset equals this decimal value, and answered
	// with ErrExpectedOffset (409) otherwise. Not stored.
	HeaderExpectedOffset = "Natlog-Expected-Offset"
	// HeaderMinIndex on a read request (cluster mode) is a Raft index in
	// decimal, as an append reply's "index" gives it: the replica answers
	// only once it has applied the Raft log that far (see
	// ReadRequest.MinIndex). It is how a single-record read, whose body
	// is only an offset, asks for read-your-writes; a batch read may give
	// it too (the larger of it and the body's min_index counts).
	HeaderMinIndex = "Natlog-Min-Index"

	// HeaderStatus is set on every error reply: the status code in
	// decimal (400, 404, 409, 413 or 500), as JetStream does.
	HeaderStatus = "Status"
	// HeaderDescription is set on every error reply: a human-readable
	// description of the error.
	HeaderDescription = "Description"
	// HeaderContentType says how a body is encoded. On an append request,
	// ContentTypeMsgpack makes the body a batch (AppendBatchRequest); on a
	// read request it makes the body a msgpack ReadRequest. Replies that
	// have a structured body say which encoding it is in.
	HeaderContentType = "Content-Type"
	// HeaderAccept on a batch read request asks for the reply in JSON
	// (ContentTypeJSON) instead of msgpack.
	HeaderAccept = "Accept"

	// HeaderServiceError and HeaderServiceErrorCode are the NATS micro
	// framework's error headers, also set on error replies so that
	// micro-aware tools show the error: the description and the status.
	HeaderServiceError     = "Nats-Service-Error"
	HeaderServiceErrorCode = "Nats-Service-Error-Code"
)

// Content types.
const (
	ContentTypeMsgpack = "application/msgpack"
	ContentTypeJSON    = "application/json"
)

// Reserved reports whether a request header is natlog's own and therefore
// not stored with an appended record: Natlog-Offset, Natlog-Time,
// Natlog-Expected-Offset (which would clash with, or mean nothing on, a
// read reply) and the status headers. Natlog-Msg-Id is stored.
func Reserved(key string) bool {
	switch key {
	case HeaderOffset, HeaderTime, HeaderExpectedOffset, HeaderMsgCount, HeaderStatus, HeaderDescription,
		HeaderServiceError, HeaderServiceErrorCode:
		return true
	}
	return false
}

// ValidHeaderKey reports whether k can be a NATS header key (and so the key
// of a stored record header): printable ASCII (33 to 126) except
// "(),/:;<=>?@[\]{} and the double quote, as nats.go requires.
func ValidHeaderKey(k string) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if c < 33 || c > 126 || strings.IndexByte(`"(),/:;<=>?@[\]{}`, c) >= 0 {
			return false
		}
	}
	return true
}

// ValidHeaderValue reports whether v can be a NATS header value as given:
// no CR or LF (nats.go would replace them with spaces).
func ValidHeaderValue(v string) bool {
	return !strings.ContainsAny(v, "\r\n")
}
