package consumer

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.opentelemetry.io/otel/trace"

	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/provider"
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

// ackConfirmTimeout bounds the wait for the server to confirm an ack.
const ackConfirmTimeout = 2 * time.Second

// job is one message on its way through the consumer.
type job struct {
	msg  jetstream.Msg
	meta *jetstream.MsgMetadata
	// delivered is the message's delivery count (1 for RefreshNow).
	delivered uint64
	req       request
	prov      provider.Refresher
	start     time.Time
	log       *slog.Logger
	outcome   Outcome
	err       error
	// ctx and span are the message's trace (trace.go); nil for RefreshNow.
	ctx  context.Context
	span trace.Span
}

// handle takes one message to exactly one of ack, nak with delay, or terminate.
func (c *Consumer) handle(ctx context.Context, msg jetstream.Msg) {
	// A message's work is its own: it outlives Run's ctx (the drain finishes it), so
	// nothing above it is there to cancel it.
	j, ok := c.prepare(ctx, msg)
	if !ok {
		return
	}
	stop := c.keepAlive(msg)
	g := newGroup(j)
	if c.enter(j.ctx, g) {
		c.refreshGroup(j.ctx, g)
	}
	c.leaveCalls(g)
	g.returnPermit()
	stop()
	c.respond(j)
}

// enter waits for the group's permit (limits) and a place among the calls in flight
// (REFRESHER_CONCURRENCY), in that order: a request of a paused service holds no
// place another service could use. A group that shutdown stops before it is settled
// Interrupted.
func (c *Consumer) enter(ctx context.Context, g *group) bool {
	if err := c.admit(ctx, g); err != nil {
		g.setOutcome(Interrupted, nil)
		return false
	}
	return c.enterCalls(g)
}

// enterCalls takes the group's place among the calls in flight (g.inCalls), waiting
// for one; shutdown ends the wait except on a message's last delivery.
func (c *Consumer) enterCalls(g *group) bool {
	if c.tryEnterCalls(g) {
		return true
	}
	select {
	case c.calls <- struct{}{}:
	case <-c.stopping:
		if g.lead.delivered < uint64(c.cfg.MaxDeliver) {
			g.setOutcome(Interrupted, nil)
			return false
		}
		c.calls <- struct{}{} // the last delivery is worked through
	}
	g.inCalls = true
	return true
}

// tryEnterCalls takes a place among the calls in flight if one is free at once (or
// the group has one). A batch waits for its first group's place only: waiting for
// more while holding one would let batches deadlock on REFRESHER_CONCURRENCY.
func (c *Consumer) tryEnterCalls(g *group) bool {
	if g.inCalls {
		return true
	}
	select {
	case c.calls <- struct{}{}:
		g.inCalls = true
		return true
	default:
		return false
	}
}

// leaveCalls frees the group's place among the calls in flight, if it has one.
func (c *Consumer) leaveCalls(g *group) {
	if g.inCalls {
		g.inCalls = false
		<-c.calls
	}
}

// prepare parses a message. A message that is not a valid request is dead-lettered
// and answered here, and ok is false.
func (c *Consumer) prepare(ctx context.Context, msg jetstream.Msg) (j *job, ok bool) {
	c.observer.InFlight(1)
	j = &job{msg: msg, start: time.Now()}
	meta, err := msg.Metadata()
	if err != nil {
		// Not a JetStream delivery: nothing to ack or redeliver.
		c.observer.InFlight(-1)
		c.log.Error("message without JetStream metadata", "subject", msg.Subject(), "error", err)
		return nil, false
	}
	j.meta, j.delivered = meta, meta.NumDelivered
	j.log = c.log.With("subject", msg.Subject(), "delivery", meta.NumDelivered, "stream_seq", meta.Sequence.Stream)
	j.startMessageSpan(ctx, msg.Subject(), msg.Headers(), meta.Sequence.Stream)
	header, hasHeader, err := model.RequestedAtHeader(msg.Headers().Values(model.HeaderRequestedAt))
	if err == nil {
		j.req, err = parseRequest(msg.Subject(), msg.Data(), header, hasHeader, meta.Timestamp)
	}
	if err == nil {
		if j.prov, ok = c.providers[j.req.key.Service]; !ok {
			err = fmt.Errorf("unknown service %q", j.req.key.Service)
		}
	}
	if err != nil {
		j.req = request{}
		j.outcome, j.err = Malformed, err
		c.respond(j)
		return nil, false
	}
	return j, true
}

// respond answers a job's message by its outcome (ack, terminate, nak or
// dead-letter), then logs and counts it once.
func (c *Consumer) respond(j *job) {
	defer c.observer.InFlight(-1)
	defer j.endMessageSpan()
	ack := false
	switch j.outcome {
	case Refreshed, SkippedFresh, SkippedReauth, NotFound:
		ack = true // last, once counted: whoever sees the ack sees the count
	case ReauthRequired:
		c.terminate(j.msg, "invalid_grant")
	case Interrupted:
		_ = j.msg.Nak()
	case Malformed:
		j.outcome = c.deadLetter(j.ctx, j.msg, j.meta, Malformed, j.err, j.log)
	default: // Retried
		if j.meta.NumDelivered >= uint64(c.cfg.MaxDeliver) {
			j.outcome = c.deadLetter(j.ctx, j.msg, j.meta, DeadLettered, j.err, j.log)
			break
		}
		delay := c.cfg.backoff(j.meta.NumDelivered, provider.RetryAfter(j.err))
		_ = j.msg.NakWithDelay(delay)
		j.err = fmt.Errorf("%w (retry in %s)", j.err, delay)
	}

	d := time.Since(j.start)
	c.stats.add(j.outcome)
	if j.outcome == SkippedFresh || j.outcome == SkippedReauth {
		c.skips.add(j.req.key.Service, time.Now())
	}
	c.observer.MessageDone(j.req.key.Service, j.outcome, d)
	log := j.log
	if j.req.key.ID != 0 {
		log = log.With("service", j.req.key.Service, "id", j.req.key.ID)
	}
	log = log.With("outcome", j.outcome, "duration", d.Round(time.Microsecond))
	switch j.outcome {
	case Refreshed, SkippedFresh, SkippedReauth:
		log.Info("done")
	case NotFound:
		log.Info("no such credential (deleted?)")
	case ReauthRequired:
		log.Warn("provider refused the grant; credential needs the user to sign in again", "error", j.err)
	case Interrupted:
		log.Info("shutting down before the provider call; returned to the stream")
	case Retried:
		log.Warn("will retry", "error", j.err)
	case Malformed, DeadLettered:
		log.Warn("dead-lettered", "reason", j.err)
	}
	if ack {
		// Acked only now, after the commit: a crash before this line redelivers, and the
		// skip rule turns the redelivery into a no-op.
		// Bounded well below any drain timeout: a lost ack confirmation (a server
		// failing over) only means a redelivery, which the skip rule answers.
		actx, cancel := context.WithTimeout(context.WithoutCancel(j.ctx), ackConfirmTimeout)
		aerr := j.msg.DoubleAck(actx)
		cancel()
		if aerr != nil {
			log.Warn("ack after commit failed; the redelivery will be skipped", "error", aerr)
		}
	}
}

// keepAlive tells the server the message is still being worked on, so a slow provider
// call does not let AckWait expire and hand the message to another process.
func (c *Consumer) keepAlive(msgs ...jetstream.Msg) (stop func()) {
	done := make(chan struct{})
	go func() {
		t := time.NewTicker(c.cfg.AckWait / 3)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				for _, m := range msgs {
					_ = m.InProgress()
				}
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
