package consumer

import (
	"context"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/refresher/refresher/internal/tracing"
)

// Tracing hooks. Each message gets a "refresh" span: a new trace, linked to the
// publisher's span whose context the message carries (requests may wait hours in the
// stream, so the publisher's trace is not its parent), with child spans for the
// claim, the provider call and the commit. Attributes name the service, credential
// id, delivery and outcome; never a token. Without a tracer provider installed
// (tracing.Setup, or a test's) every span is a no-op.

// startMessageSpan starts j's span for message headers h.
func (j *job) startMessageSpan(ctx context.Context, subject string, h map[string][]string, streamSeq uint64) {
	opts := []trace.SpanStartOption{
		trace.WithNewRoot(), trace.WithSpanKind(trace.SpanKindConsumer),
		trace.WithAttributes(
			attribute.String("messaging.system", "nats"),
			attribute.String("messaging.destination.name", subject),
			attribute.Int64("refresher.delivery", int64(j.delivered)),
			attribute.Int64("refresher.stream_seq", int64(streamSeq)),
		),
	}
	if sc := tracing.Extract(h); sc.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: sc, Attributes: []attribute.KeyValue{
			attribute.String("refresher.link", "published by")}}))
	}
	j.ctx, j.span = tracing.Tracer().Start(ctx, "refresh", opts...)
}

// endMessageSpan records the outcome and ends j's span.
func (j *job) endMessageSpan() {
	if j.span == nil {
		return
	}
	if j.req.key.ID != 0 {
		j.span.SetAttributes(attribute.String("refresher.service", j.req.key.Service), attribute.Int64("refresher.credential_id", j.req.key.ID))
	}
	j.span.SetAttributes(attribute.String("refresher.outcome", j.outcome.String()))
	if j.err != nil {
		j.span.SetStatus(codes.Error, j.err.Error())
	}
	j.span.End()
}

// startSteps starts one child span named step per group, under its lead job's span.
func startSteps(groups []*group, step string) []trace.Span {
	spans := make([]trace.Span, len(groups))
	for i, g := range groups {
		_, spans[i] = tracing.Tracer().Start(g.lead.ctx, step, trace.WithAttributes(
			attribute.String("refresher.service", g.key.Service), attribute.Int64("refresher.credential_id", g.key.ID),
			attribute.Int("refresher.batch", len(groups))))
	}
	return spans
}

func endSteps(spans []trace.Span) {
	for _, s := range spans {
		s.End()
	}
}
