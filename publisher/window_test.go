package publisher_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

// TestCheckWindow: a schedule period longer than the streams' duplicate window is
// refused, with both values named; up to it, anything goes. No server needed.
func TestCheckWindow(t *testing.T) {
	dup := func(d time.Duration) stream.StreamConfig {
		c := stream.DefaultStreamConfig()
		c.DuplicateWindow = d
		return c
	}
	tests := []struct {
		name    string
		window  time.Duration
		streams stream.StreamConfig
		wantErr string // "" when accepted
	}{
		{"default window, default streams", 15 * time.Minute, stream.DefaultStreamConfig(), ""},
		{"no dedupe", 0, stream.DefaultStreamConfig(), ""},
		{"equal to the duplicate window", 20 * time.Minute, dup(20 * time.Minute), ""},
		{"an hour over 20m", time.Hour, dup(20 * time.Minute), "publish window 1h0m0s exceeds REFRESHER_STREAM_DUPLICATE_WINDOW (20m0s)"},
		{"a second over", 20*time.Minute + time.Second, dup(20 * time.Minute), "publish window 20m1s exceeds REFRESHER_STREAM_DUPLICATE_WINDOW (20m0s)"},
		{"a nanosecond over", time.Minute + 1, dup(time.Minute), "exceeds REFRESHER_STREAM_DUPLICATE_WINDOW (1m0s)"},
		{"any window over an unset duplicate window", time.Second, stream.StreamConfig{}, "publish window 1s exceeds REFRESHER_STREAM_DUPLICATE_WINDOW (0s)"},
	}
	for _, tt := range tests {
		err := publisher.CheckWindow(tt.window, tt.streams)
		switch {
		case tt.wantErr == "" && err != nil:
			t.Errorf("%s: CheckWindow(%s, %s) = %v, want nil", tt.name, tt.window, tt.streams.DuplicateWindow, err)
		case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
			t.Errorf("%s: CheckWindow(%s, %s) = %v, want an error containing %q", tt.name, tt.window, tt.streams.DuplicateWindow, err, tt.wantErr)
		}
	}
}

// TestScheduleRefusesPeriodOverDuplicateWindow: the library itself, not only the CLI,
// refuses a schedule whose period the stream's duplicate window cannot dedupe.
func TestScheduleRefusesPeriodOverDuplicateWindow(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	p := env.Publisher() // the streams, with the default 20m duplicate window
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err := p.Schedule(ctx, env.DB, publisher.Scan{Service: "github"}, time.Hour, nil)
	if err == nil || !strings.Contains(err.Error(), "exceeds REFRESHER_STREAM_DUPLICATE_WINDOW (20m0s)") {
		t.Fatalf("Schedule every 1h over a 20m duplicate window: %v", err)
	}
}
