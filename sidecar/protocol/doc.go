// Package protocol holds natlog's wire types: the NATS subjects a node
// answers on, the headers it reads and writes, the msgpack and JSON bodies of
// requests and replies, and the error codes. It is shared by the server
// (package sidecar) and clients, and imports no server code.
//
// docs/protocol.md is the reference for implementers in other languages; this
// package is its Go rendering, and the two must agree.
//
// # Encodings
//
// Bodies are JSON or msgpack. Every msgpack struct carries explicit
// `msgpack:"..."` tags, so any msgpack library that honours them (for Go,
// github.com/vmihailenco/msgpack/v5) encodes and decodes the same schema.
// The hot-path bodies (batch appends, batch reads) also have hand-written
// codecs in this package (DecodeAppendBatch, AppendReadReply, ...) that
// never allocate more than their input justifies and alias their input
// where they can; tests hold the two renderings to the same bytes.
//
// Times are int64 Unix nanoseconds everywhere (never msgpack's timestamp
// extension), offsets are uint64.
//
// # Errors
//
// A failed request is answered, never dropped: the reply carries the NATS
// headers Status (a number, as JetStream uses) and Description, and a body
// {"error":{"code":404,"err_code":10011,"description":"..."}} in JSON, or
// the same in msgpack when the request's Content-Type was
// application/msgpack. See Error and the ErrCode constants. Status 503 is
// never used: nats.go reads it as "no responders".
package protocol
