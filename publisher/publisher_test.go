package publisher_test

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

func streamMsgs(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	s, err := js.Stream(context.Background(), stream.Stream)
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
