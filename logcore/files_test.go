package logcore

import (
	"errors"
	"testing"
)

func TestWriteFileAtomicSurvivesACrash(t *testing.T) {
	fs := NewMemFS()
	must(t, fs.MkdirAll("/d", 0o755))
	must(t, WriteFileAtomic(fs, "/d/f", []byte("one")))
	fs.Crash(CrashOptions{})
	b, err := ReadFile(fs, "/d/f", 10)
	if err != nil || string(b) != "one" {
		t.Fatalf("after crash: %q, %v", b, err)
	}
	must(t, WriteFileAtomic(fs, "/d/f", []byte("two")))
	if b, _ := ReadFile(fs, "/d/f", 10); string(b) != "two" {
		t.Fatalf("after rewrite: %q", b)
	}
	if _, err := ReadFile(fs, "/d/f", 2); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("oversized file: %v, want ErrCorrupt", err)
	}
}
