package status

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/stream"
)

const requestStream = stream.Stream

// StreamReport is one stream's state.
type StreamReport struct {
	Name string `json:"name"`
	// Exists is false until a publish or consume process has created the stream.
	Exists   bool   `json:"exists"`
	Messages uint64 `json:"messages"`
	Bytes    uint64 `json:"bytes"`
	// FirstTime and LastTime are when the oldest and newest messages were stored; null
	// when the stream is empty.
	FirstTime *time.Time `json:"first_time"`
	LastTime  *time.Time `json:"last_time"`
}

// ConsumerReport is the shared durable's state: what the fleet has yet to do.
type ConsumerReport struct {
	Stream string `json:"stream"`
	Name   string `json:"name"`
	// Exists is false until a consume process has created the durable.
	Exists bool `json:"exists"`
	// Pending requests are stored but not yet delivered to any consumer process.
	Pending uint64 `json:"pending"`
	// AckPending requests are delivered and not yet acknowledged: in progress, or
	// waiting for a redelivery after a nak.
	AckPending int `json:"ack_pending"`
	// Redelivered requests were delivered more than once and are not yet acknowledged.
	Redelivered int `json:"redelivered"`
	// WaitingPulls are the open pull requests. A pull consumer has no count of bound
	// clients; each consume process with spare capacity keeps at least one pull open,
	// so zero while requests are pending means no process is fetching.
	WaitingPulls int `json:"waiting_pulls"`
	// LastDelivered and LastAcked are when the fleet last took and finished a request;
	// null if never, or if unknown (below).
	LastDelivered *time.Time `json:"last_delivered"`
	LastAcked     *time.Time `json:"last_acked"`
	// LastDeliveredUnknown and LastAckedUnknown say the consumer has delivered (acked)
	// requests but the server does not know when: it keeps these times in memory only,
	// so they are lost when it restarts, until the next delivery (ack).
	LastDeliveredUnknown bool `json:"last_delivered_unknown"`
	LastAckedUnknown     bool `json:"last_acked_unknown"`
}

// streamReport reads name's state; a missing stream is Exists false.
func streamReport(ctx context.Context, js jetstream.JetStream, name string) (StreamReport, error) {
	rep, _, err := streamState(ctx, js, name)
	return rep, err
}

// streamState is streamReport with the state it was made from, for a further read
// that must agree with it.
func streamState(ctx context.Context, js jetstream.JetStream, name string) (StreamReport, jetstream.StreamState, error) {
	rep := StreamReport{Name: name}
	s, err := js.Stream(ctx, name)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return rep, jetstream.StreamState{}, nil
	}
	if err != nil {
		return rep, jetstream.StreamState{}, fmt.Errorf("look up stream %s: %w", name, err)
	}
	info, err := s.Info(ctx)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return rep, jetstream.StreamState{}, nil // deleted between the two calls
	}
	if err != nil {
		return rep, jetstream.StreamState{}, fmt.Errorf("stream %s info: %w", name, err)
	}
	st := info.State
	rep.Exists = true
	rep.Messages, rep.Bytes = st.Msgs, st.Bytes
	if st.Msgs > 0 {
		rep.FirstTime, rep.LastTime = utc(st.FirstTime), utc(st.LastTime)
	}
	return rep, st, nil
}

// consumerReport reads the fleet's shared durable; without the stream there is none.
func consumerReport(ctx context.Context, js jetstream.JetStream, streamExists bool) (ConsumerReport, error) {
	if !streamExists {
		return ConsumerReport{Stream: requestStream, Name: consumer.Durable}, nil
	}
	return durableReport(ctx, js, consumer.Durable)
}

// durableReport reads one durable of REFRESH.
func durableReport(ctx context.Context, js jetstream.JetStream, name string) (ConsumerReport, error) {
	rep := ConsumerReport{Stream: requestStream, Name: name}
	c, err := js.Consumer(ctx, requestStream, name)
	if errors.Is(err, jetstream.ErrConsumerNotFound) || errors.Is(err, jetstream.ErrStreamNotFound) {
		return rep, nil
	}
	if err != nil {
		return rep, fmt.Errorf("look up consumer %s on %s: %w", name, requestStream, err)
	}
	info, err := c.Info(ctx)
	if errors.Is(err, jetstream.ErrConsumerNotFound) {
		return rep, nil
	}
	if err != nil {
		return rep, fmt.Errorf("consumer %s info: %w", name, err)
	}
	rep.Exists = true
	rep.Pending = info.NumPending
	rep.AckPending = info.NumAckPending
	rep.Redelivered = info.NumRedelivered
	rep.WaitingPulls = info.NumWaiting
	if info.Delivered.Last != nil {
		rep.LastDelivered = utc(*info.Delivered.Last)
	} else {
		rep.LastDeliveredUnknown = info.Delivered.Consumer > 0
	}
	if info.AckFloor.Last != nil {
		rep.LastAcked = utc(*info.AckFloor.Last)
	} else {
		rep.LastAckedUnknown = info.AckFloor.Consumer > 0
	}
	return rep, nil
}

func utc(t time.Time) *time.Time {
	t = t.UTC()
	return &t
}
