package sidecar

import (
	"errors"
	"fmt"
	"log/slog"
	"slices"

	"github.com/hashicorp/raft"

	"github.com/natlog/natlog/sidecar/protocol"
)

// RecoverResult describes what RecoverCluster did.
type RecoverResult struct {
	NodeID string
	// Voters is the new configuration.
	Voters []string
	// LastIndex is the last Raft index the recovered state holds: every
	// entry of the node's Raft log up to it was applied, committed or
	// not.
	LastIndex uint64
	// Logs are the replicated logs the node holds after recovery.
	Logs []string
}

// RecoverCluster is the last resort when a cluster has lost the majority of
// its voters for good: run on a stopped node (its data dir cfg.DataDir), it
// replaces the cluster's configuration with voters (their node ids; empty:
// this node alone), so that the node, started again, forms a cluster with
// them (the others run RecoverCluster with the same voters first, or are
// fresh nodes added later) and elects a leader without the lost ones.
//
// It is hashicorp/raft's RecoverCluster: the node's state becomes the
// truth. Entries in its Raft log that the old cluster never committed are
// applied (records whose appends were never acknowledged may appear), and
// what the lost voters committed that this node never received is gone:
// recover the member with the highest last index (natlog status: applied
// index). It refuses a data dir in use, one without Raft state, and
// voters that do not include this node.
func RecoverCluster(cfg Config, voters []string) (RecoverResult, error) {
	var res RecoverResult
	if cfg.DataDir == "" {
		return res, errors.New("recover: no data dir")
	}
	lock, err := lockDataDir(cfg.DataDir)
	if err != nil {
		return res, fmt.Errorf("recover: %w (stop the node first)", err)
	}
	defer lock.Close()
	if res.NodeID, err = loadNodeID(cfg.DataDir, cfg.NodeID, false); err != nil {
		return res, fmt.Errorf("recover: %w", err)
	}
	if len(voters) == 0 {
		voters = []string{res.NodeID}
	}
	var conf raft.Configuration
	for _, id := range voters {
		if !protocol.ValidLogName(id) {
			return res, fmt.Errorf("recover: bad node id %q", id)
		}
		if slices.ContainsFunc(conf.Servers, func(s raft.Server) bool { return string(s.ID) == id }) {
			return res, fmt.Errorf("recover: node %s named twice", id)
		}
		// A node's Raft address is its id (the NATS transport's).
		conf.Servers = append(conf.Servers, raft.Server{Suffrage: raft.Voter, ID: raft.ServerID(id), Address: raft.ServerAddress(id)})
	}
	if !slices.Contains(voters, res.NodeID) {
		return res, fmt.Errorf("recover: the voters %v leave out this node (%s)", voters, res.NodeID)
	}
	res.Voters = voters

	logger := cfg.Logger
	if logger == nil {
		logger = slog.Default()
	}
	level := cfg.Cluster.RaftLogLevel
	if level == "" {
		level = "warn"
	}
	hl := raftLogger(level, res.NodeID)
	st, err := openRaftState(cfg, logger, hl, nil)
	if err != nil {
		return res, fmt.Errorf("recover: %w", err)
	}
	defer st.close()
	rc := raft.DefaultConfig()
	rc.LocalID = raft.ServerID(res.NodeID)
	rc.Logger = hl
	// The snapshot RecoverCluster writes records the configuration; the
	// transport only encodes addresses for it.
	_, trans := raft.NewInmemTransport(raft.ServerAddress(res.NodeID))
	defer trans.Close()
	if err := raft.RecoverCluster(rc, st.fsm, st.logs, st.stable, st.snaps, trans, conf); err != nil {
		return res, fmt.Errorf("recover: %w", err)
	}
	metas, err := st.snaps.List()
	if err != nil {
		return res, fmt.Errorf("recover: %w", err)
	}
	if len(metas) > 0 {
		res.LastIndex = metas[0].Index
	}
	res.Logs = st.fsm.Logs()
	return res, st.close()
}
