package consumer

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/stream"
)

// OldestRequest returns when the oldest request of service that its durable has not
// acknowledged was stored (ok false: none is waiting). While a provider is paused or
// its circuit open, requests wait in the stream, and the stream drops them once they
// are older than its MaxAge: this is how close that is.
func OldestRequest(ctx context.Context, js jetstream.JetStream, service string) (at time.Time, ok bool, err error) {
	cons, err := js.Consumer(ctx, stream.Stream, ServiceDurable(service))
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("consumer %s: %w", ServiceDurable(service), err)
	}
	info, err := cons.Info(ctx)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("consumer %s info: %w", ServiceDurable(service), err)
	}
	if info.NumPending == 0 && info.NumAckPending == 0 {
		return time.Time{}, false, nil
	}
	s, err := js.Stream(ctx, stream.Stream)
	if err != nil {
		return time.Time{}, false, fmt.Errorf("stream %s: %w", stream.Stream, err)
	}
	// The first request of the service past the ack floor is not acknowledged.
	m, err := s.GetMsg(ctx, info.AckFloor.Stream+1, jetstream.WithGetMsgSubject(stream.ServiceRequests(service)))
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return time.Time{}, false, nil
	}
	if err != nil {
		return time.Time{}, false, fmt.Errorf("oldest request of %s: %w", service, err)
	}
	return m.Time, true, nil
}

// backlogObserver is an Observer that also records how old the oldest waiting
// request of each service is (internal/metrics does).
type backlogObserver interface {
	BacklogAge(service string, age, maxAge time.Duration)
}

// backlogEvery is how often watchBacklog looks.
const backlogEvery = 15 * time.Second

// watchBacklog records the age of each service's oldest waiting request, and warns
// once when it passes half the stream's retention: requests are about to be dropped
// (a long outage or pause), and `refresher dlq`/`replay` cannot bring back what the
// stream no longer has.
func (c *Consumer) watchBacklog(ctx context.Context) {
	warned := map[string]bool{}
	t := time.NewTicker(backlogEvery)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		maxAge := c.streams.MaxAge
		if s, err := c.js.Stream(ctx, stream.Stream); err == nil {
			maxAge = s.CachedInfo().Config.MaxAge
		}
		for name := range c.providers {
			at, ok, err := OldestRequest(ctx, c.js, name)
			if err != nil {
				continue
			}
			var age time.Duration
			if ok {
				age = time.Since(at)
			}
			if o, isB := c.observer.(backlogObserver); isB {
				o.BacklogAge(name, age, maxAge)
			}
			switch old := maxAge > 0 && age > maxAge/2; {
			case old && !warned[name]:
				warned[name] = true
				c.log.Warn("requests have waited more than half the stream's retention; the stream drops them at its max age",
					"service", name, "oldest_age", age.Round(time.Second), "stream_max_age", maxAge, "circuit", c.limitState(name))
			case !old && warned[name]:
				warned[name] = false
				c.log.Info("requests waiting are younger than half the stream's retention again", "service", name, "oldest_age", age.Round(time.Second))
			}
		}
	}
}

// limitState names a service's circuit as this process sees it.
func (c *Consumer) limitState(service string) string {
	st, _ := c.lim.fleet.Snapshot(service)
	return st.Circuit.String()
}
