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
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/refresher/refresher/internal/tracing"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/stream"
)

// ErrNotPublished is returned when some messages were not confirmed as stored: refused
// by the server, or unconfirmed when the run ended. The Result says how many.
var ErrNotPublished = errors.New("not published")

// Result counts what happened to each message of a publish run.
type Result struct {
	// Published were stored by the stream. A publish whose ack was lost, and whose
	// re-send was answered "duplicate" of the run's own earlier copy, counts here once.
	Published int
	// Duplicate were acknowledged as already stored (same Nats-Msg-Id in the window)
	// by another publisher of the same request: a twin replica got there first.
	Duplicate int
	// Failed are certainly not stored: refused by the server after retries, or never
	// sent because the server stayed unreachable.
	Failed int
	// Unknown were sent but neither confirmed nor refused when the run ended (it was
	// interrupted, or the server stopped answering): they may be stored.
	Unknown int
	// Collided counts requests whose dedupe id was already taken by a message that is
	// not this request (a foreign publish, or a stored copy since removed); they were
	// published again under an id of their own, and are counted in the other fields
	// by how that went.
	Collided int
}

// Total is every message attempted.
func (r Result) Total() int { return r.Published + r.Duplicate + r.Failed + r.Unknown }

// Publisher publishes refresh requests.
type Publisher struct {
	js          jetstream.JetStream
	window      time.Duration
	maxInFlight int
	retries     int
	ackTimeout  time.Duration
	// outageTimeout is how long a run waits for an unreachable server before it
	// gives up; giveUpAt, when set, ends the wait sooner (a scheduled run, at the end
	// of its period).
	outageTimeout time.Duration
	giveUpAt      time.Time
	drainTimeout  time.Duration
	reason        string
	now           func() time.Time
	log           *slog.Logger
	progress      func(Result)
}

// Option configures a Publisher.
type Option func(*Publisher)

// DefaultWindow is the publish window (WithWindow) of a Publisher configured without
// one: REFRESHER_PUBLISH_WINDOW's default.
const DefaultWindow = 15 * time.Minute

// WithWindow sets the schedule period that dedupe ids are built from (default 15m).
// Publishers that share a window publish each row once per window. Zero disables the
// dedupe id, so every call is a distinct request.
func WithWindow(d time.Duration) Option { return func(p *Publisher) { p.window = d } }

// CheckWindow refuses a schedule period (WithWindow) longer than the duplicate window
// of streams. Dedupe ids only dedupe within that window: beyond it, a twin publisher
// running later in the same period would not be recognised as a duplicate, and every
// row would be requested twice. Call it with the configuration the streams were
// created with, before publishing on a schedule.
func CheckWindow(window time.Duration, streams stream.StreamConfig) error {
	if window > streams.DuplicateWindow {
		return fmt.Errorf("publish window %s exceeds REFRESHER_STREAM_DUPLICATE_WINDOW (%s)", window, streams.DuplicateWindow)
	}
	return nil
}

// WithMaxInFlight bounds how many publishes await their ack at once (default 1024).
func WithMaxInFlight(n int) Option { return func(p *Publisher) { p.maxInFlight = n } }

// WithRetries sets how many times a publish the server refused is retried (default
// 5). An unreachable server is not a refusal: see WithOutageTimeout.
func WithRetries(n int) Option { return func(p *Publisher) { p.retries = n } }

// WithAckTimeout bounds the wait for one publish ack (default 5s).
func WithAckTimeout(d time.Duration) Option { return func(p *Publisher) { p.ackTimeout = d } }

// WithOutageTimeout sets how long a run waits for a server that does not answer (a
// dropped connection, acks timing out) before it counts what is left as failed or
// unknown (default 30s). Unconfirmed publishes are re-sent as soon as it answers.
func WithOutageTimeout(d time.Duration) Option { return func(p *Publisher) { p.outageTimeout = d } }

// WithDrainTimeout sets how long publishes in flight may take to be confirmed once
// the run's context ends (default 5s); those still unconfirmed count as Unknown.
func WithDrainTimeout(d time.Duration) Option { return func(p *Publisher) { p.drainTimeout = d } }

// WithReason adds {"reason": reason} as the body of every message.
func WithReason(reason string) Option { return func(p *Publisher) { p.reason = reason } }

// WithLogger sets the logger (default slog.Default()).
func WithLogger(l *slog.Logger) Option { return func(p *Publisher) { p.log = l } }

// WithProgress is called with running counts as acks arrive (for terminal progress).
func WithProgress(fn func(Result)) Option { return func(p *Publisher) { p.progress = fn } }

// ValidateWindow checks a dedupe window (WithWindow): 0 (no dedupe) or at least 1s.
// The error names the value as "window <d>: …", for a caller to prefix ("--" for the
// flag).
func ValidateWindow(window time.Duration) error {
	switch {
	case window < 0:
		return fmt.Errorf("window %s: must not be negative", window)
	case window > 0 && window < time.Second:
		// Dedupe ids name the window start to the second: two sub-second windows in one
		// second would share ids, and the second one's requests would be dropped.
		return fmt.Errorf("window %s: must be 0 (no dedupe) or at least 1s", window)
	}
	return nil
}

// New returns a Publisher on nc. It creates its own JetStream context so that its
// async-publish limits do not leak into the caller's.
func New(nc *nats.Conn, opts ...Option) (*Publisher, error) {
	p := &Publisher{
		window:      DefaultWindow,
		maxInFlight: 1024,
		retries:     5,
		ackTimeout:  5 * time.Second,
		now:         time.Now,
		log:         slog.Default(),

		outageTimeout: 30 * time.Second,
		drainTimeout:  5 * time.Second,
	}
	for _, o := range opts {
		o(p)
	}
	if p.maxInFlight < 1 {
		return nil, fmt.Errorf("max in-flight %d: must be at least 1", p.maxInFlight)
	}
	if err := ValidateWindow(p.window); err != nil {
		return nil, err
	}
	if p.ackTimeout <= 0 {
		// Without it an ack lost with its connection would be waited for forever.
		return nil, fmt.Errorf("ack timeout %s: must be positive", p.ackTimeout)
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
//
// Tracing hook: one "publish" span (a child of ctx's) covers the run, and every
// message carries its W3C trace context (traceparent, tracestate), which consumers
// link their spans to. Without a tracer provider installed this costs nothing.
func (p *Publisher) publishAll(ctx context.Context, service string, next func() (int64, bool)) (res Result, err error) {
	ctx, span := tracing.Tracer().Start(ctx, "publish", trace.WithSpanKind(trace.SpanKindProducer),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("refresher.service", service)))
	defer func() { tracing.EndPublish(span, res.Published, res.Duplicate, res.Failed+res.Unknown, err) }()
	start := p.WindowStart(p.now())
	return p.publishMsgs(ctx, func() (*nats.Msg, bool) {
		id, ok := next()
		if !ok {
			return nil, false
		}
		msg := p.request(model.Key{Service: service, ID: id}, start)
		tracing.Inject(ctx, msg.Header)
		return msg, true
	})
}
