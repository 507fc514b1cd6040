package consumer

import (
	"context"
	"log/slog"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/publisher"
)

// Dead-letter headers, set on every copy in REFRESH_DLQ. They are publisher's, which
// reads them back (dlq list, replay --dlq) and cannot import this package.
const (
	HeaderOriginalSubject = publisher.HeaderOriginalSubject
	HeaderReason          = publisher.HeaderReason
	HeaderDeliveries      = publisher.HeaderDeliveries
	HeaderStreamSeq       = publisher.HeaderStreamSeq
	HeaderDeadAt          = publisher.HeaderDeadAt
)

// DeadLetterID is the dedupe id of the dead-letter copy of the message at stream
// sequence seq: whoever copies it (a handler, a retry, the max-deliveries advisory
// listener), REFRESH_DLQ keeps one.
func DeadLetterID(seq uint64) string { return "dlq-" + strconv.FormatUint(seq, 10) }

// DeadLetterMsg builds the REFRESH_DLQ copy of a request: same headers, the subject
// prefixed with "dlq.", why it died, and the body, cut to publisher.DeadLetterBodyBytes
// (with its size in publisher.HeaderBodyTruncated) when longer.
func DeadLetterMsg(subject string, data []byte, hdr nats.Header, reason string, deliveries, seq uint64) *nats.Msg {
	dl := nats.NewMsg(publisher.DLQPrefix + subject)
	for k, vs := range hdr {
		if k == jetstream.MsgIDHeader || strings.HasPrefix(k, "Nats-") {
			continue
		}
		for _, v := range vs {
			dl.Header.Add(k, v)
		}
	}
	dl.Header.Set(jetstream.MsgIDHeader, DeadLetterID(seq))
	dl.Header.Set(HeaderOriginalSubject, subject)
	dl.Header.Set(HeaderReason, headerSafe(reason))
	dl.Header.Set(HeaderDeliveries, strconv.FormatUint(deliveries, 10))
	dl.Header.Set(HeaderStreamSeq, strconv.FormatUint(seq, 10))
	dl.Header.Set(HeaderDeadAt, time.Now().UTC().Format(time.RFC3339Nano))
	if len(data) > publisher.DeadLetterBodyBytes {
		dl.Header.Set(publisher.HeaderBodyTruncated, strconv.Itoa(len(data)))
		data = data[:publisher.DeadLetterBodyBytes]
	}
	dl.Data = data
	return dl
}

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
	dl := DeadLetterMsg(msg.Subject(), msg.Data(), msg.Headers(), reason, meta.NumDelivered, meta.Sequence.Stream)
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 10*time.Second)
	defer cancel()
	if _, err := c.js.PublishMsg(ctx, dl); err != nil {
		log.Error("dead-letter copy failed; will retry", "reason", reason, "error", err)
		_ = msg.NakWithDelay(c.cfg.backoff(meta.NumDelivered, 0))
		return Retried
	}
	_ = msg.TermWithReason(headerSafe(reason))
	return kind
}

// headerSafe keeps a reason on one printable line of bounded length.
func headerSafe(s string) string {
	if len(s) > 512 {
		s = s[:512]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}
