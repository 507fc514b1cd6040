package logging

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

// TestJSONDurations: JSON logs carry durations as seconds under a key that says so;
// text logs keep Go's 1.5s.
func TestJSONDurations(t *testing.T) {
	var buf bytes.Buffer
	log, err := New(&buf, "json", "info")
	if err != nil {
		t.Fatal(err)
	}
	log.Info("done", "elapsed", 1500*time.Millisecond, "wait_seconds", 2*time.Second, "count", 3)
	var got map[string]any
	if err := json.Unmarshal(buf.Bytes(), &got); err != nil {
		t.Fatal(err)
	}
	if got["elapsed_seconds"] != 1.5 || got["wait_seconds"] != 2.0 || got["count"] != 3.0 {
		t.Fatalf("JSON log %s: want elapsed_seconds 1.5, wait_seconds 2, count 3", buf.String())
	}
	if _, ok := got["elapsed"]; ok {
		t.Fatalf("JSON log keeps the unitless key: %s", buf.String())
	}
	buf.Reset()
	log, _ = New(&buf, "text", "info")
	log.Info("done", "elapsed", 1500*time.Millisecond)
	if !strings.Contains(buf.String(), "elapsed=1.5s") {
		t.Fatalf("text log %q", buf.String())
	}
}
