package protocol

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
	// HeaderExpectedOffset on an append makes it conditional: it is written
	// only if the log's next offset equals this decimal value, and answered
	// with ErrExpectedOffset (409) otherwise. Not stored.
	HeaderExpectedOffset = "Natlog-Expected-Offset"

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
	case HeaderOffset, HeaderTime, HeaderExpectedOffset, HeaderStatus, HeaderDescription,
		HeaderServiceError, HeaderServiceErrorCode:
		return true
	}
	return false
}
