package stream_test

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/internal/natstest"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/stream"
)

// newJetStream starts an in-process nats-server with REFRESH and REFRESH_DLQ created
// as configured by default. The stream package needs nothing else: no PostgreSQL.
func newJetStream(t *testing.T) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, js := natstest.Connect(t, natstest.Start(t).URL())
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	if err := stream.EnsureStreams(context.Background(), js, stream.DefaultStreamConfig(), stream.WithStreamLogger(quiet)); err != nil {
		t.Fatal(err)
	}
	return nc, js
}

// TestEnsureStreamsNeverChangesAStream: a fleet restarting together calls
// EnsureStreams from every process; it creates what is missing and never updates an
// existing stream, even when one process is configured differently: that is a
// warning with both values. ApplyStreams sends exactly the one update needed.
func TestEnsureStreamsNeverChangesAStream(t *testing.T) {
	nc, js := newJetStream(t)
	updates := make(chan struct{}, 10)
	sub, err := nc.Subscribe("$JS.EVENT.ADVISORY.STREAM.UPDATED.>", func(*nats.Msg) { updates <- struct{}{} })
	if err != nil {
		t.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	cfg := stream.DefaultStreamConfig()
	var logs bytes.Buffer // EnsureStreams logs before it returns
	log := slog.New(slog.NewTextHandler(&logs, nil))
	for range 3 {
		if err := stream.EnsureStreams(ctx, js, cfg, stream.WithStreamLogger(log)); err != nil {
			t.Fatal(err)
		}
	}
	if logs.String() != "" {
		t.Fatalf("logs with matching settings: %s", logs.String())
	}
	cfg.MaxAge = time.Hour
	if err := stream.EnsureStreams(ctx, js, cfg, stream.WithStreamLogger(log)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"level=WARN", "stream=REFRESH", "setting=max_age", "stream_value=72h0m0s", "configured=1h0m0s"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("warning lacks %q: %s", want, logs.String())
		}
	}
	if s, err := js.Stream(ctx, stream.Stream); err != nil || s.CachedInfo().Config.MaxAge != 72*time.Hour {
		t.Fatalf("REFRESH changed by EnsureStreams (err %v)", err)
	}
	diffs, err := stream.ApplyStreams(ctx, js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(diffs) != 1 || diffs[0].String() != "REFRESH max_age: 72h0m0s -> 1h0m0s" {
		t.Fatalf("ApplyStreams changed %v, want REFRESH max_age only", diffs)
	}
	select {
	case <-updates:
	case <-time.After(5 * time.Second):
		t.Fatal("no stream update advisory after ApplyStreams")
	}
	if diffs, err := stream.ApplyStreams(ctx, js, cfg); err != nil || len(diffs) != 0 {
		t.Fatalf("second ApplyStreams: %v, %v", diffs, err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := 1 + len(updates); n != 1 {
		t.Fatalf("%d stream updates, want 1 (only the changed MaxAge, by ApplyStreams)", n)
	}
}

// TestRequestSizeLimit: REFRESH refuses a message too large to be a request, and
// stores one with a body at the consumer's limit.
func TestRequestSizeLimit(t *testing.T) {
	_, js := newJetStream(t)
	ctx := context.Background()
	ok := nats.NewMsg("refresh.github.1")
	ok.Header.Set(jetstream.MsgIDHeader, "refresh.github.1@2026-01-01T00:00:00Z")
	ok.Header.Set(model.HeaderRequestedAt, model.FormatRequestedAt(time.Now()))
	ok.Data = []byte(`{"reason":"` + strings.Repeat("x", model.MaxBodyBytes-14) + `"}`)
	if _, err := js.PublishMsg(ctx, ok); err != nil {
		t.Fatalf("a request with a %d-byte body: %v", len(ok.Data), err)
	}
	big := nats.NewMsg("refresh.github.2")
	big.Data = make([]byte, stream.RequestMaxMsgSize+1)
	if _, err := js.PublishMsg(ctx, big); err == nil {
		t.Fatal("a message above RequestMaxMsgSize was stored")
	}
}
