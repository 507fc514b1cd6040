package consumer

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/stream"
)

// WaitIdle polls the fleet's durables until every request stored before the call is
// settled: the shared durable's ack floor has reached the stream's last sequence as of
// the call, and no durable has anything pending, awaiting an ack or waiting for
// redelivery. (The pending count
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
		idle, info, err := fleetIdle(ctx, js, target)
		if err == nil && idle {
			return nil
		}
		if info != nil {
			last = info
		}
		select {
		case <-ctx.Done():
			if last != nil {
				leader := "none"
				if last.Cluster != nil && last.Cluster.Leader != "" {
					leader = last.Cluster.Leader
				}
				return fmt.Errorf("waiting for the fleet: %w (consumer %s on leader %s: ack floor %d of %d, pending %d, awaiting ack %d, redelivered %d, pulls waiting %d)",
					ctx.Err(), last.Name, leader, last.AckFloor.Stream, target, last.NumPending, last.NumAckPending, last.NumRedelivered, last.NumWaiting)
			}
			return fmt.Errorf("waiting for the fleet: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// fleetIdle reports whether the shared durable has seen every request up to target
// and no durable of the fleet has any request pending, awaiting an ack or waiting for
// redelivery; busy is the first durable found busy.
func fleetIdle(ctx context.Context, js jetstream.JetStream, target uint64) (idle bool, busy *jetstream.ConsumerInfo, err error) {
	s, err := js.Stream(ctx, stream.Stream)
	if err != nil {
		return false, nil, err
	}
	names := s.ConsumerNames(ctx)
	for name := range names.Name() {
		if name != Durable && !strings.HasPrefix(name, Durable+"-") {
			continue
		}
		cons, err := s.Consumer(ctx, name)
		if err != nil {
			return false, nil, err
		}
		info, err := cons.Info(ctx)
		if err != nil {
			return false, nil, err
		}
		if (name == Durable && info.AckFloor.Stream < target) || info.NumPending != 0 || info.NumAckPending != 0 || info.NumRedelivered != 0 {
			return false, info, nil
		}
	}
	if err := names.Err(); err != nil {
		return false, nil, err
	}
	return true, nil, nil
}
