package sidecar

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/sidecar/protocol"
)

// manager owns the node's named logs: DataDir/logs/<name>/ holds a log's
// metadata (log.json) and its logcore directory (segments/). Deleted logs
// are first renamed into DataDir/trash/, so a crash mid-delete never leaves
// half a log under logs/; Open empties trash/.
//
// Lookups (get) are lock-free reads of an immutable map; mu serialises the
// changes (create, delete, close), which publish a new map.
type manager struct {
	logsDir  string
	trashDir string
	defaults logcore.Config // node defaults, OnSync and Logger set
	dedupWin time.Duration
	dedupMax int
	logger   *slog.Logger

	mu     sync.Mutex // serialises create, delete and close
	closed bool       // guarded by mu
	// broken holds the logs that failed to open (a corrupt active
	// segment, an unreadable directory), with why; guarded by mu. Requests
	// to them fail with that error until an operator deletes the log (or
	// repairs it and restarts the node); the other logs are served.
	broken map[string]error
	logs   atomic.Pointer[map[string]*logEntry]
}

// logEntry is one open log. The pointer is stable while the log exists; a
// deleted or closed entry's log returns logcore.ErrClosed.
type logEntry struct {
	name string
	log  *logcore.Log
	meta logMeta
	cfg  logcore.Config // effective configuration

	// appendMu is held shared by every append while it runs (so appends
	// share fsyncs) and exclusively by conditional appends (which must see
	// no other append between their check and their write) and by delete
	// (which waits for appends in flight).
	appendMu sync.RWMutex
	// deleted is set before the log is closed by a delete, so that
	// requests that then fail with ErrClosed answer "unknown log".
	deleted atomic.Bool
	dedup   *dedup // nil when deduplication is off
	// queue holds plain appends waiting for their commit round.
	queue appendQueue
}

// openManager opens every log under dataDir/logs, recovering each (see
// logcore.Open), and empties dataDir/trash.
func openManager(dataDir string, defaults logcore.Config, dedupWin time.Duration, dedupMax int, logger *slog.Logger) (*manager, error) {
	m := &manager{
		logsDir:  filepath.Join(dataDir, "logs"),
		trashDir: filepath.Join(dataDir, "trash"),
		defaults: defaults,
		dedupWin: dedupWin,
		dedupMax: dedupMax,
		logger:   logger,
		broken:   map[string]error{},
	}
	for _, d := range []string{m.logsDir, m.trashDir} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, err
		}
	}
	if err := syncDir(dataDir); err != nil {
		return nil, err
	}
	if err := m.emptyTrash(); err != nil {
		return nil, err
	}
	ents, err := os.ReadDir(m.logsDir)
	if err != nil {
		return nil, err
	}
	logs := map[string]*logEntry{}
	for _, de := range ents {
		name := de.Name()
		if !de.IsDir() || !protocol.ValidLogName(name) {
			logger.Warn("natlog: ignoring unexpected entry in the logs directory", "path", filepath.Join(m.logsDir, name))
			continue
		}
		e, err := m.openLog(name, nil)
		if err != nil {
			logger.Error("natlog: log failed to open; serving the others", "log", name, "err", err)
			m.broken[name] = err
			continue
		}
		logs[name] = e
	}
	m.logs.Store(&logs)
	return m, nil
}

// emptyTrash removes what deletes left in trash/.
func (m *manager) emptyTrash() error {
	ents, err := os.ReadDir(m.trashDir)
	if err != nil {
		return err
	}
	for _, de := range ents {
		if err := os.RemoveAll(filepath.Join(m.trashDir, de.Name())); err != nil {
			return err
		}
	}
	return nil
}

// openLog opens (creating if needed) the log name. With create non-nil it
// makes a new log with those settings; otherwise it opens an existing
// directory, whose log.json may be missing after a crash during creation
// (the log then follows the node defaults).
func (m *manager) openLog(name string, create *protocol.LogSettings) (*logEntry, error) {
	dir := filepath.Join(m.logsDir, name)
	var meta logMeta
	if create != nil {
		meta = logMeta{Settings: *create, Created: time.Now().UnixNano()}
		if err := os.Mkdir(dir, 0o755); err != nil {
			return nil, err
		}
		if err := writeMeta(dir, meta); err != nil {
			os.RemoveAll(dir)
			return nil, err
		}
		if err := syncDir(m.logsDir); err != nil {
			return nil, err
		}
	} else {
		var err error
		meta, err = readMeta(dir)
		if errors.Is(err, os.ErrNotExist) {
			m.logger.Warn("natlog: log has no log.json (crash during creation?); using node defaults", "log", name)
			meta = logMeta{Created: time.Now().UnixNano()}
			err = writeMeta(dir, meta)
		}
		if err != nil {
			return nil, err
		}
	}
	cfg, err := effectiveConfig(m.defaults, meta.Settings)
	if err != nil {
		return nil, err
	}
	l, err := logcore.Open(filepath.Join(dir, segmentsDir), cfg)
	if err != nil {
		return nil, err
	}
	e := &logEntry{name: name, log: l, meta: meta, cfg: cfg}
	if m.dedupWin > 0 {
		e.dedup = newDedup(m.dedupWin, m.dedupMax, l)
	}
	return e, nil
}

// get returns the open log name, if it exists.
func (m *manager) get(name string) (*logEntry, bool) {
	e, ok := (*m.logs.Load())[name]
	return e, ok
}

// lookup returns the open log name, or the error to answer with: it
// does not exist, or it is broken.
func (m *manager) lookup(name string) (*logEntry, *protocol.Error) {
	if e, ok := m.get(name); ok {
		return e, nil
	}
	m.mu.Lock()
	err := m.broken[name]
	m.mu.Unlock()
	if err != nil {
		return nil, brokenError(name, err)
	}
	return nil, protocol.Errorf(protocol.ErrUnknownLog, "unknown log %q", name)
}

func brokenError(name string, err error) *protocol.Error {
	e := storageError(name, err)
	e.Description = fmt.Sprintf("log %q failed to open and is out of service (delete it, or repair it and restart): %v", name, err)
	return e
}

// getOrCreate returns the log name, creating it with the node defaults if
// it does not exist.
func (m *manager) getOrCreate(name string) (*logEntry, error) {
	if e, ok := m.get(name); ok {
		return e, nil
	}
	e, _, err := m.create(name, protocol.LogSettings{}, false)
	return e, err
}

// create creates the log name with settings. If the log exists, it is
// returned when strict is false or its settings equal settings, and
// protocol.ErrLogExists is returned otherwise. created says whether this
// call created it.
func (m *manager) create(name string, settings protocol.LogSettings, strict bool) (e *logEntry, created bool, err error) {
	if _, err := effectiveConfig(m.defaults, settings); err != nil {
		return nil, false, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil, false, protocol.Errorf(protocol.ErrUnavailable, "the node is shutting down")
	}
	if err := m.broken[name]; err != nil {
		return nil, false, brokenError(name, err)
	}
	cur := *m.logs.Load()
	if e, ok := cur[name]; ok {
		if strict && !settingsEqual(e.meta.Settings, settings) {
			return nil, false, protocol.Errorf(protocol.ErrLogExists, "log %q exists with other settings", name)
		}
		return e, false, nil
	}
	e, err = m.openLog(name, &settings)
	if err != nil {
		m.logger.Error("natlog: create log failed", "log", name, "err", err)
		return nil, false, storageError(name, err)
	}
	next := make(map[string]*logEntry, len(cur)+1)
	for k, v := range cur {
		next[k] = v
	}
	next[name] = e
	m.logs.Store(&next)
	m.logger.Info("natlog: created log", "log", name)
	return e, true, nil
}

// delete removes the log name and all its records. Appends in flight
// finish first; reads in flight fail with ErrUnknownLog.
func (m *manager) delete(name string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return protocol.Errorf(protocol.ErrUnavailable, "the node is shutting down")
	}
	cur := *m.logs.Load()
	e, ok := cur[name]
	if _, broken := m.broken[name]; !ok && !broken {
		return protocol.Errorf(protocol.ErrUnknownLog, "unknown log %q", name)
	}
	if ok {
		next := make(map[string]*logEntry, len(cur))
		for k, v := range cur {
			if k != name {
				next[k] = v
			}
		}
		m.logs.Store(&next)
		e.deleted.Store(true)
		e.appendMu.Lock()
		cerr := e.log.Close()
		e.appendMu.Unlock()
		if cerr != nil {
			m.logger.Warn("natlog: closing deleted log", "log", name, "err", cerr)
		}
	}
	delete(m.broken, name)
	trash := filepath.Join(m.trashDir, name+"."+strconv.FormatInt(time.Now().UnixNano(), 10))
	if err := os.Rename(filepath.Join(m.logsDir, name), trash); err != nil {
		return storageError(name, err)
	}
	if err := syncDir(m.logsDir); err != nil {
		return storageError(name, err)
	}
	if err := os.RemoveAll(trash); err != nil {
		m.logger.Warn("natlog: removing deleted log's files", "path", trash, "err", err)
	}
	m.logger.Info("natlog: deleted log", "log", name)
	return nil
}

// brokenLogs returns the logs that failed to open, with why.
func (m *manager) brokenLogs() map[string]error {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make(map[string]error, len(m.broken))
	for k, v := range m.broken {
		out[k] = v
	}
	return out
}

// list returns the open logs sorted by name.
func (m *manager) list() []*logEntry {
	cur := *m.logs.Load()
	out := make([]*logEntry, 0, len(cur))
	for _, e := range cur {
		out = append(out, e)
	}
	slices.SortFunc(out, func(a, b *logEntry) int {
		if a.name < b.name {
			return -1
		}
		if a.name > b.name {
			return 1
		}
		return 0
	})
	return out
}

// close closes every log; later creates fail with ErrUnavailable.
func (m *manager) close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.closed {
		return nil
	}
	m.closed = true
	var errs []error
	for _, e := range *m.logs.Load() {
		if err := e.log.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close log %q: %w", e.name, err))
		}
	}
	return errors.Join(errs...)
}

// info describes the log.
func (e *logEntry) info() (protocol.LogInfo, *protocol.Error) {
	in, err := e.log.Info()
	if err != nil {
		return protocol.LogInfo{}, e.storageError(err)
	}
	li := protocol.LogInfo{
		Log:               e.name,
		FirstOffset:       in.LowestOffset,
		NextOffset:        in.NextOffset,
		Records:           in.Records,
		Segments:          in.Segments,
		Bytes:             in.Bytes,
		Sync:              in.Sync.String(),
		MaxSegmentBytes:   e.cfg.MaxSegmentBytes,
		RetentionBytes:    in.Retention.MaxBytes,
		RetentionAgeMs:    in.Retention.MaxAge.Milliseconds(),
		RetentionSegments: in.Retention.MaxSegments,
		Settings:          e.meta.Settings,
		Created:           e.meta.Created,
	}
	if in.Records > 0 {
		last := in.NextOffset - 1
		li.LastOffset = &last
	}
	return li, nil
}

// storageError turns an error from the log into the error to reply with.
func (e *logEntry) storageError(err error) *protocol.Error {
	if errors.Is(err, logcore.ErrClosed) && e.deleted.Load() {
		return protocol.Errorf(protocol.ErrUnknownLog, "log %q was deleted", e.name)
	}
	return storageError(e.name, err)
}

// storageError turns a logcore or file system error into a protocol error.
func storageError(log string, err error) *protocol.Error {
	var pe *protocol.Error
	var oe *logcore.OffsetError
	switch {
	case errors.As(err, &pe):
		return pe
	case errors.As(err, &oe):
		return protocol.Errorf(protocol.ErrOffsetOutOfRange, "%s", oe.Error())
	case errors.Is(err, logcore.ErrClosed):
		return protocol.Errorf(protocol.ErrUnavailable, "log %q is closed: the node is shutting down", log)
	case errors.Is(err, logcore.ErrRecordTooLarge):
		return protocol.Errorf(protocol.ErrPayloadTooLarge, "record too large for log %q: %v", log, err)
	case errors.Is(err, logcore.ErrCorrupt):
		return protocol.Errorf(protocol.ErrCorrupt, "log %q: %v", log, err)
	}
	return protocol.Errorf(protocol.ErrStorage, "log %q: %v", log, err)
}
