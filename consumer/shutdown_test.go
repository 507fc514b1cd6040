package consumer_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/model"
)

// TestGracefulShutdown stops a consumer while provider calls are in flight. The calls
// already made must still reach the database (the transaction does not run on the
// cancelled context), nothing may be acked uncommitted, and a new consumer finishes the
// rest with nothing lost.
func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{Latency: 300 * time.Millisecond, BatchSize: batch})
		ids := env.Seed("github", 30)
		cfg := env.Config()
		r := env.StartConsumer(cfg)
		if _, err := env.Publisher().Publish(context.Background(), "github", ids...); err != nil {
			t.Fatal(err)
		}
		// In flight: arrived at the provider, not yet answered to the consumer.
		fleettest.Eventually(t, 10*time.Second, "provider calls in flight", func() bool {
			return env.Fake.Stats().Calls-int(r.Stats().ProviderCalls) >= 2
		})
		before := env.Fake.Stats().Rotations
		if err := r.Stop(); err != nil {
			t.Fatalf("drain: %v", err)
		}
		after := env.Fake.Stats().Rotations
		if after <= before {
			t.Fatalf("no provider call finished after shutdown began (%d rotations before, %d after): the test did not exercise the in-flight path", before, after)
		}
		// Every token the provider issued, including those answered after cancellation,
		// is in the database.
		env.Verify()
		st := r.Stats()
		if st.Refreshed != int64(after) {
			t.Fatalf("refreshed %d but the provider rotated %d tokens", st.Refreshed, after)
		}

		// Nothing was acked without its commit: a new consumer finds exactly the rest.
		r2 := env.StartConsumer(cfg)
		env.WaitIdle(time.Minute)
		for _, id := range ids {
			if c := env.Credential(id); c.Version != 1 {
				t.Fatalf("credential %d version %d after both consumers: want exactly one refresh", id, c.Version)
			}
		}
		if got := st.Refreshed + r2.Stats().Refreshed; got != int64(len(ids)) {
			t.Fatalf("refreshed %d in all, want %d", got, len(ids))
		}
		env.Verify()
	})
}

// TestIdleInTransactionTimeout: no transaction is open during a provider call, so a
// server-wide idle_in_transaction_session_timeout far shorter than the call changes
// nothing.
func TestIdleInTransactionTimeout(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{Latency: 600 * time.Millisecond, BatchSize: batch})
		ctx := context.Background()
		var name string
		if err := env.DB.QueryRowContext(ctx, "SELECT current_database()").Scan(&name); err != nil {
			t.Fatal(err)
		}
		if _, err := env.DB.ExecContext(ctx, fmt.Sprintf("ALTER DATABASE %q SET idle_in_transaction_session_timeout = '200ms'", name)); err != nil {
			t.Fatal(err)
		}
		// Drop pooled connections so the new setting applies to every session.
		env.DB.SetMaxIdleConns(0)
		env.DB.SetMaxIdleConns(64)
		ids := env.Seed("github", 3)
		r := env.StartConsumer(env.Config())
		if _, err := env.Publisher().Publish(ctx, "github", ids...); err != nil {
			t.Fatal(err)
		}
		env.WaitIdle(30 * time.Second)
		if st := r.Stats(); st.Refreshed != 3 || st.Retried != 0 {
			t.Fatalf("stats %+v: want 3 refreshed without retries", st)
		}
		env.Verify()
	})
}

// TestShutdownWithManyCallsInFlight: SIGTERM with 256 provider calls in flight on a
// pool of four connections. Every call finishes and commits within the drain
// timeout, and every token the provider issued is stored.
func TestShutdownWithManyCallsInFlight(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		const inFlight = 256
		env := fleettest.New(t, fleettest.Options{Latency: 3 * time.Second, BatchSize: batch, PoolSize: 4})
		ids := env.Seed("github", inFlight+44)
		cfg := env.Config()
		cfg.Concurrency, cfg.MaxAckPending = inFlight, 1024
		r := env.StartConsumer(cfg)
		if _, err := env.Publisher().Publish(context.Background(), "github", ids...); err != nil {
			t.Fatal(err)
		}
		fleettest.Eventually(t, 20*time.Second, fmt.Sprintf("%d provider calls in flight", inFlight), func() bool {
			return env.Fake.Stats().Calls-int(r.Stats().ProviderCalls) >= inFlight
		})
		start := time.Now()
		if err := r.Stop(); err != nil {
			t.Fatalf("drain: %v", err)
		}
		t.Logf("drained %d calls in flight in %s with %d connections at most", inFlight, time.Since(start).Round(time.Millisecond), env.DB.DB.Stats().MaxOpenConnections)
		env.Verify()
		st, rotated := r.Stats(), env.Fake.Stats().Rotations
		if rotated < inFlight || st.Refreshed != int64(rotated) {
			t.Fatalf("refreshed %d, provider rotated %d: want every one of the %d calls in flight committed", st.Refreshed, rotated, inFlight)
		}
	})
}

// TestLockTimeoutBacksOff: a row locked by another writer past REFRESHER_LOCK_TIMEOUT
// sends the message back with a delay instead of blocking a worker; once the lock is
// released the refresh completes.
func TestLockTimeoutBacksOff(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{BatchSize: batch})
		ids := env.Seed("github", 1)
		cfg := env.Config()
		cfg.LockTimeout = 200 * time.Millisecond
		cfg.MaxDeliver = 100
		r := env.StartConsumer(cfg)
		ctx := context.Background()
		tx, err := env.DB.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		defer func() { _ = tx.Rollback() }() // the lock holder only; nothing was written
		if _, err := tx.NewSelect().Model((*model.Credential)(nil)).Where("id = ?", ids[0]).For("UPDATE").Exec(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := env.Publisher().Publish(ctx, "github", ids...); err != nil {
			t.Fatal(err)
		}
		fleettest.Eventually(t, 10*time.Second, "two lock timeouts", func() bool { return r.Stats().Retried >= 2 })
		if env.Fake.Stats().Calls != 0 {
			t.Fatal("provider called without the row lock")
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		env.WaitIdle(30 * time.Second)
		if c := env.Credential(ids[0]); c.Version != 1 {
			t.Fatalf("not refreshed after the lock was released: %+v", c)
		}
		env.Verify()
	})
}

// TestConnectionClosedEndsRun: when the NATS connection is closed for good (for
// instance the server refused our credentials on reconnect), Run returns an error
// instead of idling forever, so the process exits and is restarted.
func TestConnectionClosedEndsRun(t *testing.T) {
	t.Parallel()
	env := fleettest.New(t, fleettest.Options{})
	cfg := env.Config()
	nc := env.Conn()
	c, err := consumer.New(env.DB, nc, env.Providers(cfg.ProviderTimeout), cfg, consumer.WithLogger(env.Log))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	select {
	case <-c.Ready():
	case err := <-done:
		t.Fatalf("Run ended before binding: %v", err)
	}
	nc.Close()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "message stream closed") {
			t.Fatalf("Run returned %v, want a closed-stream error", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("Run still running 15s after its connection closed")
	}
}
