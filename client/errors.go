package client

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/nats-io/nats.go"

	"github.com/natlog/natlog/sidecar/protocol"
)

// The errors a node answers with, for errors.Is: an *Error from this
// package wraps the node's *protocol.Error, which matches these.
var (
	ErrUnknownLog       = protocol.ErrUnknownLog
	ErrOffsetOutOfRange = protocol.ErrOffsetOutOfRange
	ErrExpectedOffset   = protocol.ErrExpectedOffset
	ErrPayloadTooLarge  = protocol.ErrPayloadTooLarge
	ErrBadLogName       = protocol.ErrBadLogName
	ErrStorage          = protocol.ErrStorage
	ErrCorrupt          = protocol.ErrCorrupt
	ErrUnavailable      = protocol.ErrUnavailable
)

// ErrClosed is returned by a client that was closed.
var ErrClosed = errors.New("natlog client: closed")

// Error is the error of a failed request. Err is what the last attempt
// ended with: the node's *protocol.Error, a NATS error (nats.ErrNoResponders
// when no node answered), or the context's error.
//
// Indefinite says the outcome is unknown: some attempt may have taken
// effect (an append that timed out, or whose context ended or connection
// closed after it was sent, may have been written), whatever the last
// attempt ended with. Otherwise the failure is definite: nothing was
// written. Appends carry a Natlog-Msg-Id, so
// retrying an indefinite append within the node's dedup window (2 minutes
// by default) with the same id (WithMsgID) never writes it twice.
type Error struct {
	Op         string // "append", "read", "fetch", ...
	Log        string
	Err        error
	Indefinite bool
	// Attempts is how many requests were sent.
	Attempts int
}

func (e *Error) Error() string {
	s := "natlog client: " + e.Op
	if e.Log != "" {
		s += " " + e.Log
	}
	s += ": " + e.Err.Error()
	if e.Indefinite {
		s += " (outcome unknown: it may have taken effect)"
	}
	if e.Attempts > 1 {
		s += fmt.Sprintf(" after %d attempts", e.Attempts)
	}
	return s
}

func (e *Error) Unwrap() error { return e.Err }

// IsIndefinite reports whether err leaves the outcome of its request
// unknown (see Error.Indefinite).
func IsIndefinite(err error) bool {
	var e *Error
	return errors.As(err, &e) && e.Indefinite
}

// outcome classifies the error of one attempt: whether another attempt may
// succeed, and whether this one may have taken effect.
func outcome(err error) (retry, indefinite bool) {
	var perr *protocol.Error
	switch {
	case errors.As(err, &perr):
		switch perr.ErrCode {
		case protocol.CodeNotLeader:
			// "nothing was written" or "leadership lost while
			// committing": the description says which.
			return true, !strings.Contains(perr.Description, "nothing was written")
		case protocol.CodeUnavailable:
			return true, false
		case protocol.CodeStorage:
			// A write that failed before it wrote anything (a full
			// disk) says so.
			return false, !strings.Contains(perr.Description, "nothing was written")
		case protocol.CodeInternal:
			return false, true
		}
		return false, false
	case errors.Is(err, nats.ErrPermissionViolation):
		// The NATS server refused to pass the request on: it reached
		// no node, and would not on another attempt.
		return false, false
	case errors.Is(err, nats.ErrNoResponders):
		// No node subscribed: an election, or no node up. Nothing
		// received the request.
		return true, false
	case errors.Is(err, nats.ErrTimeout), errors.Is(err, context.DeadlineExceeded):
		return true, true
	case errors.Is(err, context.Canceled):
		// Cancelled while waiting for the reply: the request was
		// sent (do checks the context before sending).
		return false, true
	case errors.Is(err, nats.ErrDisconnected):
		// The connection dropped while waiting for the reply: the
		// request may have reached a node; nats.go reconnects.
		return true, true
	case errors.Is(err, nats.ErrConnectionClosed):
		// Closed while waiting for the reply (do makes it definite
		// when the connection was closed before sending).
		return false, true
	case errors.Is(err, nats.ErrConnectionReconnecting):
		return true, false
	}
	return false, false
}
