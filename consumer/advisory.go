package consumer

import (
	"context"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/stream"
)

// MaxDeliveriesSubject is where JetStream announces that a message of one of the
// fleet's durables ran out of deliveries without any handler settling it (for instance
// a process that crashes on it every time).
var MaxDeliveriesSubject = stream.MaxDeliveriesSubjects(stream.Stream)

// WatchMaxDeliveries copies every message the durable gives up on to REFRESH_DLQ with
// reason max_deliveries, until ctx ends. Every consume process watches; the copy's
// Nats-Msg-Id is derived from the stream sequence, so REFRESH_DLQ keeps exactly one
// copy however many processes (or a handler that dead-lettered it first) copy it.
func (c *Consumer) WatchMaxDeliveries(ctx context.Context, nc *nats.Conn) error {
	msgs := make(chan *nats.Msg, 256)
	sub, err := nc.ChanSubscribe(MaxDeliveriesSubject, msgs)
	if err != nil {
		return fmt.Errorf("subscribe to %s: %w", MaxDeliveriesSubject, err)
	}
	defer sub.Unsubscribe()
	for {
		select {
		case <-ctx.Done():
			return nil
		case m := <-msgs:
			adv, err := stream.ParseMaxDeliveriesAdvisory(m.Data)
			if err != nil {
				c.log.Warn("unreadable max-deliveries advisory", "error", err)
				continue
			}
			if err := c.copyExhausted(ctx, adv); err != nil {
				c.log.Error("could not dead-letter a message that ran out of deliveries", "stream_seq", adv.StreamSeq, "error", err)
			}
		}
	}
}

// copyExhausted fetches the original message by sequence and dead-letters it.
func (c *Consumer) copyExhausted(ctx context.Context, adv stream.MaxDeliveriesAdvisory) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	s, err := c.js.Stream(ctx, stream.Stream)
	if err != nil {
		return err
	}
	orig, err := s.GetMsg(ctx, adv.StreamSeq)
	if err != nil {
		return fmt.Errorf("fetch message %d: %w", adv.StreamSeq, err)
	}
	dl := stream.DeadLetterMsg(orig.Subject, orig.Data, orig.Header,
		fmt.Sprintf("max_deliveries: delivered %d times without being settled", adv.Deliveries), adv.Deliveries, adv.StreamSeq)
	ack, err := c.js.PublishMsg(ctx, dl)
	if err != nil {
		return fmt.Errorf("copy message %d to %s: %w", adv.StreamSeq, stream.DLQStream, err)
	}
	c.log.Debug("max-deliveries advisory handled", "stream_seq", adv.StreamSeq, "duplicate", ack.Duplicate)
	c.observer.MaxDeliveriesCopied(adv.StreamSeq, ack.Duplicate)
	if !ack.Duplicate {
		c.stats.add(DeadLettered)
		key, _ := model.ParseSubject(orig.Subject)
		c.observer.MessageDone(key.Service, DeadLettered, 0)
		c.log.Warn("dead-lettered", "subject", orig.Subject, "stream_seq", adv.StreamSeq, "reason", "max_deliveries", "delivery", adv.Deliveries)
	}
	return nil
}
