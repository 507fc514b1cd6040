// Package logging builds the process's slog logger from REFRESHER_LOG_FORMAT and
// REFRESHER_LOG_LEVEL.
package logging

import (
	"fmt"
	"io"
	"log/slog"
	"strings"
)

// New returns a logger writing format ("text" or "json") at level to w.
func New(w io.Writer, format, level string) (*slog.Logger, error) {
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("REFRESHER_LOG_LEVEL=%q: want debug, info, warn or error", level)
	}
	opts := &slog.HandlerOptions{Level: lv}
	switch strings.ToLower(format) {
	case "text", "":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		jopts := *opts
		jopts.ReplaceAttr = durationSeconds
		return slog.New(slog.NewJSONHandler(w, &jopts)), nil
	}
	return nil, fmt.Errorf("REFRESHER_LOG_FORMAT=%q: want text or json", format)
}

// durationSeconds writes a duration in JSON logs as seconds, with the unit in the key
// ("elapsed_seconds": 1.5): slog's JSON handler would write a bare count of
// nanoseconds under the plain key, which reads as anything.
func durationSeconds(_ []string, a slog.Attr) slog.Attr {
	if a.Value.Kind() != slog.KindDuration {
		return a
	}
	key := a.Key
	if !strings.HasSuffix(key, "_seconds") {
		key += "_seconds"
	}
	return slog.Float64(key, a.Value.Duration().Seconds())
}
