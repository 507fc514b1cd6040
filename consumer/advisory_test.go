package consumer_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/fleettest"
)

// TestMaxDeliveriesAdvisory: a message that is delivered until MaxDeliver without any
// handler settling it (a process that crashes on it every time) still reaches
// REFRESH_DLQ, exactly once although two processes watch.
func TestMaxDeliveriesAdvisory(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	ids := env.Seed("github", 1)
	cfg := env.Config()
	cfg.AckWait = 6 * time.Second
	cfg.ProviderTimeout = time.Second
	cfg.DrainTimeout = 2 * time.Second
	cfg.MaxDeliver = 2
	var watchers []*consumer.Consumer
	obs := &events{}
	for range 2 {
		c, err := consumer.New(env.DB, env.Conn(), env.Providers(cfg.ProviderTimeout), cfg, consumer.WithLogger(env.Log), consumer.WithObserver(obs))
		if err != nil {
			t.Fatal(err)
		}
		watchers = append(watchers, c)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	nc := env.Conn()
	for _, w := range watchers {
		go func() { _ = w.WatchMaxDeliveries(ctx, nc) }()
	}
	bound, err := watchers[0].Bind(ctx)
	if err != nil {
		t.Fatal(err)
	}
	cons := bound["github"]
	// A crashing worker: the durable's ack wait is shortened so the test does not wait
	// out the real one.
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	short := info.Config
	short.AckWait = 300 * time.Millisecond
	if cons, err = env.JS().UpdateConsumer(ctx, "REFRESH", short); err != nil {
		t.Fatal(err)
	}
	// Subscriptions must be in place before the advisory fires.
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := env.Publisher().Publish(ctx, "github", ids...); err != nil {
		t.Fatal(err)
	}
	for delivery := 1; delivery <= cfg.MaxDeliver; delivery++ {
		batch, err := cons.Fetch(1, jetstream.FetchMaxWait(5*time.Second))
		if err != nil {
			t.Fatal(err)
		}
		got := 0
		for range batch.Messages() {
			got++ // received and never settled: the worker "crashed"
		}
		if got != 1 {
			t.Fatalf("delivery %d: fetched %d messages", delivery, got)
		}
	}
	// The server notices the exhausted message when it next looks for one to deliver,
	// as the fleet's pulls make it do all the time.
	batch, err := cons.Fetch(1, jetstream.FetchMaxWait(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	for m := range batch.Messages() {
		t.Fatalf("delivered again past MaxDeliver: %s", m.Subject())
	}
	fleettest.Eventually(t, 10*time.Second, "a dead letter", func() bool { return len(env.DeadLetters()) > 0 })
	fleettest.Eventually(t, 10*time.Second, "both watchers to copy the message", func() bool { return obs.copies.Load() >= 2 })
	if n := obs.copies.Load(); n != 2 {
		t.Fatalf("%d copies made by two watchers of one advisory, want 2", n)
	}
	dls := env.DeadLetters()
	if len(dls) != 1 {
		t.Fatalf("%d dead letters, want exactly 1", len(dls))
	}
	if dl := dls[0]; dl.Original != subj(ids[0]) || !strings.HasPrefix(dl.Reason, "max_deliveries") || dl.Deliveries != "2" {
		t.Fatalf("dead letter %+v", dl)
	}
}
