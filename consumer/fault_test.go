package consumer_test

import (
	"context"
	"testing"
	"time"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
)

// TestConnectionKilledMidRefresh looks at the database while every provider call is
// in flight: no session may sit in a transaction (no lock or transaction spans a
// call). It then kills every session the consumer holds; the commits must reconnect
// and store every rotated token, with no grace period to fall back on.
func TestConnectionKilledMidRefresh(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{Latency: 400 * time.Millisecond, BatchSize: batch})
		ids := env.Seed("github", 8)
		r := env.StartConsumer(env.Config())
		if _, err := env.Publisher().Publish(context.Background(), "github", ids...); err != nil {
			t.Fatal(err)
		}
		fleettest.Eventually(t, 10*time.Second, "every refresh waiting on the provider", func() bool {
			return env.Fake.Stats().Calls == len(ids)
		})
		ctx := context.Background()
		var inTx, killed int
		if err := env.DB.QueryRowContext(ctx, `
			SELECT count(*) FILTER (WHERE state LIKE 'idle in transaction%'), count(pg_terminate_backend(pid))
			FROM pg_stat_activity WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&inTx, &killed); err != nil {
			t.Fatal(err)
		}
		if inTx != 0 {
			t.Fatalf("%d sessions idle in a transaction while the provider calls were in flight", inTx)
		}
		if killed == 0 {
			t.Fatal("no session to kill: the test did not exercise the fault")
		}
		env.WaitIdle(time.Minute)
		for _, id := range ids {
			if c := env.Credential(id); c.Version != 1 || c.Status != model.StatusActive || c.ClaimID != nil {
				t.Fatalf("credential %d: version %d status %s claim %v", id, c.Version, c.Status, c.ClaimID)
			}
		}
		if st := env.Fake.Stats(); st.Calls != len(ids) || st.Reuses != 0 {
			t.Fatalf("provider: %d calls, %d reuses: want one call per row and no reuse", st.Calls, st.Reuses)
		}
		if st := r.Stats(); st.Refreshed != int64(len(ids)) {
			t.Fatalf("stats %+v", st)
		}
		env.Verify()
	})
}

// TestConnectionsKilledDuringRun keeps killing the consumers' sessions, busy or idle,
// during a run of many requests; every request must still end refreshed with the
// latest token stored and no replaced token sent.
func TestConnectionsKilledDuringRun(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{Latency: 5 * time.Millisecond, BatchSize: batch})
		ids := env.Seed("github", 300)
		cfg := env.Config()
		cfg.MaxDeliver = 100
		for range 2 {
			env.StartConsumer(cfg)
		}
		p := env.Publisher(publisher.WithWindow(0))
		for range 3 {
			if _, err := p.Publish(context.Background(), "github", ids...); err != nil {
				t.Fatal(err)
			}
		}
		// Kill every session of the database every 100ms until half the rows have rotated.
		killed := 0
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(time.Minute)
		for env.Fake.Stats().Rotations < len(ids)/2 {
			select {
			case <-deadline:
				t.Fatalf("only %d of %d rows rotated in a minute of killed sessions", env.Fake.Stats().Rotations, len(ids))
			case <-tick.C:
			}
			var n int
			if err := env.DB.QueryRowContext(context.Background(), `
				SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
				WHERE datname = current_database() AND pid <> pg_backend_pid()`).Scan(&n); err == nil {
				killed += n
			} // else our own pool handed us a killed connection: the next tick retries
		}
		if killed == 0 {
			t.Fatal("no session was killed: the test did not exercise the fault")
		}
		env.WaitIdle(2 * time.Minute)
		rep := env.Verify()
		if st := env.Fake.Stats(); st.Reuses != 0 {
			t.Fatalf("%d replaced tokens sent", st.Reuses)
		}
		t.Logf("%s; %d sessions killed", rep, killed)
	})
}

// TestPostgresStopped stops PostgreSQL (a throwaway cluster this test owns) for a few
// seconds in the middle of a run and starts it again: every request still ends
// refreshed, with the latest tokens stored and no replaced token sent.
func TestPostgresStopped(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{Latency: 20 * time.Millisecond, BatchSize: batch, OwnPostgres: true})
		ids := env.Seed("github", 200)
		cfg := env.Config()
		cfg.MaxDeliver = 100
		for range 2 {
			env.StartConsumer(cfg)
		}
		if _, err := env.Publisher().Publish(context.Background(), "github", ids...); err != nil {
			t.Fatal(err)
		}
		fleettest.Eventually(t, time.Minute, "a quarter of the rows refreshed", func() bool {
			return env.Fake.Stats().Rotations >= len(ids)/4
		})
		ctx := context.Background()
		if err := env.PG.Pause(ctx); err != nil {
			t.Fatal(err)
		}
		<-time.After(3 * time.Second) // the outage itself is what is being tested
		if err := env.PG.Resume(ctx); err != nil {
			t.Fatal(err)
		}
		env.WaitIdle(2 * time.Minute)
		env.Verify()
		if st := env.Fake.Stats(); st.Reuses != 0 {
			t.Fatalf("%d replaced tokens sent", st.Reuses)
		}
		for _, id := range ids {
			if c := env.Credential(id); c.RefreshedAt == nil {
				t.Fatalf("credential %d never refreshed", id)
			}
		}
	})
}
