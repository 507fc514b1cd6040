package main

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/stream"
)

// TestStreamSettingsAreTheFleets: publish creates missing streams with the request
// size limit but does not change existing ones: a differing setting is a warning with
// both values; streams diff shows it, streams apply --dry-run changes nothing, and
// streams apply changes it and prints the difference.
func TestStreamSettingsAreTheFleets(t *testing.T) {
	fx := fleettest.New(t, fleettest.Options{})
	consumeEnv(t, fx)
	t.Setenv("REFRESHER_LOG_FORMAT", "text")
	fx.Seed("github", 1)
	ctx := context.Background()
	maxAge := func() time.Duration {
		t.Helper()
		s, err := fx.JS().Stream(ctx, stream.Stream)
		if err != nil {
			t.Fatal(err)
		}
		return s.CachedInfo().Config.MaxAge
	}

	code, _, stderr := runCLI(t, "publish", "--service", "github")
	if code != 0 {
		t.Fatalf("publish: exit %d: %s", code, stderr)
	}
	s, err := fx.JS().Stream(ctx, stream.Stream)
	if err != nil {
		t.Fatal(err)
	}
	if got := s.CachedInfo().Config.MaxMsgSize; got != stream.RequestMaxMsgSize {
		t.Fatalf("REFRESH created with max_msg_size %d, want %d", got, stream.RequestMaxMsgSize)
	}

	t.Setenv("REFRESHER_STREAM_MAX_AGE", "1h")
	code, _, stderr = runCLI(t, "publish", "--service", "github")
	if code != 0 {
		t.Fatalf("publish: exit %d: %s", code, stderr)
	}
	for _, want := range []string{"stream setting differs", "stream=REFRESH", "setting=max_age", "stream_value=72h0m0s", "configured=1h0m0s"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("publish's warning lacks %q: %s", want, stderr)
		}
	}
	if got := maxAge(); got != 72*time.Hour {
		t.Fatalf("publish changed REFRESH's max age to %s", got)
	}
	t.Setenv("REFRESHER_HTTP_ADDR", "")
	c := startCLI(t, "consume")
	fleettest.Eventually(t, 30*time.Second, "consume bound", func() bool { return strings.Contains(c.stderr.String(), "consuming") })
	if code := c.stop(t); code != 0 {
		t.Fatalf("consume: exit %d: %s", code, c.stderr.String())
	}
	if !strings.Contains(c.stderr.String(), "setting=max_age stream_value=72h0m0s configured=1h0m0s") {
		t.Errorf("consume's log lacks the warning: %s", c.stderr.String())
	}
	if got := maxAge(); got != 72*time.Hour {
		t.Fatalf("consume changed REFRESH's max age to %s", got)
	}

	for _, tc := range []struct {
		args   []string
		want   string
		maxAge time.Duration
	}{
		{[]string{"streams", "diff"}, "REFRESH max_age: 72h0m0s -> 1h0m0s\n1 difference(s)", 72 * time.Hour},
		{[]string{"streams", "apply", "--dry-run"}, "REFRESH max_age: 72h0m0s -> 1h0m0s\n1 change(s) to apply (dry run", 72 * time.Hour},
		{[]string{"streams", "apply"}, "REFRESH max_age: 72h0m0s -> 1h0m0s\napplied 1 change(s)", time.Hour},
		{[]string{"streams", "apply"}, "REFRESH and REFRESH_DLQ match the configuration", time.Hour},
	} {
		code, stdout, stderr := runCLI(t, tc.args...)
		if code != 0 || !strings.Contains(stdout, tc.want) {
			t.Fatalf("%v: exit %d, stdout %q, stderr %q; want %q", tc.args, code, stdout, stderr, tc.want)
		}
		if got := maxAge(); got != tc.maxAge {
			t.Fatalf("after %v REFRESH max age is %s, want %s", tc.args, got, tc.maxAge)
		}
	}
}

// TestOversizedRequestDeadLettered: a body above model.MaxBodyBytes (but within
// REFRESH's message size limit) is dead-lettered with its reason and only the first
// stream.DeadLetterBodyBytes of the body, its size in a header.
func TestOversizedRequestDeadLettered(t *testing.T) {
	fx := fleettest.New(t, fleettest.Options{})
	fx.Publisher() // creates the streams
	ids := fx.Seed("github", 1)
	body := []byte(`{"reason":"` + strings.Repeat("y", model.MaxBodyBytes+500) + `"}`)
	if _, err := fx.JS().Publish(context.Background(), model.Key{Service: "github", ID: ids[0]}.Subject(), body); err != nil {
		t.Fatal(err)
	}
	run := fx.StartConsumer(fx.Config())
	defer func() { _ = run.Stop() }() // the test's assertions are made; Stop is clean-up
	fleettest.Eventually(t, 30*time.Second, "the dead letter", func() bool { return len(fx.DeadLetters()) == 1 })
	dl := fx.DeadLetters()[0]
	if !strings.Contains(dl.Reason, "bytes, limit") {
		t.Errorf("reason %q does not say the body is too large", dl.Reason)
	}
	if len(dl.Data) != stream.DeadLetterBodyBytes || !bytes.Equal(dl.Data, body[:stream.DeadLetterBodyBytes]) {
		t.Errorf("dead letter holds %d bytes of the body, want its first %d", len(dl.Data), stream.DeadLetterBodyBytes)
	}
	s, err := fx.JS().Stream(context.Background(), stream.DLQStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := s.GetLastMsgForSubject(context.Background(), "dlq.>")
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Header.Get(stream.HeaderBodyTruncated); got != strconv.Itoa(len(body)) {
		t.Errorf("%s = %q, want %d", stream.HeaderBodyTruncated, got, len(body))
	}
}
