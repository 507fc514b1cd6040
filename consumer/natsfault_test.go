package consumer_test

import (
	"context"
	"testing"
	"time"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

// runThroughNATSFault publishes two rounds of requests for rows credentials while
// two consumers work, calls fault once a third of the rows are refreshed, publishes
// the second round with the same publisher after it, and checks that every request
// ends satisfied with nothing lost.
func runThroughNATSFault(t *testing.T, env *fleettest.Env, rows int, fault func()) {
	t.Helper()
	ids := env.Seed("github", rows)
	cfg := env.Config()
	cfg.MaxDeliver = 100
	// Acks sent while the server is away are lost; a short ack wait keeps the test
	// from waiting long for those redeliveries (which the skip rule then answers).
	cfg.AckWait, cfg.ProviderTimeout, cfg.DrainTimeout = 3*time.Second, 2*time.Second, 4*time.Second
	for range 2 {
		env.StartConsumer(cfg)
	}
	p := env.Publisher(publisher.WithWindow(0), publisher.WithRetries(20))
	ctx := context.Background()
	if _, err := p.Publish(ctx, "github", ids...); err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, time.Minute, "a third of the rows refreshed", func() bool {
		return env.Fake.Stats().Rotations >= rows/3
	})
	fault()
	// The same publisher and consumers carry on after the fault.
	second := time.Now()
	if res, err := p.Publish(ctx, "github", ids...); err != nil || res.Published != rows {
		t.Fatalf("publish after the fault: %+v, %v", res, err)
	}
	env.WaitIdle(2 * time.Minute)
	env.Verify()
	for _, id := range ids {
		c := env.Credential(id)
		if c.RefreshedAt == nil || !c.RefreshedAt.After(second.Add(-time.Second)) {
			t.Fatalf("credential %d not refreshed after the second request (refreshed_at %v)", id, c.RefreshedAt)
		}
	}
	if st := env.Fake.Stats(); st.Reuses != 0 {
		t.Fatalf("%d replaced tokens sent", st.Reuses)
	}
}

// TestNATSRestart restarts nats-server (same store) in the middle of a run.
func TestNATSRestart(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{Latency: 10 * time.Millisecond, BatchSize: batch})
		runThroughNATSFault(t, env, 200, func() {
			if err := env.NATS.Restart(); err != nil {
				t.Fatal(err)
			}
		})
	})
}

// TestStreamLeaderFailover shuts down the REFRESH stream leader of a 3-node cluster in
// the middle of a run; the stream is replicated on all three.
func TestStreamLeaderFailover(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{Latency: 10 * time.Millisecond, ClusterSize: 3, BatchSize: batch})
		runThroughNATSFault(t, env, 200, func() {
			leader := env.Cluster.StreamLeader("$G", stream.Stream)
			if leader == nil {
				t.Fatal("no stream leader")
			}
			t.Logf("shutting down stream leader %s", leader.Name())
			leader.Shutdown()
		})
	})
}
