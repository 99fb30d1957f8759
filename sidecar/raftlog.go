package sidecar

import (
	"fmt"
	"os"
	"strings"

	"github.com/hashicorp/go-hclog"
)

// raftLogger is hashicorp/raft's logger at level ("off" discards), with
// the messages of a normal leadership change or connection close lowered
// from ERROR (see raftQuiet).
func raftLogger(level, node string) hclog.Logger {
	if level == "off" || level == "" {
		return hclog.NewNullLogger()
	}
	return raftQuiet{hclog.New(&hclog.LoggerOptions{Name: "raft " + node, Level: hclog.LevelFromString(level), Output: os.Stderr})}
}

// raftQuiet lowers hashicorp/raft's ERRORs and WARNs that report the
// normal course of a cluster: a leader that learns of a newer term (every
// election or step-down), a transport connection closed while a request or
// response was on it (a peer restarting, or Raft closing idle pooled
// connections), a fresh node waiting to be bootstrapped or added, and a
// follower being brought up to date. Operators should not learn to ignore
// ERROR and WARN lines.
type raftQuiet struct{ hclog.Logger }

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

func (l raftQuiet) Error(msg string, args ...any) {
	l.Logger.Log(quietLevel(hclog.Error, msg, args), msg, args...)
}

func (l raftQuiet) Warn(msg string, args ...any) {
	l.Logger.Log(quietLevel(hclog.Warn, msg, args), msg, args...)
}

func (l raftQuiet) Log(level hclog.Level, msg string, args ...any) {
	l.Logger.Log(quietLevel(level, msg, args), msg, args...)
}

func (l raftQuiet) Named(name string) hclog.Logger      { return raftQuiet{l.Logger.Named(name)} }
func (l raftQuiet) ResetNamed(name string) hclog.Logger { return raftQuiet{l.Logger.ResetNamed(name)} }
func (l raftQuiet) With(args ...any) hclog.Logger       { return raftQuiet{l.Logger.With(args...)} }
