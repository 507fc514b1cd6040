package consumer

import (
	"context"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/stream"
)

// deadLetter copies msg to REFRESH_DLQ, then terminates it, and returns kind. The
// copy is stored first: if that fails the message is nak'ed (outcome Retried), never
// terminated without a copy.
func (c *Consumer) deadLetter(ctx context.Context, msg jetstream.Msg, meta *jetstream.MsgMetadata, kind Outcome, cause error, log *slog.Logger) Outcome {
	reason := cause.Error()
	if kind == Malformed {
		reason = "malformed: " + reason
	} else {
		reason = "retried: " + reason
	}
	dl := stream.DeadLetterMsg(msg.Subject(), msg.Data(), msg.Headers(), reason, meta.NumDelivered, meta.Sequence.Stream)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := c.js.PublishMsg(ctx, dl); err != nil {
		log.Error("dead-letter copy failed; will retry", "reason", reason, "error", err)
		_ = msg.NakWithDelay(c.cfg.backoff(meta.NumDelivered, 0))
		return Retried
	}
	c.terminate(msg, dl.Header.Get(stream.HeaderReason)) // as cut for a header
	return kind
}
