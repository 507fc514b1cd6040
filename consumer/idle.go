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
//
// Each look has its own deadline (idleLookTimeout): a request lost while a cluster
// elects a leader would otherwise hold ctx's whole time, and the error would show a
// state from before the loss.
func WaitIdle(ctx context.Context, js jetstream.JetStream, poll time.Duration) error {
	t := time.NewTicker(poll)
	defer t.Stop()
	var (
		target  uint64
		last    *jetstream.ConsumerInfo
		lastErr error
	)
	for {
		var (
			idle bool
			info *jetstream.ConsumerInfo
			err  error
		)
		lctx, cancel := context.WithTimeout(ctx, idleLookTimeout)
		if target == 0 {
			target, err = streamTarget(lctx, js)
			idle = err == nil && target == 0 // an empty stream
		}
		if err == nil && target != 0 {
			idle, info, err = fleetIdle(lctx, js, target)
		}
		cancel()
		if err == nil && idle {
			return nil
		}
		if info != nil {
			last, lastErr = info, nil
		}
		if err != nil {
			lastErr = err
		}
		select {
		case <-ctx.Done():
			return idleTimeout(ctx.Err(), target, last, lastErr)
		case <-t.C:
		}
	}
}

// idleLookTimeout bounds one look at the fleet's durables.
const idleLookTimeout = 5 * time.Second

// streamTarget is the stream's last sequence, or 0 if the stream holds nothing.
func streamTarget(ctx context.Context, js jetstream.JetStream) (uint64, error) {
	s, err := js.Stream(ctx, stream.Stream)
	if err != nil {
		return 0, err
	}
	info := s.CachedInfo() // as of the lookup just made: no second request
	if info.State.Msgs == 0 {
		return 0, nil
	}
	return max(info.State.LastSeq, 1), nil
}

// idleTimeout says how far the fleet got: the last busy durable seen, and the last
// error if the looks failed after it.
func idleTimeout(cause error, target uint64, last *jetstream.ConsumerInfo, lastErr error) error {
	var b strings.Builder
	if last != nil {
		leader := "none"
		if last.Cluster != nil && last.Cluster.Leader != "" {
			leader = last.Cluster.Leader
		}
		fmt.Fprintf(&b, "consumer %s on leader %s: ack floor %d of %d, pending %d, awaiting ack %d, redelivered %d, pulls waiting %d",
			last.Name, leader, last.AckFloor.Stream, target, last.NumPending, last.NumAckPending, last.NumRedelivered, last.NumWaiting)
	}
	if lastErr != nil {
		if b.Len() > 0 {
			b.WriteString("; then ")
		}
		fmt.Fprintf(&b, "last look failed: %v", lastErr)
	}
	if b.Len() == 0 {
		return fmt.Errorf("waiting for the fleet: %w", cause)
	}
	return fmt.Errorf("waiting for the fleet: %w (%s)", cause, b.String())
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
		info := cons.CachedInfo() // the lookup's answer: no second request
		if (name == Durable && info.AckFloor.Stream < target) || info.NumPending != 0 || info.NumAckPending != 0 || info.NumRedelivered != 0 {
			return false, info, nil
		}
	}
	if err := names.Err(); err != nil {
		return false, nil, err
	}
	return true, nil, nil
}
