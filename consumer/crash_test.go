package consumer_test

import (
	"context"
	"testing"
	"time"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/internal/verify"
	"github.com/refresher/refresher/publisher"
)

// crashDuringCalls crashes PostgreSQL (a throwaway cluster of the test's own) the way
// `pg_ctl stop -m immediate` does while every provider call of a run is in flight,
// against a provider with no reuse interval, starts it again after a few seconds, and
// reports what the oracle says once every request has settled.
//
// The cluster commits synchronously, as a stock server does (throwaway test clusters
// do not), and wal_writer_delay is raised so that a commit that did not wait for its
// WAL flush is still in shared memory when the crash comes, as it would be within the
// WAL writer's window on a stock server.
func crashDuringCalls(t *testing.T, batch int, opts ...consumer.Option) (verify.Report, *fleettest.Env) {
	env := fleettest.New(t, fleettest.Options{
		Latency: 1500 * time.Millisecond, BatchSize: batch, OwnPostgres: true,
		PGSettings: []string{"synchronous_commit = on", "wal_writer_delay = '10s'"},
	})
	const rows = 16
	ids := env.Seed("github", rows)
	cfg := env.Config()
	cfg.MaxDeliver = 100
	for range 2 {
		env.StartConsumer(cfg, opts...)
	}
	if _, err := env.Publisher(publisher.WithWindow(0)).Publish(context.Background(), "github", ids...); err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 10*time.Second, "every provider call in flight", func() bool {
		return env.Fake.Stats().Calls == rows
	})
	ctx := context.Background()
	if err := env.PG.Crash(ctx); err != nil {
		t.Fatal(err)
	}
	<-time.After(3 * time.Second) // the outage itself is what is being tested
	if err := env.PG.Resume(ctx); err != nil {
		t.Fatal(err)
	}
	env.WaitIdle(2 * time.Minute)
	rep, err := verify.Check(ctx, env.DB, verify.Local{P: env.Fake})
	if err != nil {
		t.Fatal(err)
	}
	return rep, env
}

// TestPostgresCrash: claims are committed durably before any provider call, so a
// database crash while calls are in flight loses nothing: each call's answer is
// committed under the claim that survived, with no replaced token presented.
func TestPostgresCrash(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		rep, env := crashDuringCalls(t, batch)
		if !rep.OK() {
			t.Fatalf("after the crash: %s %v", rep, rep.Examples)
		}
		if st := env.Fake.Stats(); st.Reuses != 0 || st.Rotations < rep.Rows {
			t.Fatalf("provider: %d reuses, %d rotations for %d rows", st.Reuses, st.Rotations, rep.Rows)
		}
		t.Logf("%s; provider calls %d", rep, env.Fake.Stats().Calls)
	})
}

// TestPostgresCrashAsyncClaimsControl is the control: the same crash with claims
// committed asynchronously must lose credentials (the claim vanishes, the answer is
// discarded as not this attempt's, and the retry presents a rotated token), which
// shows that TestPostgresCrash can fail.
func TestPostgresCrashAsyncClaimsControl(t *testing.T) {
	t.Parallel()
	rep, env := crashDuringCalls(t, 1, consumer.WithAsyncClaims())
	if rep.Rows == 0 {
		t.Fatal("no credentials after the crash: the seed itself was lost")
	}
	if rep.OK() {
		t.Fatalf("asynchronous claims lost nothing in the crash (%s): the crash test cannot tell durable claims matter", rep)
	}
	t.Logf("asynchronous claims: %s; provider reuses %d", rep, env.Fake.Stats().Reuses)
}
