package sidecar

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/micro"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/sidecar/protocol"
)

// Server is a running natlog node: its logs, its NATS connection (and
// embedded nats-server, if any), its micro service and its HTTP endpoint.
// Start makes one; Shutdown stops it. Its methods are safe for concurrent
// use.
type Server struct {
	cfg      Config
	logger   *slog.Logger
	nodeID   string
	subjects protocol.Subjects
	// nodeSubjects reach this node alone (<prefix>.node.<id>): clients
	// route reads to a replica of their choice with them.
	nodeSubjects protocol.Subjects
	started      time.Time
	reads        atomic.Uint64 // read requests answered successfully

	lock    *os.File     // the data dir's lock, held while running
	logs    *manager     // the standalone node's logs; nil in cluster mode
	cluster *clusterNode // replication; nil for a standalone node
	metrics *metrics

	ns      *server.Server // the embedded nats-server, or nil
	nc      *nats.Conn
	natsURL string
	svc     micro.Service

	httpSrv *http.Server
	httpURL string

	maxPayload int64 // the NATS max payload
	maxRecord  int64 // the largest record taken

	sem  chan struct{} // worker slots: MaxInflight
	work chan task     // hands tasks to idle workers (unbuffered)
	// workersDone is closed when the node has stopped: idle workers exit.
	workersDone chan struct{}
	waiters     chan struct{} // long-poll slots: MaxWaiters
	inflight    sync.WaitGroup
	closeMu     sync.RWMutex // guards closing against inflight.Add
	closing     bool

	// stopCtx is cancelled when Shutdown starts: long polls then answer
	// with what they have.
	stopCtx    context.Context
	stopCancel context.CancelFunc

	ready        atomic.Bool
	shutdownOnce sync.Once
	shutdownErr  error
}

// Start starts a node as cfg says and returns once it serves requests.
func Start(cfg Config) (*Server, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.Default()
	}
	s := &Server{
		cfg:         cfg,
		logger:      cfg.Logger,
		started:     time.Now(),
		sem:         make(chan struct{}, cfg.MaxInflight),
		work:        make(chan task),
		workersDone: make(chan struct{}),
		waiters:     make(chan struct{}, cfg.MaxWaiters),
	}
	s.stopCtx, s.stopCancel = context.WithCancel(context.Background())
	if err := s.start(); err != nil {
		s.abort()
		return nil, err
	}
	return s, nil
}

// start acquires and starts everything; on error the caller aborts.
func (s *Server) start() (err error) {
	cfg := s.cfg
	if s.subjects, err = protocol.NewSubjects(cfg.Prefix); err != nil {
		return err
	}
	if err := os.MkdirAll(cfg.DataDir, 0o755); err != nil {
		return fmt.Errorf("data dir: %w", err)
	}
	if s.lock, err = lockDataDir(cfg.DataDir); err != nil {
		return err
	}
	if s.nodeID, err = loadNodeID(cfg.DataDir, cfg.NodeID, true); err != nil {
		return err
	}
	if err := checkDataDirMode(cfg.DataDir, cfg.Cluster.Enabled()); err != nil {
		return err
	}
	s.logger = s.logger.With("node", s.nodeID)
	s.nodeSubjects = s.subjects.Node(s.nodeID)

	if s.cfg.Log.Files == nil {
		files := openFilesBudget(s.cfg.MaxOpenFiles)
		s.cfg.Log.Files = logcore.NewFileBudget(files / 3)
	}
	cfg = s.cfg
	s.metrics = newMetrics(cfg.DataDir)
	s.metrics.registerFiles(cfg.Log.Files)
	defaults := cfg.Log
	defaults.OnSync = s.metrics.onSync
	defaults.Logger = s.logger
	if !cfg.Cluster.Enabled() {
		// Retention keeps the records of the last dedup window: the
		// ids are rebuilt from them after a restart.
		defaults.Retention.KeepWithin = cfg.DedupWindow
		if s.logs, err = openManager(cfg.DataDir, defaults, cfg.DedupWindow, cfg.DedupMax, s.logger); err != nil {
			return err
		}
		s.metrics.registerLogs(s.logs)
	}

	if cfg.NATSURL == "" {
		if s.ns, err = startEmbedded(cfg, s.nodeID, s.logger); err != nil {
			return err
		}
		s.natsURL = s.ns.ClientURL()
	}
	if s.nc, err = connect(cfg, s.ns, s.nodeID, s.logger); err != nil {
		return err
	}
	if s.ns == nil {
		s.natsURL = s.nc.ConnectedUrlRedacted()
	}
	s.maxPayload = s.nc.MaxPayload()
	s.maxRecord = cfg.MaxRecordBytes
	if s.maxRecord == 0 {
		s.maxRecord = s.maxPayload - ReplyHeadroom
	} else if s.maxRecord > s.maxPayload-ReplyHeadroom {
		// Such a record could be appended (over HTTP, say) but never
		// read back through NATS.
		return fmt.Errorf("max record bytes %d exceeds what NATS carries in a read reply: max payload %d less %d", s.maxRecord, s.maxPayload, ReplyHeadroom)
	}
	if cfg.Cluster.Enabled() {
		if err := s.startCluster(); err != nil {
			return err
		}
	}
	if err := s.addService(); err != nil {
		return err
	}
	// Return only once the server has the subscriptions, so that a
	// request sent after Start finds a responder.
	if err := s.nc.FlushTimeout(10 * time.Second); err != nil {
		return fmt.Errorf("NATS flush: %w", err)
	}
	if cfg.HTTPListen != "" {
		if err := s.startHTTP(); err != nil {
			return err
		}
	}
	s.ready.Store(true)
	s.logger.Info("natlog: serving", "nats", s.natsURL, "http", s.httpURL, "prefix", s.subjects.Prefix(),
		"data_dir", cfg.DataDir, "sync", cfg.Log.Sync.String(), "max_open_segments", cfg.Log.Files.Max())
	return nil
}

// abort releases what a failed Start acquired.
func (s *Server) abort() {
	s.stopCancel()
	close(s.workersDone)
	if s.svc != nil {
		s.svc.Stop()
	}
	if s.httpSrv != nil {
		s.httpSrv.Close()
	}
	if s.cluster != nil {
		s.cluster.close()
	}
	if s.nc != nil {
		s.nc.Close()
	}
	if s.ns != nil {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
	}
	if s.logs != nil {
		s.logs.close()
	}
	if s.lock != nil {
		s.lock.Close()
	}
}

// NATSURL is the URL clients connect to: the embedded server's, or the
// server the node is connected to.
func (s *Server) NATSURL() string { return s.natsURL }

// HTTPURL is the base URL of the HTTP endpoint ("" if disabled).
func (s *Server) HTTPURL() string { return s.httpURL }

// NodeID is the node's id.
func (s *Server) NodeID() string { return s.nodeID }

// hostname is the machine's name, reported in status replies so that
// clients can prefer a replica on their own host.
var hostname, _ = os.Hostname()

// Subjects are the node's subjects.
func (s *Server) Subjects() protocol.Subjects { return s.subjects }

// Ready reports whether the node serves requests: started, not shutting
// down, and connected to NATS.
func (s *Server) Ready() bool { return s.ready.Load() && s.nc.IsConnected() }

// Shutdown stops the node gracefully: it stops taking requests (drains its
// NATS subscriptions, so that requests already delivered are served), lets
// long polls answer with what they have, waits for the requests in flight,
// then closes the logs (flushed and fsynced) and the NATS connection and
// server. If ctx ends first it stops waiting and closes anyway; requests
// still in flight then fail. It returns the first error met; later calls
// return the same.
func (s *Server) Shutdown(ctx context.Context) error {
	s.shutdownOnce.Do(func() { s.shutdownErr = s.shutdown(ctx) })
	return s.shutdownErr
}

func (s *Server) shutdown(ctx context.Context) error {
	s.ready.Store(false)
	s.logger.Info("natlog: shutting down")
	s.stopCancel()
	var errs []error
	httpDone := make(chan error, 1)
	if s.httpSrv != nil {
		go func() { httpDone <- s.httpSrv.Shutdown(ctx) }()
	} else {
		httpDone <- nil
	}

	// Drain the endpoint subscriptions: requests NATS delivered are
	// still handed to the handlers; no new ones arrive.
	if s.cluster != nil {
		s.cluster.stopServing()
	}
	if err := s.svc.Stop(); err != nil {
		errs = append(errs, err)
	}
	drainCtx, cancel := context.WithTimeout(ctx, s.cfg.DrainTimeout)
	for s.nc.NumSubscriptions() > 0 && drainCtx.Err() == nil {
		select {
		case <-drainCtx.Done():
		case <-time.After(5 * time.Millisecond):
		}
	}
	cancel()
	if n := s.nc.NumSubscriptions(); n > 0 {
		s.logger.Warn("natlog: subscriptions not drained in time", "subscriptions", n)
	}

	// Wait for the requests in flight.
	s.closeMu.Lock()
	s.closing = true
	s.closeMu.Unlock()
	done := make(chan struct{})
	go func() { s.inflight.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, fmt.Errorf("requests still in flight: %w", ctx.Err()))
	}
	close(s.workersDone)
	if err := <-httpDone; err != nil {
		errs = append(errs, fmt.Errorf("http: %w", err))
	}

	if s.logs != nil {
		if err := s.logs.close(); err != nil {
			errs = append(errs, err)
		}
	}
	if s.cluster != nil {
		if err := s.cluster.close(); err != nil {
			errs = append(errs, err)
		}
	}
	if err := s.nc.FlushTimeout(time.Second); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		s.logger.Debug("natlog: flushing replies", "err", err)
	}
	s.nc.Close()
	if s.ns != nil {
		s.ns.Shutdown()
		s.ns.WaitForShutdown()
	}
	if err := s.lock.Close(); err != nil {
		errs = append(errs, err)
	}
	s.logger.Info("natlog: stopped")
	return errors.Join(errs...)
}

// Leave removes a cluster node from the cluster gracefully: it stops
// announcing itself, hands leadership to another voter if it leads, and
// has the leader remove it from the configuration. Call it before Shutdown.
// A standalone node has nothing to leave.
func (s *Server) Leave(ctx context.Context) error {
	if s.cluster == nil {
		return nil
	}
	timeout := 30 * time.Second
	if dl, ok := ctx.Deadline(); ok {
		timeout = time.Until(dl)
	}
	return s.cluster.leave(timeout)
}

// loadNodeID returns the node's id: the one stored in dir/node-id, which
// id (if set) must match; else id, or with create a generated one, stored
// there on first use. A node keeps its id for the life of its data dir.
// checkDataDirMode refuses a data dir written in the other mode: a
// standalone node keeps its logs in logs/, a cluster node its Raft state
// in raft/ and its logs in fsm/. Started in the other mode, the node would
// serve none of them, and a standalone node on the cluster's NATS would
// take appends meant for the cluster.
func checkDataDirMode(dir string, cluster bool) error {
	has := func(name string) bool {
		entries, err := os.ReadDir(filepath.Join(dir, name))
		return err == nil && len(entries) > 0
	}
	switch {
	case !cluster && has("raft"):
		return fmt.Errorf("data dir %s holds a cluster node's Raft state (raft/): start it with --cluster NAME, or give a standalone node another --data-dir", dir)
	case cluster && has("logs"):
		return fmt.Errorf("data dir %s holds a standalone node's logs (logs/), which a cluster node would not serve: start it without --cluster, or give the cluster node another --data-dir", dir)
	}
	return nil
}

func loadNodeID(dir, id string, create bool) (string, error) {
	path := filepath.Join(dir, "node-id")
	stored := ""
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		if stored = strings.TrimSpace(string(b)); !protocol.ValidLogName(stored) {
			return "", fmt.Errorf("%s: not a node id: %q", path, b)
		}
	case !errors.Is(err, os.ErrNotExist):
		return "", err
	}
	switch {
	case id != "" && stored != "" && id != stored:
		return "", fmt.Errorf("data dir %s belongs to node %s, not %s: a node keeps its id (it names the node in a cluster's configuration)", dir, stored, id)
	case stored != "":
		return stored, nil
	case !create:
		if id != "" {
			return id, nil
		}
		return "", fmt.Errorf("no node id in %s: give the id the node ran with", path)
	case id == "":
		var r [6]byte
		if _, err := rand.Read(r[:]); err != nil {
			return "", err
		}
		id = "n" + hex.EncodeToString(r[:])
	}
	if err := writeFileAtomic(path, []byte(id+"\n")); err != nil {
		return "", fmt.Errorf("store node id: %w", err)
	}
	return id, nil
}
