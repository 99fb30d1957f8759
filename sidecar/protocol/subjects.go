package protocol

import (
	"fmt"
	"strings"
)

// DefaultPrefix is the subject prefix a node uses unless configured
// otherwise.
const DefaultPrefix = "natlog"

// MaxLogNameLen is the longest log name.
const MaxLogNameLen = 128

// The operations, each the second token of its subjects.
const (
	OpAppend = "append" // <prefix>.append.<log>
	OpRead   = "read"   // <prefix>.read.<log>
	OpInfo   = "info"   // <prefix>.info.<log>
	OpCreate = "create" // <prefix>.create.<log>
	OpDelete = "delete" // <prefix>.delete.<log>
	OpLogs   = "logs"   // <prefix>.logs
	OpStatus = "status" // <prefix>.cluster.status
)

// ValidLogName reports whether name is a log name: 1 to 128 characters from
// [A-Za-z0-9_-]. Such a name is one NATS subject token and a safe file name.
func ValidLogName(name string) bool { return validToken(name, MaxLogNameLen) }

// validToken reports whether tok is 1 to max characters from [A-Za-z0-9_-].
func validToken(tok string, max int) bool {
	if len(tok) == 0 || len(tok) > max {
		return false
	}
	for i := 0; i < len(tok); i++ {
		c := tok[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9', c == '_', c == '-':
		default:
			return false
		}
	}
	return true
}

// CheckLogName returns nil for a valid log name and an ErrBadLogName error
// saying why otherwise.
func CheckLogName(name string) error {
	if ValidLogName(name) {
		return nil
	}
	if len(name) > MaxLogNameLen {
		return Errorf(ErrBadLogName, "bad log name: %d characters, at most %d allowed", len(name), MaxLogNameLen)
	}
	return Errorf(ErrBadLogName, "bad log name %q: want 1 to %d characters from [A-Za-z0-9_-]", name, MaxLogNameLen)
}

// ValidPrefix reports whether p can prefix natlog's subjects: one or more
// dot-separated tokens of 1 to 256 characters from [A-Za-z0-9_-].
func ValidPrefix(p string) bool {
	if p == "" {
		return false
	}
	for tok := range strings.SplitSeq(p, ".") {
		if !validToken(tok, 256) {
			return false
		}
	}
	return true
}

// Subjects names the subjects under one prefix. The zero value is not
// usable; make one with NewSubjects.
type Subjects struct {
	prefix string
}

// NewSubjects returns the subjects under prefix ("" means DefaultPrefix).
func NewSubjects(prefix string) (Subjects, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	if !ValidPrefix(prefix) {
		return Subjects{}, fmt.Errorf("protocol: bad subject prefix %q: want dot-separated tokens of [A-Za-z0-9_-]", prefix)
	}
	return Subjects{prefix: prefix}, nil
}

// Prefix returns the prefix.
func (s Subjects) Prefix() string { return s.prefix }

// Append is the subject that appends to log.
func (s Subjects) Append(log string) string { return s.prefix + ".append." + log }

// Read is the subject that reads from log.
func (s Subjects) Read(log string) string { return s.prefix + ".read." + log }

// Info is the subject that describes log.
func (s Subjects) Info(log string) string { return s.prefix + ".info." + log }

// Create is the subject that creates log with its own settings.
func (s Subjects) Create(log string) string { return s.prefix + ".create." + log }

// Delete is the subject that deletes log and all its records.
func (s Subjects) Delete(log string) string { return s.prefix + ".delete." + log }

// Logs is the subject that lists the logs.
func (s Subjects) Logs() string { return s.prefix + ".logs" }

// Status is the subject that describes the cluster.
func (s Subjects) Status() string { return s.prefix + ".cluster.status" }

// Node returns the subjects that reach only the node id (which must be a
// valid log name, as node ids are): "<prefix>.node.<id>.read.<log>" and so
// on. A client uses them to route reads to a replica of its choice.
func (s Subjects) Node(id string) Subjects { return Subjects{prefix: s.prefix + ".node." + id} }

// Wildcard is the subscription subject for a per-log operation (OpAppend,
// OpRead, OpInfo, OpCreate, OpDelete): "<prefix>.<op>.>". It matches
// subjects with more than one token after the operation too, so that a
// malformed log name is answered with ErrBadLogName rather than silence.
func (s Subjects) Wildcard(op string) string { return s.prefix + "." + op + ".>" }

// LogName returns the log named by subject, which must be a per-log subject
// of operation op under this prefix (a subject matched by Wildcard(op)).
// It returns an ErrBadLogName error if the rest of the subject is not a
// valid log name.
func (s Subjects) LogName(op, subject string) (string, error) {
	p := len(s.prefix)
	n := p + len(op) + 2 // prefix "." op "."
	if len(subject) < n || subject[:p] != s.prefix || subject[p] != '.' ||
		subject[p+1:n-1] != op || subject[n-1] != '.' {
		return "", Errorf(ErrBadRequest, "subject %q is not a %s subject under %q", subject, op, s.prefix)
	}
	name := subject[n:]
	if err := CheckLogName(name); err != nil {
		return "", err
	}
	return name, nil
}
