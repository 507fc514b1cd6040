package publisher

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Names of the streams and subjects refresher uses.
const (
	// Stream keeps every refresh request (limits retention) so windows can be replayed.
	Stream = "REFRESH"
	// StreamSubjects is what Stream captures.
	StreamSubjects = "refresh.>"
	// DLQStream keeps requests that could not be satisfied, with the reason.
	DLQStream = "REFRESH_DLQ"
	// DLQPrefix is prepended to a request's subject to form its dead-letter subject.
	DLQPrefix = "dlq."
	// DLQSubjects is what DLQStream captures.
	DLQSubjects = "dlq.refresh.>"
)

// StreamConfig is the part of stream set-up operators tune. The same values must be
// given to every process that creates the streams, or they will keep updating them.
type StreamConfig struct {
	Replicas        int           `envconfig:"REFRESHER_STREAM_REPLICAS" default:"1" desc:"replicas of the REFRESH and REFRESH_DLQ streams (3 on a JetStream cluster)"`
	MaxAge          time.Duration `envconfig:"REFRESHER_STREAM_MAX_AGE" default:"72h" desc:"how long REFRESH keeps requests for replay"`
	DuplicateWindow time.Duration `envconfig:"REFRESHER_STREAM_DUPLICATE_WINDOW" default:"20m" desc:"Nats-Msg-Id dedupe window; keep it above the publish window"`
	DLQMaxAge       time.Duration `envconfig:"REFRESHER_DLQ_MAX_AGE" default:"720h" desc:"how long REFRESH_DLQ keeps dead letters"`
}

// Validate names the first bad value.
func (c StreamConfig) Validate() error {
	switch {
	case c.Replicas < 1 || c.Replicas > 5:
		return fmt.Errorf("REFRESHER_STREAM_REPLICAS=%d: want 1 to 5", c.Replicas)
	case c.MaxAge <= 0:
		return fmt.Errorf("REFRESHER_STREAM_MAX_AGE=%s: must be positive", c.MaxAge)
	case c.DuplicateWindow <= 0 || c.DuplicateWindow > c.MaxAge:
		return fmt.Errorf("REFRESHER_STREAM_DUPLICATE_WINDOW=%s: want positive and at most REFRESHER_STREAM_MAX_AGE (%s)", c.DuplicateWindow, c.MaxAge)
	case c.DLQMaxAge <= 0:
		return fmt.Errorf("REFRESHER_DLQ_MAX_AGE=%s: must be positive", c.DLQMaxAge)
	}
	return nil
}

// DefaultStreamConfig is what the env defaults amount to, for code that configures
// itself without envconfig (tests, the demo, application code).
func DefaultStreamConfig() StreamConfig {
	return StreamConfig{Replicas: 1, MaxAge: 72 * time.Hour, DuplicateWindow: 20 * time.Minute, DLQMaxAge: 30 * 24 * time.Hour}
}

// EnsureStreams creates or updates REFRESH and REFRESH_DLQ. It is idempotent, so
// every publish and consume process calls it on start instead of relying on a set-up
// step someone might forget.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) error {
	if err := cfg.Validate(); err != nil {
		return err
	}
	streams := []jetstream.StreamConfig{
		{
			Name:        Stream,
			Description: "refresh requests, one per credential: refresh.<service>.<id>",
			Subjects:    []string{StreamSubjects},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			Discard:     jetstream.DiscardOld,
			MaxAge:      cfg.MaxAge,
			Duplicates:  cfg.DuplicateWindow,
			Replicas:    cfg.Replicas,
		},
		{
			Name:        DLQStream,
			Description: "refresh requests that could not be satisfied, with the reason in headers",
			Subjects:    []string{DLQSubjects},
			Storage:     jetstream.FileStorage,
			Retention:   jetstream.LimitsPolicy,
			Discard:     jetstream.DiscardOld,
			MaxAge:      cfg.DLQMaxAge,
			Duplicates:  2 * time.Minute,
			Replicas:    cfg.Replicas,
		},
	}
	for _, sc := range streams {
		// Only write when something differs: every process calls this on start, and a
		// fleet restarting together would otherwise send the server a burst of stream
		// updates racing its consumers' (re)creation.
		if s, err := js.Stream(ctx, sc.Name); err == nil && sameStream(s.CachedInfo().Config, sc) {
			continue
		}
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return fmt.Errorf("create or update stream %s: %w", sc.Name, err)
		}
	}
	return nil
}

// sameStream compares the settings EnsureStreams manages.
func sameStream(have, want jetstream.StreamConfig) bool {
	return have.Description == want.Description &&
		slices.Equal(have.Subjects, want.Subjects) &&
		have.Storage == want.Storage &&
		have.Retention == want.Retention &&
		have.Discard == want.Discard &&
		have.MaxAge == want.MaxAge &&
		have.Duplicates == want.Duplicates &&
		have.Replicas == want.Replicas
}
