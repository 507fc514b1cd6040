package consumer_test

import (
	"context"
	"testing"
	"time"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/publisher"
)

// TestBacklogAfterDowntime: with the consumers down, ten duplicate requests per row pile
// up; when they come back the provider sees one call per row, not one per message.
// With enough concurrency to hold every duplicate of a row at once, all but one wait
// for the claim; waiting spends no delivery, so with MaxDeliver 2 none is dead-lettered.
func TestBacklogAfterDowntime(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{Latency: 20 * time.Millisecond, BatchSize: batch})
		const rows, dups = 100, 10
		ids := env.Seed("github", rows)
		p := env.Publisher(publisher.WithWindow(0))
		for range dups {
			if _, err := p.Publish(context.Background(), "github", ids...); err != nil {
				t.Fatal(err)
			}
		}
		cfg := env.Config()
		cfg.Concurrency, cfg.MaxDeliver = 128, 2
		for range 2 {
			env.StartConsumer(cfg)
		}
		env.WaitIdle(time.Minute)
		env.Verify()
		if dls := env.DeadLetters(); len(dls) != 0 {
			t.Fatalf("%d duplicates dead-lettered (first: %s): waiting for a claim spent their deliveries", len(dls), dls[0].Reason)
		}
		calls := env.Fake.Stats().Calls
		if perRow := float64(calls) / rows; perRow > 1.05 {
			t.Fatalf("%d provider calls for %d rows (%.2f per row) after a backlog of %d requests", calls, rows, perRow, rows*dups)
		}
		t.Logf("%d requests, %d provider calls", rows*dups, calls)
	})
}

// TestProviderOutage: while the provider answers 503 the fleet backs off instead of
// hammering it, and every row is refreshed once it is back. The circuit breaker is
// off: this is the retry schedule on its own (TestOutageWaitsInStream in
// cmd/refresher has the circuit).
func TestProviderOutage(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{BatchSize: batch})
		const rows = 40
		ids := env.Seed("github", rows)
		cfg := env.Config()
		cfg.MaxDeliver = 100
		cfg.Backoff = []time.Duration{100 * time.Millisecond, 200 * time.Millisecond, 400 * time.Millisecond, 800 * time.Millisecond}
		for range 2 {
			env.StartConsumer(cfg, env.NoCircuit())
		}
		env.Fake.SetOutage(true)
		outage := time.Now()
		if _, err := env.Publisher().Publish(context.Background(), "github", ids...); err != nil {
			t.Fatal(err)
		}
		// A fixed stretch of outage: what is measured is how often the fleet calls in it.
		<-time.After(2*time.Second - time.Since(outage))
		during := env.Fake.Stats().Calls
		env.Fake.SetOutage(false)
		// The schedule (0.1, 0.2, 0.4, 0.8, 0.8 … s) allows about 5 calls per row in 2 s;
		// without it a worker would retry as fast as the provider answers.
		if during < rows/4 {
			t.Fatalf("%d provider calls during the outage for %d rows: the outage was not exercised", during, rows)
		}
		if perRow := float64(during) / rows; perRow > 7 {
			t.Fatalf("%d provider calls for %d rows in 2s of outage (%.1f per row): the fleet hammers the provider", during, rows, perRow)
		}
		env.WaitIdle(time.Minute)
		env.Verify()
		if dls := env.DeadLetters(); len(dls) != 0 {
			t.Fatalf("%d dead letters after a short outage", len(dls))
		}
		t.Logf("%d calls during the outage for %d rows", during, rows)
	})
}
