package consumer

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/stream"
)

// WaitIdle polls the shared durable until every request stored before the call is
// settled: its ack floor has reached the stream's last sequence as of the call, and
// nothing is pending, awaiting an ack or waiting for redelivery. (The pending count
// alone is not enough: the server counts a just-stored message toward it only after
// the publish was acknowledged.)
func WaitIdle(ctx context.Context, js jetstream.JetStream, poll time.Duration) error {
	t := time.NewTicker(poll)
	defer t.Stop()
	var target uint64
	for target == 0 {
		s, err := js.Stream(ctx, stream.Stream)
		if err == nil {
			var info *jetstream.StreamInfo
			if info, err = s.Info(ctx); err == nil {
				target = max(info.State.LastSeq, 1)
				if info.State.Msgs == 0 {
					return nil
				}
			}
		}
		if err != nil {
			select {
			case <-ctx.Done():
				return fmt.Errorf("waiting for the fleet: %w (last error: %w)", ctx.Err(), err)
			case <-t.C:
			}
		}
	}
	var last *jetstream.ConsumerInfo
	for {
		cons, err := js.Consumer(ctx, stream.Stream, Durable)
		if err == nil {
			info, err := cons.Info(ctx)
			if err == nil {
				if info.AckFloor.Stream >= target && info.NumPending == 0 && info.NumAckPending == 0 && info.NumRedelivered == 0 {
					return nil
				}
				last = info
			}
		}
		select {
		case <-ctx.Done():
			if last != nil {
				return fmt.Errorf("waiting for the fleet: %w (ack floor %d of %d, pending %d, awaiting ack %d, redelivered %d)",
					ctx.Err(), last.AckFloor.Stream, target, last.NumPending, last.NumAckPending, last.NumRedelivered)
			}
			return fmt.Errorf("waiting for the fleet: %w", ctx.Err())
		case <-t.C:
		}
	}
}
