package publisher_test

import (
	"context"
	"errors"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
)

func streamMsgs(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), publisher.Stream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

// TestTwoPublishersSameWindow is the overlapping-schedules race: two publishers of
// the same schedule at the same moment store each row once, and the second copy of
// each is acknowledged as a duplicate by Nats-Msg-Id.
func TestTwoPublishersSameWindow(t *testing.T) {
	env := fleettest.New(t, fleettest.Options{})
	const rows = 300
	env.Seed("github", rows)
	now := time.Date(2026, 11, 26, 10, 7, 0, 0, time.UTC)
	clock := func() time.Time { return now }
	var wg sync.WaitGroup
	results := make([]publisher.Result, 2)
	errs := make([]error, 2)
	for i := range 2 {
		p := env.Publisher(publisher.WithClock(clock), publisher.WithMaxInFlight(16))
		wg.Add(1)
		go func() {
			defer wg.Done()
			results[i], errs[i] = p.PublishScan(context.Background(), env.DB, publisher.Scan{Service: "github", PageSize: 50})
		}()
	}
	wg.Wait()
	for _, err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	total := results[0]
	total.Published += results[1].Published
	total.Duplicate += results[1].Duplicate
	total.Failed += results[1].Failed
	if total.Published != rows || total.Duplicate != rows || total.Failed != 0 {
		t.Fatalf("two publishers: %+v + %+v, want %d published and %d duplicates in all", results[0], results[1], rows, rows)
	}
	if got := streamMsgs(t, env.JS()); got != rows {
		t.Fatalf("stream holds %d messages, want %d", got, rows)
	}

	// The next window is a new schedule period: every row is published again.
	later := env.Publisher(publisher.WithClock(func() time.Time { return now.Add(15 * time.Minute) }))
	res, err := later.PublishScan(context.Background(), env.DB, publisher.Scan{Service: "github"})
	if err != nil || res.Published != rows {
		t.Fatalf("next window: %+v, %v", res, err)
	}
}

// TestMsgID pins the dedupe id format: subject@window start.
func TestMsgID(t *testing.T) {
	at := time.Date(2026, 11, 26, 10, 14, 59, 0, time.UTC)
	env := fleettest.New(t, fleettest.Options{})
	p := env.Publisher(publisher.WithClock(func() time.Time { return at }))
	got := publisher.MsgID(model.Key{Service: "github", ID: 42}, p.WindowStart(at))
	if want := "refresh.github.42@2026-11-26T10:00:00Z"; got != want {
		t.Fatalf("MsgID = %q, want %q", got, want)
	}
}

// TestScanSelects checks which rows a scan publishes: only active rows of the service,
// only those expiring soon when asked, only the listed ids when given.
func TestScanSelects(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	ctx := context.Background()
	gh := env.Seed("github", 10)
	env.Seed("google", 5)
	// Two github rows expire late, one needs reauth.
	if _, err := env.DB.NewUpdate().Model((*model.Credential)(nil)).Set("expires_at = now() + interval '5 hours'").
		Where("id IN (?, ?)", gh[0], gh[1]).Exec(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := env.DB.NewUpdate().Model((*model.Credential)(nil)).Set("status = ?", model.StatusReauthRequired).
		Where("id = ?", gh[2]).Exec(ctx); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		scan publisher.Scan
		want int
	}{
		{"all active", publisher.Scan{Service: "github", PageSize: 3}, 9},
		{"expiring within 30m", publisher.Scan{Service: "github", ExpiringWithin: 30 * time.Minute, PageSize: 4}, 7},
		{"ids", publisher.Scan{Service: "github", IDs: []int64{gh[0], gh[2], gh[5], 999999}}, 2},
		{"other service", publisher.Scan{Service: "google"}, 5},
		{"unknown service", publisher.Scan{Service: "gitlab"}, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := env.Publisher(publisher.WithWindow(0))
			res, err := p.PublishScan(ctx, env.DB, tt.scan)
			if err != nil || res.Published != tt.want {
				t.Fatalf("PublishScan = %+v, %v; want %d published", res, err, tt.want)
			}
		})
	}
}

// TestBadArguments: bad values are refused before anything is published.
func TestBadArguments(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	ctx := context.Background()
	p := env.Publisher()
	for _, tt := range []struct {
		name string
		call func() error
		want string
	}{
		{"bad service", func() error { _, err := p.Publish(ctx, "Git Hub", 1); return err }, "bad service name"},
		{"zero id", func() error { _, err := p.Publish(ctx, "github", 1, 0); return err }, "id 0"},
		{"negative id", func() error { _, err := p.Publish(ctx, "github", -3); return err }, "id -3"},
		{"scan bad service", func() error { _, err := p.PublishScan(ctx, env.DB, publisher.Scan{Service: ""}); return err }, "bad service name"},
		{"scan negative window", func() error {
			_, err := p.PublishScan(ctx, env.DB, publisher.Scan{Service: "github", ExpiringWithin: -time.Minute})
			return err
		}, "must not be negative"},
		{"reason too long", func() error {
			_, err := publisher.New(env.Conn(), publisher.WithReason(strings.Repeat("r", 300)))
			return err
		}, "at most"},
		{"negative window", func() error { _, err := publisher.New(env.Conn(), publisher.WithWindow(-time.Second)); return err }, "must not be negative"},
		{"sub-second window", func() error {
			_, err := publisher.New(env.Conn(), publisher.WithWindow(500*time.Millisecond))
			return err
		}, "at least 1s"},
		{"zero in-flight", func() error { _, err := publisher.New(env.Conn(), publisher.WithMaxInFlight(0)); return err }, "at least 1"},
		{"zero ack timeout", func() error { _, err := publisher.New(env.Conn(), publisher.WithAckTimeout(0)); return err }, "must be positive"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.call()
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("error = %v, want one containing %q", err, tt.want)
			}
		})
	}
	if got := streamMsgs(t, env.JS()); got != 0 {
		t.Fatalf("bad arguments published %d messages", got)
	}
}

// TestPublishWithNATSDown: with the server gone, the run waits for it as long as it
// may, then reports every message as failed; nothing is counted as published that was
// not acknowledged.
func TestPublishWithNATSDown(t *testing.T) {
	env := fleettest.New(t, fleettest.Options{})
	p := env.Publisher(publisher.WithRetries(2), publisher.WithAckTimeout(300*time.Millisecond),
		publisher.WithOutageTimeout(time.Second))
	if res, err := p.Publish(context.Background(), "github", 1, 2); err != nil || res.Published != 2 {
		t.Fatalf("with NATS up: %+v, %v", res, err)
	}
	env.NATS.Shutdown()
	start := time.Now()
	res, err := p.Publish(context.Background(), "github", 3, 4, 5)
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("gave up after %s, want about the 1s outage timeout", d)
	}
	if !errors.Is(err, publisher.ErrNotPublished) {
		t.Fatalf("error = %v, want ErrNotPublished", err)
	}
	// Failed if the client knew the server was gone before sending; unknown if it
	// sent them first (the server might have stored them before it went).
	if res.Published != 0 || res.Duplicate != 0 || res.Failed+res.Unknown != 3 {
		t.Fatalf("result %+v, want 3 failed or unknown", res)
	}
	if !strings.Contains(err.Error(), "3 of 3") {
		t.Fatalf("error %q does not say how many failed", err)
	}
}

// TestEnsureStreamsNeverChangesAStream: a fleet restarting together calls
// EnsureStreams from every process; it creates what is missing and never updates an
// existing stream, even when one process is configured differently: that is a
// warning with both values. ApplyStreams sends exactly the one update needed.
func TestEnsureStreamsNeverChangesAStream(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	p := env.Publisher() // creates the streams
	nc := env.Conn()
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
	cfg := publisher.DefaultStreamConfig()
	var logs fleettest.SyncBuffer
	log := slog.New(slog.NewTextHandler(&logs, nil))
	for range 3 {
		if err := publisher.EnsureStreams(ctx, p.JetStream(), cfg, publisher.WithStreamLogger(log)); err != nil {
			t.Fatal(err)
		}
	}
	if logs.String() != "" {
		t.Fatalf("logs with matching settings: %s", logs.String())
	}
	cfg.MaxAge = time.Hour
	if err := publisher.EnsureStreams(ctx, p.JetStream(), cfg, publisher.WithStreamLogger(log)); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"level=WARN", "stream=REFRESH", "setting=max_age", "stream_value=72h0m0s", "configured=1h0m0s"} {
		if !strings.Contains(logs.String(), want) {
			t.Errorf("warning lacks %q: %s", want, logs.String())
		}
	}
	if s, err := p.JetStream().Stream(ctx, publisher.Stream); err != nil || s.CachedInfo().Config.MaxAge != 72*time.Hour {
		t.Fatalf("REFRESH changed by EnsureStreams (err %v)", err)
	}
	diffs, err := publisher.ApplyStreams(ctx, p.JetStream(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(diffs) != 1 || diffs[0].String() != "REFRESH max_age: 72h0m0s -> 1h0m0s" {
		t.Fatalf("ApplyStreams changed %v, want REFRESH max_age only", diffs)
	}
	fleettest.Eventually(t, 5*time.Second, "the update advisory", func() bool { return len(updates) >= 1 })
	if diffs, err := publisher.ApplyStreams(ctx, p.JetStream(), cfg); err != nil || len(diffs) != 0 {
		t.Fatalf("second ApplyStreams: %v, %v", diffs, err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := len(updates); n != 1 {
		t.Fatalf("%d stream updates, want 1 (only the changed MaxAge, by ApplyStreams)", n)
	}
}

// TestRequestSizeLimit: REFRESH refuses a message too large to be a request, and
// stores one with a body at the consumer's limit.
func TestRequestSizeLimit(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	p := env.Publisher()
	ctx := context.Background()
	ok := nats.NewMsg("refresh.github.1")
	ok.Header.Set(jetstream.MsgIDHeader, "refresh.github.1@2026-01-01T00:00:00Z")
	ok.Header.Set(model.HeaderRequestedAt, model.FormatRequestedAt(time.Now()))
	ok.Data = []byte(`{"reason":"` + strings.Repeat("x", model.MaxBodyBytes-14) + `"}`)
	if _, err := p.JetStream().PublishMsg(ctx, ok); err != nil {
		t.Fatalf("a request with a %d-byte body: %v", len(ok.Data), err)
	}
	big := nats.NewMsg("refresh.github.2")
	big.Data = make([]byte, publisher.RequestMaxMsgSize+1)
	if _, err := p.JetStream().PublishMsg(ctx, big); err == nil {
		t.Fatal("a message above RequestMaxMsgSize was stored")
	}
}
