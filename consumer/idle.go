package consumer

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/publisher"
)

// WaitIdle polls the shared durable until it has nothing pending, nothing awaiting an
// ack and nothing waiting for redelivery: every request published so far is finished.
func WaitIdle(ctx context.Context, js jetstream.JetStream, poll time.Duration) error {
	t := time.NewTicker(poll)
	defer t.Stop()
	var last *jetstream.ConsumerInfo
	for {
		cons, err := js.Consumer(ctx, publisher.Stream, Durable)
		if err == nil {
			info, err := cons.Info(ctx)
			if err == nil {
				if info.NumPending == 0 && info.NumAckPending == 0 && info.NumRedelivered == 0 {
					return nil
				}
				last = info
			}
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("waiting for the fleet: %w (pending %d, awaiting ack %d, redelivered %d)",
					ctx.Err(), last.NumPending, last.NumAckPending, last.NumRedelivered)
			}
			return fmt.Errorf("waiting for the fleet: %w", ctx.Err())
		case <-t.C:
		}
	}
}
