// Package publisher turns "these credentials need a refresh" into one durable JetStream
// message per row: from a scan of the table by keyset pages, or from application code.
// It never holds rows in memory, only a bounded window of in-flight publishes.
package publisher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/refresher/refresher/model"
)

// ErrNotPublished is returned when some messages were not acknowledged by the stream
// after every retry. The Result says how many.
var ErrNotPublished = errors.New("not published")

// Result counts what happened to each message of a publish run.
type Result struct {
	// Published were stored by the stream.
	Published int
	// Duplicate were acknowledged as already stored (same Nats-Msg-Id in the window):
	// another publisher of the same schedule got there first.
	Duplicate int
	// Failed were never acknowledged, after retries.
	Failed int
}

// Total is every message attempted.
func (r Result) Total() int { return r.Published + r.Duplicate + r.Failed }

func (r *Result) add(o Result) {
	r.Published += o.Published
	r.Duplicate += o.Duplicate
	r.Failed += o.Failed
}

// Publisher publishes refresh requests.
type Publisher struct {
	js          jetstream.JetStream
	window      time.Duration
	maxInFlight int
	retries     int
	ackTimeout  time.Duration
	reason      string
	now         func() time.Time
	log         *slog.Logger
	progress    func(Result)
}

// Option configures a Publisher.
type Option func(*Publisher)

// WithWindow sets the schedule period that dedupe ids are built from (default 15m).
// Publishers that share a window publish each row once per window. Zero disables the
// dedupe id, so every call is a distinct request.
func WithWindow(d time.Duration) Option { return func(p *Publisher) { p.window = d } }

// WithMaxInFlight bounds how many publishes await their ack at once (default 1024).
func WithMaxInFlight(n int) Option { return func(p *Publisher) { p.maxInFlight = n } }

// WithRetries sets how many times a failed publish is retried (default 5).
func WithRetries(n int) Option { return func(p *Publisher) { p.retries = n } }

// WithAckTimeout bounds the wait for one publish ack (default 5s).
func WithAckTimeout(d time.Duration) Option { return func(p *Publisher) { p.ackTimeout = d } }

// WithReason adds {"reason": reason} as the body of every message.
func WithReason(reason string) Option { return func(p *Publisher) { p.reason = reason } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(p *Publisher) { p.log = l } }

// WithProgress is called with running counts as acks arrive (for terminal progress).
func WithProgress(fn func(Result)) Option { return func(p *Publisher) { p.progress = fn } }

// WithClock replaces time.Now, for tests of window boundaries.
func WithClock(now func() time.Time) Option { return func(p *Publisher) { p.now = now } }

// New returns a Publisher on nc. It creates its own JetStream context so that its
// async-publish limits do not leak into the caller's.
func New(nc *nats.Conn, opts ...Option) (*Publisher, error) {
	p := &Publisher{
		window:      15 * time.Minute,
		maxInFlight: 1024,
		retries:     5,
		ackTimeout:  5 * time.Second,
		now:         time.Now,
		log:         slog.Default(),
	}
	for _, o := range opts {
		o(p)
	}
	if p.maxInFlight < 1 {
		return nil, fmt.Errorf("max in-flight %d: must be at least 1", p.maxInFlight)
	}
	if p.window < 0 {
		return nil, fmt.Errorf("window %s: must not be negative", p.window)
	}
	if p.window > 0 && p.window < time.Second {
		// Dedupe ids name the window start to the second: two sub-second windows in one
		// second would share ids, and the second one's requests would be dropped.
		return nil, fmt.Errorf("window %s: must be 0 (no dedupe) or at least 1s", p.window)
	}
	if len(p.reason) > model.MaxReasonLen {
		return nil, fmt.Errorf("reason is %d bytes: at most %d", len(p.reason), model.MaxReasonLen)
	}
	js, err := jetstream.New(nc,
		// The library's own window is a little above ours so that our semaphore, not
		// its stall timer, is what bounds memory.
		jetstream.WithPublishAsyncMaxPending(p.maxInFlight+1),
		jetstream.WithPublishAsyncTimeout(p.ackTimeout),
	)
	if err != nil {
		return nil, fmt.Errorf("jetstream: %w", err)
	}
	p.js = js
	return p, nil
}

// JetStream returns the publisher's JetStream context.
func (p *Publisher) JetStream() jetstream.JetStream { return p.js }

// WindowStart is the start of the schedule period containing t.
func (p *Publisher) WindowStart(t time.Time) time.Time {
	if p.window <= 0 {
		return t
	}
	return t.UTC().Truncate(p.window)
}

// MsgID is the dedupe id of key's request in the window starting at start.
func MsgID(key model.Key, start time.Time) string {
	return key.Subject() + "@" + start.UTC().Format(time.RFC3339)
}

// Publish requests a refresh of each id of service, waits for every ack and returns
// the counts; an error wraps ErrNotPublished if any message was not stored.
func (p *Publisher) Publish(ctx context.Context, service string, ids ...int64) (Result, error) {
	if err := model.ValidateService(service); err != nil {
		return Result{}, err
	}
	for _, id := range ids {
		if id <= 0 {
			return Result{}, fmt.Errorf("id %d: must be positive", id)
		}
	}
	i := 0
	next := func() (int64, bool) {
		if i >= len(ids) {
			return 0, false
		}
		i++
		return ids[i-1], true
	}
	return p.publishAll(ctx, service, next)
}

// request builds the message for key; start is the window of this run.
func (p *Publisher) request(key model.Key, start time.Time) *nats.Msg {
	msg := nats.NewMsg(key.Subject())
	if p.window > 0 {
		msg.Header.Set(jetstream.MsgIDHeader, MsgID(key, start))
	}
	if p.reason != "" {
		msg.Data, _ = json.Marshal(model.Body{Reason: p.reason})
	}
	return msg
}

// publishAll publishes one request per id from next, all in one window computed once,
// so a run that straddles a boundary still dedupes against its twin.
func (p *Publisher) publishAll(ctx context.Context, service string, next func() (int64, bool)) (Result, error) {
	start := p.WindowStart(p.now())
	return p.publishMsgs(ctx, func() (*nats.Msg, bool) {
		id, ok := next()
		if !ok {
			return nil, false
		}
		return p.request(model.Key{Service: service, ID: id}, start), true
	})
}

// publishMsgs is the bounded async pipeline every publish path goes through: up to
// maxInFlight messages await their acks, in a channel that one collector drains in
// publish order (acks come back in about that order); a message whose async publish
// fails is retried synchronously with the same Nats-Msg-Id (so a retry of a message
// that was in fact stored is acknowledged as a duplicate, not stored twice). Memory is
// the window, whatever the number of messages: no goroutine or buffer per message.
func (p *Publisher) publishMsgs(ctx context.Context, next func() (*nats.Msg, bool)) (Result, error) {
	type inflight struct {
		msg *nats.Msg
		fut jetstream.PubAckFuture
		err error
	}
	var res Result // the collector's until it is done
	dropped := 0   // publishes never handed to the collector (interrupted)
	window := make(chan inflight, p.maxInFlight)
	collected := make(chan struct{})
	go func() {
		defer close(collected)
		// Once a message has failed every retry, the stream is unreachable: the rest
		// get one attempt each instead of the whole schedule, so a run against a dead
		// server ends in seconds, reporting every message it could not store.
		retries := p.retries
		for f := range window {
			var ack *jetstream.PubAck
			err := f.err
			if err == nil {
				select {
				case ack = <-f.fut.Ok():
				case err = <-f.fut.Err():
				case <-ctx.Done():
					err = ctx.Err()
				}
			}
			if err != nil {
				if ack, err = p.retry(ctx, f.msg, err, retries); err != nil {
					p.log.Warn("publish failed", "subject", f.msg.Subject, "error", err)
					retries = min(retries, 1)
				} else {
					retries = p.retries
				}
			}
			switch {
			case err != nil:
				res.Failed++
			case ack.Duplicate:
				res.Duplicate++
			default:
				res.Published++
			}
			if p.progress != nil {
				p.progress(res)
			}
		}
	}()
	for ctx.Err() == nil {
		msg, ok := next()
		if !ok {
			break
		}
		fut, err := p.js.PublishMsgAsync(msg)
		select {
		case window <- inflight{msg: msg, fut: fut, err: err}:
		case <-ctx.Done():
			dropped++
		}
	}
	close(window)
	<-collected
	// Not handed to the collector: counted as failed, never as published.
	res.Failed += dropped
	if ctx.Err() != nil {
		return res, fmt.Errorf("publish interrupted after %d messages: %w", res.Total(), ctx.Err())
	}
	if res.Failed > 0 {
		return res, fmt.Errorf("%w: %d of %d messages", ErrNotPublished, res.Failed, res.Total())
	}
	return res, nil
}

// retry republishes msg synchronously with backoff after first failed.
func (p *Publisher) retry(ctx context.Context, msg *nats.Msg, first error, retries int) (*jetstream.PubAck, error) {
	err := first
	delay := 250 * time.Millisecond
	for attempt := 1; attempt <= retries && ctx.Err() == nil; attempt++ {
		if p.js.Conn().IsClosed() {
			return nil, fmt.Errorf("connection closed: %w", err)
		}
		t := time.NewTimer(delay)
		select {
		case <-t.C:
		case <-ctx.Done():
			t.Stop()
			return nil, fmt.Errorf("%w (after: %w)", ctx.Err(), err)
		}
		delay = min(2*delay, 5*time.Second)
		actx, cancel := context.WithTimeout(ctx, p.ackTimeout)
		ack, perr := p.js.PublishMsg(actx, msg, jetstream.WithRetryAttempts(0))
		cancel()
		if perr == nil {
			return ack, nil
		}
		err = perr
	}
	return nil, fmt.Errorf("after %d retries: %w", retries, err)
}
