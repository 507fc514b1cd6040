// Package stream is the contract between the processes that write refresh requests
// and those that act on them: the subjects requests are published to, the REFRESH and
// REFRESH_DLQ streams that keep them, the format of a dead letter, and the
// max-deliveries advisory that announces one the consumer gave up on. It sits in the
// middle of the flow publisher → stream → consumer → provider: publisher and consumer
// both import it, and it imports neither (nor model, which uses its SubjectPrefix),
// so that neither side depends on the other to agree on what a message is.
package stream

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Names of the streams and subjects refresher uses.
const (
	// Stream keeps every refresh request (limits retention) so windows can be replayed.
	Stream = "REFRESH"
	// StreamSubjects is what Stream captures.
	StreamSubjects = SubjectPrefix + ".>"
	// DLQStream keeps requests that could not be satisfied, with the reason.
	DLQStream = "REFRESH_DLQ"
	// DLQPrefix is prepended to a request's subject to form its dead-letter subject.
	DLQPrefix = "dlq."
	// DLQSubjects is what DLQStream captures.
	DLQSubjects = DLQPrefix + StreamSubjects
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

// Message size limits. A refresh request is a subject, a few headers and a body of at
// most model.MaxBodyBytes: RequestMaxMsgSize leaves room for the headers, so every
// request the consumer would accept is stored, and a body above it is refused at
// publish instead of being kept for MaxAge and copied into the dead-letter stream. A
// body between the two is stored and dead-lettered with its reason and a truncated
// copy of the body (DeadLetterMsg). A dead letter is at most a request plus
// the dead-letter headers.
const (
	RequestMaxMsgSize = 8 << 10
	DLQMaxMsgSize     = 16 << 10
)

// StreamConfigs are the stream settings cfg amounts to: REFRESH, then REFRESH_DLQ.
func StreamConfigs(cfg StreamConfig) []jetstream.StreamConfig {
	return []jetstream.StreamConfig{
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
			MaxMsgSize:  RequestMaxMsgSize,
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
			MaxMsgSize:  DLQMaxMsgSize,
		},
	}
}

// StreamDiff is one setting of an existing stream that differs from the configured
// one.
type StreamDiff struct {
	Stream, Setting string
	Have, Want      string // as the stream has it, as configured
}

// String is the difference as `refresher streams` prints it: "REFRESH max_age: 72h0m0s -> 1h0m0s".
func (d StreamDiff) String() string {
	return fmt.Sprintf("%s %s: %s -> %s", d.Stream, d.Setting, d.Have, d.Want)
}

// StreamOption changes how EnsureStreams reports.
type StreamOption func(*streamOptions)

type streamOptions struct{ log *slog.Logger }

// WithStreamLogger sets where EnsureStreams logs created streams and differing
// settings (default slog.Default()).
func WithStreamLogger(log *slog.Logger) StreamOption {
	return func(o *streamOptions) { o.log = log }
}

// EnsureStreams creates REFRESH and REFRESH_DLQ when they are missing, so every
// publish and consume process can call it on start instead of relying on a set-up step
// someone might forget. It never changes a stream that exists: stream settings are
// the fleet's, not one process's (one process with REFRESHER_STREAM_MAX_AGE=1h must not
// cut the retention of every request). A setting that differs from cfg is logged as a
// warning with both values; ApplyStreams (`refresher streams apply`) changes them.
func EnsureStreams(ctx context.Context, js jetstream.JetStream, cfg StreamConfig, opts ...StreamOption) error {
	o := streamOptions{log: slog.Default()}
	for _, opt := range opts {
		opt(&o)
	}
	if err := cfg.Validate(); err != nil {
		return err
	}
	for _, sc := range StreamConfigs(cfg) {
		s, err := js.Stream(ctx, sc.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			if _, err := js.CreateStream(ctx, sc); err != nil && !errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
				return fmt.Errorf("create stream %s: %w", sc.Name, err)
			} else if err == nil {
				o.log.Info("stream created", "stream", sc.Name)
				continue
			}
			// Created by another process meanwhile: compare with it.
			s, err = js.Stream(ctx, sc.Name)
		}
		if err != nil {
			return fmt.Errorf("stream %s: %w", sc.Name, err)
		}
		for _, d := range diffStream(s.CachedInfo().Config, sc) {
			o.log.Warn("stream setting differs from this process's configuration; left as it is (refresher streams apply changes it)",
				"stream", d.Stream, "setting", d.Setting, "stream_value", d.Have, "configured", d.Want)
		}
	}
	return nil
}

// StreamDiffs compares the existing streams with cfg. A missing stream is reported as
// the setting "stream" with Have "(missing)".
func StreamDiffs(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) ([]StreamDiff, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	var out []StreamDiff
	for _, sc := range StreamConfigs(cfg) {
		s, err := js.Stream(ctx, sc.Name)
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			out = append(out, StreamDiff{Stream: sc.Name, Setting: "stream", Have: "(missing)", Want: "created"})
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", sc.Name, err)
		}
		out = append(out, diffStream(s.CachedInfo().Config, sc)...)
	}
	return out, nil
}

// ApplyStreams creates the streams or updates them to cfg, and returns what it
// changed (nothing when they already match: no write is sent then).
func ApplyStreams(ctx context.Context, js jetstream.JetStream, cfg StreamConfig) ([]StreamDiff, error) {
	diffs, err := StreamDiffs(ctx, js, cfg)
	if err != nil {
		return nil, err
	}
	changed := map[string]bool{}
	for _, d := range diffs {
		changed[d.Stream] = true
	}
	for _, sc := range StreamConfigs(cfg) {
		if !changed[sc.Name] {
			continue
		}
		if _, err := js.CreateOrUpdateStream(ctx, sc); err != nil {
			return nil, fmt.Errorf("create or update stream %s: %w", sc.Name, err)
		}
	}
	return diffs, nil
}

// diffStream compares the settings EnsureStreams manages.
func diffStream(have, want jetstream.StreamConfig) []StreamDiff {
	var out []StreamDiff
	add := func(setting string, differ bool, h, w any) {
		if differ {
			out = append(out, StreamDiff{Stream: want.Name, Setting: setting, Have: fmt.Sprint(h), Want: fmt.Sprint(w)})
		}
	}
	add("description", have.Description != want.Description, strconv.Quote(have.Description), strconv.Quote(want.Description))
	add("subjects", !slices.Equal(have.Subjects, want.Subjects), strings.Join(have.Subjects, ","), strings.Join(want.Subjects, ","))
	add("storage", have.Storage != want.Storage, have.Storage, want.Storage)
	add("retention", have.Retention != want.Retention, have.Retention, want.Retention)
	add("discard", have.Discard != want.Discard, have.Discard, want.Discard)
	add("max_age", have.MaxAge != want.MaxAge, have.MaxAge, want.MaxAge)
	add("duplicate_window", have.Duplicates != want.Duplicates, have.Duplicates, want.Duplicates)
	add("replicas", have.Replicas != want.Replicas, have.Replicas, want.Replicas)
	add("max_msg_size", have.MaxMsgSize != want.MaxMsgSize, msgSize(have.MaxMsgSize), msgSize(want.MaxMsgSize))
	return out
}

func msgSize(n int32) string {
	if n <= 0 {
		return "unlimited"
	}
	return strconv.Itoa(int(n)) + " bytes"
}
