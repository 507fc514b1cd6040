package consumer_test

import (
	"context"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/natstest"
	"github.com/refresher/refresher/stream"
)

// TestWaitIdleSurvivesALostReply: a JetStream API reply lost on the way (as around a
// cluster's leader election) costs WaitIdle one look, not the caller's whole wait.
// The API requests go through a relay in front of the real server's API that drops
// the first one.
func TestWaitIdleSurvivesALostReply(t *testing.T) {
	if testing.Short() {
		t.Skip("needs a nats-server")
	}
	t.Parallel()
	nc, js := natstest.Connect(t, natstest.Start(t).URL())
	ctx := context.Background()
	if err := stream.EnsureStreams(ctx, js, stream.DefaultStreamConfig()); err != nil {
		t.Fatal(err)
	}
	const relayPrefix = "$JS.RELAY.API"
	var dropped, relayed atomic.Int64
	sub, err := nc.Subscribe(relayPrefix+".>", func(m *nats.Msg) {
		if dropped.Load() == 0 {
			dropped.Add(1)
			return
		}
		relayed.Add(1)
		_ = nc.PublishMsg(&nats.Msg{Subject: "$JS.API" + strings.TrimPrefix(m.Subject, relayPrefix), Reply: m.Reply, Data: m.Data})
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })
	relay, err := jetstream.NewWithAPIPrefix(nc, relayPrefix)
	if err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	start := time.Now()
	if err := consumer.WaitIdle(wctx, relay, 20*time.Millisecond); err != nil {
		t.Fatalf("after %d lost and %d relayed requests: %v", dropped.Load(), relayed.Load(), err)
	}
	if dropped.Load() != 1 || relayed.Load() == 0 {
		t.Fatalf("%d requests dropped, %d relayed: the relay was not in the way", dropped.Load(), relayed.Load())
	}
	t.Logf("idle after one lost reply in %s", time.Since(start).Round(time.Millisecond))
}
