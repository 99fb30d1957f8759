package logcore

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"
)

// readLinkedCut decodes the records a cut's links hold.
func readLinkedCut(t *testing.T, dir string, cut StoreCut) []Record {
	t.Helper()
	var streams []io.Reader
	for _, st := range cut.Stores {
		b, err := os.ReadFile(filepath.Join(dir, st.Name))
		if err != nil {
			t.Fatal(err)
		}
		if int64(len(b)) < st.Size {
			t.Fatalf("link %s has %d bytes, the cut says %d", st.Name, len(b), st.Size)
		}
		streams = append(streams, bytes.NewReader(b[:st.Size]))
	}
	var recs []Record
	if err := ReadFrames(io.MultiReader(streams...), func(r Record) error {
		recs = append(recs, r)
		return nil
	}); err != nil {
		t.Fatalf("frames of the linked cut: %v", err)
	}
	return recs
}

func TestCutLink(t *testing.T) {
	for _, policy := range []SyncPolicy{SyncNeverUnsafe, SyncAlways} {
		t.Run(policy.String(), func(t *testing.T) {
			root := t.TempDir()
			l := openLog(t, filepath.Join(root, "log"), testConfig(policy))
			defer l.Close()
			appendN(t, l, 0, 300) // several segments of 4 KiB, the last active
			links := filepath.Join(root, "links")
			if err := os.Mkdir(links, 0o755); err != nil {
				t.Fatal(err)
			}
			c, err := l.MarkCut()
			if err != nil {
				t.Fatal(err)
			}
			cut, err := c.Link(links, "x-")
			c.Release()
			if err != nil {
				t.Fatal(err)
			}
			if cut.Lowest != 0 || cut.Next != 300 || len(cut.Stores) < 3 {
				t.Fatalf("cut = [%d, %d) in %d files, want [0, 300) in several", cut.Lowest, cut.Next, len(cut.Stores))
			}
			// What follows the cut changes nothing below it: more appends
			// (rolling the active segment), then retention.
			appendN(t, l, 300, 300)
			if err := l.Sync(); err != nil {
				t.Fatal(err)
			}
			if err := l.TruncateBefore(250); err != nil {
				t.Fatal(err)
			}
			if l.LowestOffset() == 0 {
				t.Fatal("TruncateBefore removed nothing")
			}
			recs := readLinkedCut(t, links, cut)
			if len(recs) != 300 {
				t.Fatalf("the links hold %d records, want 300", len(recs))
			}
			for i, r := range recs {
				want := testRecord(i)
				if r.Offset != uint64(i) || !bytes.Equal(r.Value, want.Value) || !headersEqual(r.Headers, want.Headers) {
					t.Fatalf("linked record %d = {%d %q}, want {%d %q}", i, r.Offset, r.Value, i, want.Value)
				}
			}
			// Each link is the segment's file, not a copy.
			last := cut.Stores[len(cut.Stores)-1]
			a, err := os.Stat(filepath.Join(links, last.Name))
			if err != nil {
				t.Fatal(err)
			}
			b, err := os.Stat(filepath.Join(root, "log", last.Name[len("x-"):]))
			if err != nil {
				t.Fatal(err)
			}
			if !os.SameFile(a, b) {
				t.Fatal("the link of the active segment is not the segment's file")
			}
		})
	}
}

func TestCutLinkUnsupportedAndClosed(t *testing.T) {
	cfg := testConfig(SyncAlways)
	cfg.FS = NewMemFS()
	l := openLog(t, "/log", cfg)
	appendN(t, l, 0, 10)
	c, err := l.MarkCut()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Link("/links", ""); !errors.Is(err, ErrLinkUnsupported) {
		t.Fatalf("Link on MemFS: %v, want ErrLinkUnsupported", err)
	}
	c.Release()
	l.Close()

	l = openLog(t, t.TempDir(), testConfig(SyncAlways))
	c, err = l.MarkCut()
	if err != nil {
		t.Fatal(err)
	}
	l.Close()
	if _, err := c.Link(t.TempDir(), ""); !errors.Is(err, ErrClosed) {
		t.Fatalf("Link after Close: %v, want ErrClosed", err)
	}
	if _, err := l.MarkCut(); !errors.Is(err, ErrClosed) {
		t.Fatalf("MarkCut after Close: %v, want ErrClosed", err)
	}
}

func TestCutHoldsRetention(t *testing.T) {
	cfg := testConfig(SyncAlways)
	cfg.Retention.MaxSegments = 2
	l := openLog(t, t.TempDir(), cfg)
	defer l.Close()
	appendN(t, l, 0, 300)
	c, err := l.MarkCut()
	if err != nil {
		t.Fatal(err)
	}
	if c.Next != 300 {
		t.Fatalf("cut at %d, want 300", c.Next)
	}
	appendN(t, l, 300, 100)
	if err := l.ApplyRetention(); err != nil {
		t.Fatal(err)
	}
	if l.LowestOffset() != 0 {
		t.Fatalf("retention removed segments while a cut was held: lowest %d", l.LowestOffset())
	}
	links := t.TempDir()
	sc, err := c.Link(links, "")
	if err != nil {
		t.Fatal(err)
	}
	if recs := readLinkedCut(t, links, sc); len(recs) != 300 || sc.Lowest != 0 || sc.Next != 300 {
		t.Fatalf("linked cut [%d, %d) holds %d records, want [0, 300)", sc.Lowest, sc.Next, len(recs))
	}
	c.Release()
	c.Release() // idempotent
	if _, err := c.Link(t.TempDir(), ""); err == nil {
		t.Fatal("Link of a released cut succeeded")
	}
	if err := l.ApplyRetention(); err != nil {
		t.Fatal(err)
	}
	if l.LowestOffset() == 0 {
		t.Fatal("retention did not resume after the cut was released")
	}
	// A cut whose segments TruncateBefore removed cannot be linked.
	c, err = l.MarkCut()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Release()
	appendN(t, l, 400, 200)
	if err := l.TruncateBefore(590); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Link(t.TempDir(), ""); err == nil {
		t.Fatal("Link of a cut whose segment was truncated away succeeded")
	}
}
