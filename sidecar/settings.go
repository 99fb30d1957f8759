package sidecar

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/natlog/natlog/logcore"
	"github.com/natlog/natlog/sidecar/protocol"
)

// logMeta is the content of DataDir/logs/<name>/log.json: the settings the
// log was created with (what they leave out follows the node's defaults,
// as they are at each start) and its creation time.
type logMeta struct {
	Settings protocol.LogSettings `json:"settings"`
	Created  int64                `json:"created"`
}

// metaFile is the name of a log's metadata file in its directory.
const metaFile = "log.json"

// segmentsDir is the directory under a log's that logcore owns.
const segmentsDir = "segments"

// effectiveConfig returns the log configuration that results from the
// node's defaults overridden by s. Errors are protocol.ErrBadSettings.
func effectiveConfig(defaults logcore.Config, s protocol.LogSettings) (logcore.Config, error) {
	c := defaults
	if s.MaxSegmentBytes != nil {
		c.MaxSegmentBytes = *s.MaxSegmentBytes
	}
	if s.Sync != nil {
		p, err := logcore.ParseSyncPolicy(*s.Sync)
		if err != nil {
			return c, protocol.Errorf(protocol.ErrBadSettings, "bad sync policy %q: want always, interval or never", *s.Sync)
		}
		c.Sync = p
	}
	if s.RetentionBytes != nil {
		c.Retention.MaxBytes = *s.RetentionBytes
	}
	if s.RetentionAgeMs != nil {
		if *s.RetentionAgeMs < 0 || *s.RetentionAgeMs > int64(1<<62)/int64(time.Millisecond) {
			return c, protocol.Errorf(protocol.ErrBadSettings, "retention_age_ms %d out of range", *s.RetentionAgeMs)
		}
		c.Retention.MaxAge = time.Duration(*s.RetentionAgeMs) * time.Millisecond
	}
	if s.RetentionSegments != nil {
		c.Retention.MaxSegments = *s.RetentionSegments
	}
	if err := c.Validate(); err != nil {
		return c, protocol.Errorf(protocol.ErrBadSettings, "bad log settings: %v", err)
	}
	return c, nil
}

// settingsEqual reports whether two settings say the same.
func settingsEqual(a, b protocol.LogSettings) bool {
	return eqPtr(a.MaxSegmentBytes, b.MaxSegmentBytes) && eqPtr(a.Sync, b.Sync) &&
		eqPtr(a.RetentionBytes, b.RetentionBytes) && eqPtr(a.RetentionAgeMs, b.RetentionAgeMs) &&
		eqPtr(a.RetentionSegments, b.RetentionSegments)
}

func eqPtr[T comparable](a, b *T) bool {
	if a == nil || b == nil {
		return a == b
	}
	return *a == *b
}

// readMeta reads a log's metadata file.
func readMeta(dir string) (logMeta, error) {
	var m logMeta
	b, err := os.ReadFile(filepath.Join(dir, metaFile))
	if err != nil {
		return m, err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, fmt.Errorf("%s: %w", filepath.Join(dir, metaFile), err)
	}
	return m, nil
}

// writeMeta writes a log's metadata file durably.
func writeMeta(dir string, m logMeta) error {
	b, err := json.MarshalIndent(m, "", "  ")
	if err != nil {
		return err
	}
	return writeFileAtomic(filepath.Join(dir, metaFile), append(b, '\n'))
}

// writeFileAtomic replaces path with data durably (logcore's write-temp,
// fsync, rename, directory fsync on the real file system).
func writeFileAtomic(path string, data []byte) error {
	return logcore.WriteFileAtomic(logcore.OSFS{}, path, data)
}

// syncDir fsyncs a directory, making creations, renames and removals in
// it durable.
func syncDir(dir string) error { return logcore.OSFS{}.SyncDir(dir) }
