// Package tracing is refresher's OpenTelemetry plumbing: the exporter, set up only
// when the standard OTEL_* variables ask for one, and the W3C trace context carried in
// NATS message headers (traceparent, tracestate).
//
// Senders write the header names in lower case, as W3C Trace Context asks; readers
// accept any case (NATS headers are case-sensitive, and other publishers may
// canonicalise them).
package tracing

import (
	"context"
	"fmt"
	"os"
	"strings"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/exporters/otlp/otlptrace/otlptracehttp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	semconv "go.opentelemetry.io/otel/semconv/v1.26.0"
	"go.opentelemetry.io/otel/trace"
)

// Header names of the W3C trace context, as written.
const (
	Traceparent = "traceparent"
	Tracestate  = "tracestate"
)

// Enabled reports whether the environment asks for traces: an OTLP endpoint is set
// (OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT), or
// OTEL_TRACES_EXPORTER is otlp; and OTEL_SDK_DISABLED is not true and
// OTEL_TRACES_EXPORTER is not none.
func Enabled() bool {
	if strings.EqualFold(os.Getenv("OTEL_SDK_DISABLED"), "true") {
		return false
	}
	switch strings.ToLower(os.Getenv("OTEL_TRACES_EXPORTER")) {
	case "none":
		return false
	case "otlp":
		return true
	}
	return os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT") != "" || os.Getenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") != ""
}

// Setup installs the global tracer provider, exporting over OTLP/HTTP as the OTEL_*
// variables say, when Enabled; otherwise it does nothing and refresher's spans cost
// nothing. The returned function flushes and stops the exporter.
func Setup(ctx context.Context, command string) (shutdown func(context.Context) error, err error) {
	if !Enabled() {
		return func(context.Context) error { return nil }, nil
	}
	exp, err := otlptracehttp.New(ctx)
	if err != nil {
		return nil, fmt.Errorf("OpenTelemetry exporter: %w", err)
	}
	res, err := resource.Merge(resource.Default(), resource.NewSchemaless(
		semconv.ServiceName("refresher"), semconv.ProcessCommand("refresher "+command)))
	if err == nil && os.Getenv("OTEL_SERVICE_NAME") != "" {
		// resource.Default() reads OTEL_SERVICE_NAME: the operator's name wins over
		// "refresher" (without it, Default's "unknown_service" must not).
		res, err = resource.Merge(res, resource.Default())
	}
	if err != nil {
		res = resource.Default()
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exp), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	return tp.Shutdown, nil
}

// Tracer is refresher's tracer from the global provider (a no-op until Setup or a
// test installs one).
func Tracer() trace.Tracer { return otel.Tracer("github.com/refresher/refresher") }

var propagator = propagation.TraceContext{}

// carrier reads and writes the trace context in NATS headers.
type carrier nats.Header

func (c carrier) Get(key string) string {
	if v := c[key]; len(v) > 0 {
		return v[0]
	}
	for k, v := range c {
		if len(v) > 0 && strings.EqualFold(k, key) {
			return v[0]
		}
	}
	return ""
}

func (c carrier) Set(key, value string) {
	for k := range c {
		if strings.EqualFold(k, key) {
			delete(c, k)
		}
	}
	c[strings.ToLower(key)] = []string{value}
}

func (c carrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// Inject writes the span context of ctx into h (nothing when ctx has no valid span).
func Inject(ctx context.Context, h nats.Header) {
	if h == nil || !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	propagator.Inject(ctx, carrier(h))
}

// Extract reads the span context a message's headers carry (invalid when none).
func Extract(h nats.Header) trace.SpanContext {
	if len(h) == 0 {
		return trace.SpanContext{}
	}
	return trace.SpanContextFromContext(propagator.Extract(context.Background(), carrier(h)))
}

// Copy copies the trace context headers of from into to, whatever their case in
// from, written in lower case.
func Copy(to, from nats.Header) {
	for _, k := range []string{Traceparent, Tracestate} {
		if v := carrier(from).Get(k); v != "" {
			carrier(to).Set(k, v)
		}
	}
}

// EndPublish records a publish run's counts on its span and ends it.
func EndPublish(span trace.Span, published, duplicate, failed int, err error) {
	span.SetAttributes(attribute.Int("refresher.published", published), attribute.Int("refresher.duplicate", duplicate),
		attribute.Int("refresher.failed", failed))
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
