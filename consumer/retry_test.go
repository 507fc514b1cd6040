package consumer_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
)

// TestTransientErrorsRetry: while the provider answers 503 the consumer records the
// failure, backs off and retries; once it is back the row is refreshed and the failure
// count reset.
func TestTransientErrorsRetry(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{BatchSize: batch})
		ids := env.Seed("github", 3)
		cfg := env.Config()
		cfg.MaxDeliver = 50
		r := env.StartConsumer(cfg, env.NoCircuit())
		env.Fake.SetOutage(true)
		if _, err := env.Publisher().Publish(context.Background(), "github", ids...); err != nil {
			t.Fatal(err)
		}
		fleettest.Eventually(t, 30*time.Second, "failures recorded on every row", func() bool {
			for _, id := range ids {
				if c := env.Credential(id); c.Failures < 2 || c.LastError == nil || !strings.Contains(*c.LastError, "503") {
					return false
				}
			}
			return true
		})
		env.Fake.SetOutage(false)
		t0 := time.Now()
		env.WaitIdle(30 * time.Second)
		t.Logf("idle %s after the outage; %d in-flight waits", time.Since(t0), strings.Count(env.Logs(), "already in flight"))
		for _, id := range ids {
			c := env.Credential(id)
			if c.Version != 1 || c.Failures != 0 || c.LastError != nil {
				t.Fatalf("credential %d after recovery: version %d failures %d last_error %v", id, c.Version, c.Failures, c.LastError)
			}
		}
		if st := r.Stats(); st.Retried < int64(2*len(ids)) || st.Refreshed != int64(len(ids)) {
			t.Fatalf("stats %+v", st)
		}
		if dls := env.DeadLetters(); len(dls) != 0 {
			t.Fatalf("recovered requests were dead-lettered: %+v", dls)
		}
		env.Verify()
	})
}

// TestRateLimitedHonoursRetryAfter: a 429's Retry-After pauses the service: the
// request waits it out (holding its delivery) and is then refreshed.
func TestRateLimitedHonoursRetryAfter(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{BatchSize: batch})
		ids := env.Seed("github", 1)
		r := env.StartConsumer(env.Config())
		env.Fake.SetRateLimit(true, 2*time.Second)
		start := time.Now()
		if _, err := env.Publisher().Publish(context.Background(), "github", ids...); err != nil {
			t.Fatal(err)
		}
		fleettest.Eventually(t, 10*time.Second, "the first 429", func() bool { return env.Fake.Stats().Unavailable >= 1 })
		env.Fake.SetRateLimit(false, 0)
		env.WaitIdle(30 * time.Second)
		// The configured backoff is 50ms; only Retry-After explains a wait of 2s.
		if waited := time.Since(start); waited < 2*time.Second {
			t.Fatalf("redelivered after %s, before Retry-After (2s)", waited)
		}
		if c := env.Credential(ids[0]); c.Version != 1 {
			t.Fatalf("not refreshed after the rate limit lifted: %+v", c)
		}
		if st := r.Stats(); st.Retried != 0 || st.Refreshed != 1 {
			t.Fatalf("stats %+v: the pause should be waited out, not retried", st)
		}
	})
}

// TestMaxDeliverDeadLetters: a request that fails on every delivery ends in
// REFRESH_DLQ with its reason and delivery count, and the stream moves on.
func TestMaxDeliverDeadLetters(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{BatchSize: batch})
		ids := env.Seed("github", 2)
		cfg := env.Config()
		cfg.MaxDeliver = 3
		r := env.StartConsumer(cfg, env.NoCircuit())
		env.Fake.SetOutage(true)
		if _, err := env.Publisher().Publish(context.Background(), "github", ids[0]); err != nil {
			t.Fatal(err)
		}
		env.WaitIdle(30 * time.Second)
		dls := env.DeadLetters()
		if len(dls) != 1 {
			t.Fatalf("%d dead letters, want 1", len(dls))
		}
		dl := dls[0]
		if dl.Original != subj(ids[0]) || dl.Deliveries != "3" || !strings.Contains(dl.Reason, "503") || !strings.HasPrefix(dl.Reason, "retried: ") {
			t.Fatalf("dead letter %+v", dl)
		}
		if c := env.Credential(ids[0]); c.Failures != 3 || c.Version != 0 || c.Status != model.StatusActive {
			t.Fatalf("row after max deliveries: %+v", c)
		}
		// The next request is handled normally once the provider is back.
		env.Fake.SetOutage(false)
		if _, err := env.Publisher(publisher.WithWindow(0)).Publish(context.Background(), "github", ids[1]); err != nil {
			t.Fatal(err)
		}
		env.WaitIdle(30 * time.Second)
		if c := env.Credential(ids[1]); c.Version != 1 {
			t.Fatalf("consumer stuck after a dead letter: %+v", c)
		}
		if st := r.Stats(); st.DeadLettered != 1 {
			t.Fatalf("stats %+v", st)
		}
	})
}
