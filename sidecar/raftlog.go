package sidecar

import (
	"fmt"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/hashicorp/go-hclog"
)

// raftLogger is hashicorp/raft's logger at level ("off" discards), with
// the messages of a normal leadership change or connection close lowered
// from ERROR (see raftQuiet).
func raftLogger(level, node string) hclog.Logger {
	if level == "off" || level == "" {
		return hclog.NewNullLogger()
	}
	return raftQuiet{hclog.New(&hclog.LoggerOptions{Name: "raft " + node, Level: hclog.LevelFromString(level), Output: os.Stderr}), newRepeats(10 * time.Second)}
}

// repeatedPeerErrors are the messages raft repeats for a peer it cannot
// reach, every heartbeat backoff (up to ~8 a second per message): a node
// that crashed stays a member until it is removed, and would flood the log.
// Also the follower's own "failed to append to logs", repeated at every
// entry the leader sends while the follower's disk is full.
var repeatedPeerErrors = map[string]bool{
	"failed to heartbeat to":         true,
	"failed to appendEntries to":     true,
	"failed to make requestVote RPC": true,
	"failed to contact":              true,
	"failed to append to logs":       true,
}

// repeats lets one of repeatedPeerErrors through per peer per interval,
// counting the others.
type repeats struct {
	interval time.Duration
	mu       sync.Mutex
	last     map[string]time.Time
	dropped  map[string]int
}

func newRepeats(interval time.Duration) *repeats {
	return &repeats{interval: interval, last: map[string]time.Time{}, dropped: map[string]int{}}
}

// allow reports whether the message may be logged now and how many of its
// kind were dropped since it last was.
func (r *repeats) allow(msg string, args []any) (ok bool, dropped int) {
	if r == nil || !repeatedPeerErrors[msg] {
		return true, 0
	}
	key := msg + "\x00" + argText(args, "peer") + argText(args, "target") + argText(args, "server-id")
	now := time.Now()
	r.mu.Lock()
	defer r.mu.Unlock()
	if last, seen := r.last[key]; seen && now.Sub(last) < r.interval {
		r.dropped[key]++
		return false, 0
	}
	r.last[key] = now
	dropped = r.dropped[key]
	delete(r.dropped, key)
	return true, dropped
}

// raftQuiet lowers hashicorp/raft's ERRORs and WARNs that report the
// normal course of a cluster: a leader that learns of a newer term (every
// election or step-down), a transport connection closed while a request or
// response was on it (a peer restarting, or Raft closing idle pooled
// connections), a fresh node waiting to be bootstrapped or added, and a
// follower being brought up to date. Operators should not learn to ignore
// ERROR and WARN lines.
//
// It also lets through one of raft's repeated errors about an unreachable
// peer per peer every 10 seconds, with the number it dropped since.
type raftQuiet struct {
	hclog.Logger
	rep *repeats // shared by the loggers Named and With derive
}

// quietLevel is the level a raft message logged at level is logged at.
func quietLevel(level hclog.Level, msg string, args []any) hclog.Level {
	if level != hclog.Error && level != hclog.Warn {
		return level
	}
	switch msg {
	case "peer has newer term, stopping replication",
		"no known peers, aborting election",
		"appendEntries rejected, sending older logs":
		return hclog.Info
	case "failed to get previous log":
		if argText(args, "error") == "log not found" {
			return hclog.Info
		}
	case "failed to decode incoming command", "failed to flush response":
		if closedConn(argText(args, "error")) {
			return hclog.Debug
		}
	}
	return level
}

// argText is the text of the value of key in hclog's key-value args.
func argText(args []any, key string) string {
	for i := 0; i+1 < len(args); i += 2 {
		if k, _ := args[i].(string); k == key {
			return fmt.Sprint(args[i+1])
		}
	}
	return ""
}

// closedConn reports whether err's text says the connection was closed.
func closedConn(err string) bool {
	return strings.Contains(err, "use of closed network connection") ||
		strings.Contains(err, "connection closed by peer") || err == "EOF"
}

func (l raftQuiet) Error(msg string, args ...any) { l.Log(hclog.Error, msg, args...) }

func (l raftQuiet) Warn(msg string, args ...any) { l.Log(hclog.Warn, msg, args...) }

func (l raftQuiet) Log(level hclog.Level, msg string, args ...any) {
	level = quietLevel(level, msg, args)
	if level < l.Logger.GetLevel() {
		return
	}
	ok, dropped := l.rep.allow(msg, args)
	if !ok {
		return
	}
	if dropped > 0 {
		args = append(args[:len(args):len(args)], "repeats_dropped", dropped)
	}
	l.Logger.Log(level, msg, args...)
}

func (l raftQuiet) Named(name string) hclog.Logger {
	return raftQuiet{l.Logger.Named(name), l.rep}
}

func (l raftQuiet) ResetNamed(name string) hclog.Logger {
	return raftQuiet{l.Logger.ResetNamed(name), l.rep}
}

func (l raftQuiet) With(args ...any) hclog.Logger { return raftQuiet{l.Logger.With(args...), l.rep} }
