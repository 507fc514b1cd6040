package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/provider"
)

// Outcome is what handling one message came to.
type Outcome string

// Outcomes, as counted in Stats and logged.
const (
	Refreshed      Outcome = "refreshed"
	SkippedFresh   Outcome = "skipped_fresh"
	SkippedReauth  Outcome = "skipped_reauth"
	ReauthRequired Outcome = "reauth_required"
	NotFound       Outcome = "not_found"
	Retried        Outcome = "retried"
	DeadLettered   Outcome = "dead_lettered"
	Malformed      Outcome = "malformed"
	Interrupted    Outcome = "interrupted"
)

// request is a parsed refresh message.
type request struct {
	key         model.Key
	requestedAt time.Time
	reason      string
}

// parseRequest turns a message into a request or says why it is not one.
func parseRequest(subject string, data []byte, header string, hasHeader bool, stored time.Time) (request, error) {
	key, err := model.ParseSubject(subject)
	if err != nil {
		return request{}, err
	}
	body, err := model.ParseBody(data)
	if err != nil {
		return request{}, err
	}
	at, err := model.RequestTime(header, hasHeader, body, stored)
	if err != nil {
		return request{}, err
	}
	return request{key: key, requestedAt: at, reason: body.Reason}, nil
}

// handle takes one message to exactly one of ack, nak with delay, or terminate, and
// logs and counts the outcome once.
func (c *Consumer) handle(msg jetstream.Msg) {
	start := time.Now()
	c.observer.InFlight(1)
	defer c.observer.InFlight(-1)
	meta, err := msg.Metadata()
	if err != nil {
		// Not a JetStream delivery: nothing to ack or redeliver.
		c.log.Error("message without JetStream metadata", "subject", msg.Subject(), "error", err)
		return
	}
	log := c.log.With("subject", msg.Subject(), "delivery", meta.NumDelivered, "stream_seq", meta.Sequence.Stream)
	outcome, key, err := c.process(msg, meta, log)
	d := time.Since(start)
	c.stats.add(outcome)
	c.observer.MessageDone(key.Service, outcome, d)
	if key.ID != 0 {
		log = log.With("service", key.Service, "id", key.ID)
	}
	log = log.With("outcome", outcome, "duration", d.Round(time.Microsecond))
	switch outcome {
	case Refreshed, SkippedFresh, SkippedReauth:
		log.Info("done")
	case NotFound:
		log.Info("no such credential (deleted?)")
	case ReauthRequired:
		log.Warn("provider refused the grant; credential needs the user to sign in again", "error", err)
	case Interrupted:
		log.Info("shutting down before the provider call; returned to the stream")
	case Retried:
		log.Warn("will retry", "error", err)
	case Malformed, DeadLettered:
		log.Warn("dead-lettered", "reason", err)
	}
}

// process parses, refreshes and settles one message. It returns the outcome, the
// credential (zero when the request did not parse) and the error behind a failure.
func (c *Consumer) process(msg jetstream.Msg, meta *jetstream.MsgMetadata, log *slog.Logger) (Outcome, model.Key, error) {
	hdr := msg.Headers()
	header, hasHeader := "", false
	if vals := hdr.Values(model.HeaderRequestedAt); len(vals) > 0 {
		header, hasHeader = vals[0], true
	}
	req, err := parseRequest(msg.Subject(), msg.Data(), header, hasHeader, meta.Timestamp)
	if err != nil {
		return c.deadLetter(msg, meta, Malformed, err, log), model.Key{}, err
	}
	prov, ok := c.providers[req.key.Service]
	if !ok {
		err := fmt.Errorf("unknown service %q", req.key.Service)
		return c.deadLetter(msg, meta, Malformed, err, log), model.Key{}, err
	}

	stopKeepAlive := c.keepAlive(msg)
	outcome, err := c.refresh(req, prov, meta.NumDelivered)
	stopKeepAlive()

	switch outcome {
	case Refreshed, SkippedFresh, SkippedReauth, NotFound:
		// Acked only now, after the commit: a crash before this line redelivers, and the
		// skip rule turns the redelivery into a no-op.
		if aerr := msg.DoubleAck(context.Background()); aerr != nil {
			log.Warn("ack after commit failed; the redelivery will be skipped", "error", aerr)
		}
	case ReauthRequired:
		_ = msg.TermWithReason("invalid_grant")
	case Interrupted:
		_ = msg.Nak()
	default: // Retried
		if meta.NumDelivered >= uint64(c.cfg.MaxDeliver) {
			return c.deadLetter(msg, meta, DeadLettered, err, log), req.key, err
		}
		delay := c.cfg.backoff(meta.NumDelivered, provider.RetryAfter(err))
		var pe *pendingError
		if errors.As(err, &pe) {
			delay = pe.wait
		}
		_ = msg.NakWithDelay(delay)
		err = fmt.Errorf("%w (retry in %s)", err, delay)
	}
	return outcome, req.key, err
}

// keepAlive tells the server the message is still being worked on, so a slow provider
// call does not let AckWait expire and hand the message to another process.
func (c *Consumer) keepAlive(msg jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(c.cfg.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				_ = msg.InProgress()
			}
		}
	}()
	return func() { close(done) }
}

// errOf keeps the last error compact for the credentials.last_error column.
func errOf(err error) string {
	var te *provider.TransientError
	if errors.As(err, &te) {
		return te.Error()
	}
	s := err.Error()
	if len(s) > 200 {
		s = s[:200]
	}
	return s
}
