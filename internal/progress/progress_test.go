package progress

import (
	"bytes"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestSilentOffTerminal: buffers, pipes and regular files are not terminals, so a
// command writing progress there writes nothing.
func TestSilentOffTerminal(t *testing.T) {
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close(); w.Close() })
	f, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	var buf bytes.Buffer
	tests := []struct {
		name string
		line *Line
	}{
		{"buffer", New(&buf)},
		{"pipe", New(w)},
		{"file", New(f)},
		{"nil", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.line.Enabled() {
				t.Fatal("enabled off a terminal")
			}
			tt.line.Printf("reading %d/%d", 1, 2)
			tt.line.Clear()
		})
	}
	if buf.Len() != 0 {
		t.Fatalf("wrote %q to a buffer", buf.String())
	}
	if st, err := f.Stat(); err != nil || st.Size() != 0 {
		t.Fatalf("wrote to a file: %v, %v", st, err)
	}
}

// TestDrawThrottleClear: the line redraws in place at most once per interval, and
// Clear erases it so the next output starts on a clean line.
func TestDrawThrottleClear(t *testing.T) {
	var buf bytes.Buffer
	l := NewFor(&buf, true)
	now := time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)
	l.now = func() time.Time { return now }

	l.Printf("read %d", 1)
	l.Printf("read %d", 2) // same instant: dropped
	now = now.Add(DefaultInterval)
	l.Printf("read %d", 3)
	l.Clear()
	l.Clear() // nothing drawn since: writes nothing
	l.Printf("done")

	want := "\rread 1\x1b[K\rread 3\x1b[K\r\x1b[K\rdone\x1b[K"
	if got := buf.String(); got != want {
		t.Fatalf("wrote %q, want %q", got, want)
	}
}

// TestLogLineClearsTheLine: a log line written through Under erases the progress line
// first and draws it again below, so it never starts at the end of the progress text
// ("… failed 0time=…").
func TestLogLineClearsTheLine(t *testing.T) {
	var buf bytes.Buffer
	l := NewFor(&buf, true)
	log := slog.New(slog.NewTextHandler(Under(&buf), nil))
	log.Info("before any progress")
	l.Printf("published %d, failed %d", 10, 0)
	log.Info("a log line")
	l.Clear()
	log.Info("after clear")
	want := "time=" // each log line starts on a fresh line
	out := buf.String()
	for _, seg := range strings.Split(out, "\n") {
		if i := strings.Index(seg, want); i > 0 && !strings.HasSuffix(seg[:i], "\r\x1b[K") {
			t.Errorf("log line starts after %q, not on a cleared line", seg[:i])
		}
	}
	if !strings.Contains(out, "a log line") || !strings.Contains(out, "\n\rpublished 10, failed 0\x1b[K") {
		t.Errorf("progress not drawn again after the log line: %q", out)
	}
	if strings.Count(out, "published 10") != 2 {
		t.Errorf("progress drawn again after Clear: %q", out)
	}
}
