package consumer_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

// consumerInfo reads the fleet's durable consumer.
func consumerInfo(t *testing.T, env *fleettest.Env) *jetstream.ConsumerInfo {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cons, err := env.JS().Consumer(ctx, stream.Stream, consumer.ServiceDurable("github"))
	if err != nil {
		t.Fatal(err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	return info
}

// TestLiveClaimRespected: a live claim of another attempt (another process, by its
// owner name) on the credential's current state keeps this consumer off the row. The
// claim step that finds it must leave the claim in place and make no provider call,
// and the request must wait, without spending a delivery, until the claim settles:
// cleared by its owner, or expired. Then it is refreshed, with the call begun after
// the claim settled. Deterministic: the assertions follow the consumer's first claim
// transaction, whatever the timing, in both modes.
//
// It catches the break "live claim ignored" (go run ./internal/mutants).
func TestLiveClaimRespected(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		// ttl is how long the planted claim lives; clear: the test clears it (as its
		// owner would on commit) instead of letting it expire.
		ttl   time.Duration
		clear bool
	}{
		{"cleared by its owner", time.Minute, true},
		{"expires", 2 * time.Second, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fleettest.BothModes(t, func(t *testing.T, batch int) {
				env := fleettest.New(t, fleettest.Options{BatchSize: batch})
				ids := env.Seed("github", 1)
				ctx := context.Background()
				const claimID = 4242
				var expires time.Time
				if err := env.DB.QueryRowContext(ctx, `UPDATE credentials SET claim_id = ?, claim_owner = 'another-process',
					claim_started_at = now(), claim_expires_at = now() + ? * interval '1 millisecond' WHERE id = ? RETURNING claim_expires_at`,
					claimID, tt.ttl.Milliseconds(), ids[0]).Scan(&expires); err != nil {
					t.Fatal(err)
				}
				obs := &events{}
				cfg := env.Config()
				// The planted owner has no liveness key, so it would count as dead once the
				// claim is OwnerTTL old; its claim is to be respected however slow the run.
				cfg.OwnerTTL = 0
				r := env.StartConsumer(cfg, consumer.WithObserver(obs))
				if _, err := env.Publisher(publisher.WithWindow(0)).Publish(ctx, "github", ids[0]); err != nil {
					t.Fatal(err)
				}

				// The first claim transaction has seen the live claim: it must have left it
				// as it was and called nobody.
				obs.waitTransaction(t, "the first claim transaction", 0)
				c := env.Credential(ids[0])
				if c.ClaimID == nil || *c.ClaimID != claimID {
					t.Fatalf("the claim step did not leave another attempt's live claim in place (row version %d, claim replaced or cleared)", c.Version)
				}
				if calls := env.Fake.Stats().Calls; calls != 0 {
					t.Fatalf("%d provider calls while another attempt's claim was live", calls)
				}
				info := consumerInfo(t, env)
				if info.NumAckPending != 1 || info.NumRedelivered != 0 {
					t.Fatalf("while waiting: %d ack pending, %d redelivered; want the request held, once delivered", info.NumAckPending, info.NumRedelivered)
				}

				settled := expires
				if tt.clear {
					var now time.Time
					if err := env.DB.QueryRowContext(ctx, `UPDATE credentials SET claim_id = NULL, claim_owner = NULL,
						claim_started_at = NULL, claim_expires_at = NULL WHERE id = ? AND claim_id = ? RETURNING now()`, ids[0], claimID).Scan(&now); err != nil {
						t.Fatalf("clear the planted claim: %v", err)
					}
					settled = now
				}
				env.WaitIdle(30 * time.Second)

				c = env.Credential(ids[0])
				if c.Version != 1 || c.RefreshedAt == nil || c.ClaimID != nil {
					t.Fatalf("after the claim settled: version %d refreshed_at %v claim %v", c.Version, c.RefreshedAt, c.ClaimID)
				}
				if c.RefreshedAt.Before(settled) {
					t.Fatalf("provider call began at %s, before the claim settled at %s", c.RefreshedAt.Format(time.RFC3339Nano), settled.Format(time.RFC3339Nano))
				}
				if fs := env.Fake.Stats(); fs.Calls != 1 || fs.Reuses != 0 {
					t.Fatalf("provider: %d calls, %d reuses; want one call", fs.Calls, fs.Reuses)
				}
				if info := consumerInfo(t, env); info.NumRedelivered != 0 {
					t.Fatalf("%d redeliveries: waiting for the claim spent a delivery", info.NumRedelivered)
				}
				if st := r.Stats(); st.Refreshed != 1 || st.Retried != 0 {
					t.Fatalf("stats %+v: want one refresh, no retry", st)
				}
				env.Verify()
			})
		})
	}
}
