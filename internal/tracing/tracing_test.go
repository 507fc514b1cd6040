package tracing_test

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/internal/pgtest"
	"github.com/refresher/refresher/internal/tracing"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

func attr(s tracetest.SpanStub, key string) (attribute.Value, bool) {
	for _, kv := range s.Attributes {
		if string(kv.Key) == key {
			return kv.Value, true
		}
	}
	return attribute.Value{}, false
}

// refreshSpan is the ended "refresh" span of credential id linked to the span
// context sc, with the given outcome.
func refreshSpan(exp *tracetest.InMemoryExporter, id int64, outcome string, sc trace.SpanContext) (tracetest.SpanStub, bool) {
	for _, s := range exp.GetSpans() {
		if s.Name != "refresh" {
			continue
		}
		if v, ok := attr(s, "refresher.credential_id"); !ok || v.AsInt64() != id {
			continue
		}
		if v, ok := attr(s, "refresher.outcome"); !ok || v.AsString() != outcome {
			continue
		}
		for _, l := range s.Links {
			if l.SpanContext.TraceID() == sc.TraceID() && l.SpanContext.SpanID() == sc.SpanID() {
				return s, true
			}
		}
	}
	return tracetest.SpanStub{}, false
}

// TestTraceFromPublishToCommit follows one request: the application's span, the
// publisher's "publish" span under it, the W3C headers on the stored message (lower
// case), the consumer's "refresh" span in a trace of its own linked to "publish",
// and its claim, provider call and commit children; a replay keeps the original
// link; a traceparent in another case is accepted; no span carries a token.
func TestTraceFromPublishToCommit(t *testing.T) {
	exp := tracetest.NewInMemoryExporter()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSyncer(exp))
	prev := otel.GetTracerProvider()
	otel.SetTracerProvider(tp)
	t.Cleanup(func() { otel.SetTracerProvider(prev) })

	env := fleettest.New(t, fleettest.Options{})
	ctx := context.Background()
	id := env.Seed("github", 1)[0]
	env.StartConsumer(env.Config())
	p := env.Publisher()

	actx, app := tp.Tracer("app").Start(ctx, "application request")
	if _, err := p.Publish(actx, "github", id); err != nil {
		t.Fatal(err)
	}
	app.End()
	var pub tracetest.SpanStub
	for _, s := range exp.GetSpans() {
		if s.Name == "publish" {
			pub = s
		}
	}
	if !pub.SpanContext.IsValid() || pub.Parent.SpanID() != app.SpanContext().SpanID() || pub.SpanContext.TraceID() != app.SpanContext().TraceID() {
		t.Fatalf("publish span %+v is not the application span's child", pub.SpanContext)
	}

	// The stored message carries the publish span's context, in lower case.
	s, err := env.JS().Stream(ctx, stream.Stream)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := s.GetLastMsgForSubject(ctx, fmt.Sprintf("refresh.github.%d", id))
	if err != nil {
		t.Fatal(err)
	}
	tp0 := raw.Header[tracing.Traceparent]
	if len(tp0) != 1 || !strings.Contains(tp0[0], pub.SpanContext.TraceID().String()) || !strings.Contains(tp0[0], pub.SpanContext.SpanID().String()) {
		t.Fatalf("headers %v: want traceparent naming the publish span", raw.Header)
	}

	var refresh tracetest.SpanStub
	fleettest.Eventually(t, 20*time.Second, "the refresh span linked to publish", func() bool {
		var ok bool
		refresh, ok = refreshSpan(exp, id, "refreshed", pub.SpanContext)
		return ok
	})
	if refresh.SpanContext.TraceID() == pub.SpanContext.TraceID() || refresh.Parent.IsValid() {
		t.Errorf("the refresh span should start a trace of its own (linked, not a child): parent %v", refresh.Parent)
	}
	if refresh.SpanKind != trace.SpanKindConsumer {
		t.Errorf("refresh span kind %v", refresh.SpanKind)
	}
	if v, _ := attr(refresh, "refresher.service"); v.AsString() != "github" {
		t.Errorf("service attribute %q", v.AsString())
	}
	if v, _ := attr(refresh, "refresher.delivery"); v.AsInt64() != 1 {
		t.Errorf("delivery attribute %d", v.AsInt64())
	}
	children := map[string]bool{}
	for _, s := range exp.GetSpans() {
		if s.Parent.SpanID() == refresh.SpanContext.SpanID() && s.SpanContext.TraceID() == refresh.SpanContext.TraceID() {
			children[s.Name] = true
		}
	}
	for _, want := range []string{"claim", "provider call", "commit"} {
		if !children[want] {
			t.Errorf("no %q child of the refresh span (children: %v)", want, children)
		}
	}

	// A replay republishes the request with its original trace context: the
	// consumer's span (a skip: the row was refreshed after the request) links to the
	// original publish span.
	res, err := p.Replay(ctx, publisher.ReplayOptions{FromOldest: true})
	if err != nil || res.Republished != 1 {
		t.Fatalf("replay: %+v, %v", res, err)
	}
	fleettest.Eventually(t, 20*time.Second, "the replayed request's span linked to the original publish", func() bool {
		_, ok := refreshSpan(exp, id, string("skipped_fresh"), pub.SpanContext)
		return ok
	})

	// Any case is accepted on the way in.
	foreign := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1, 2, 3}, SpanID: trace.SpanID{4, 5, 6}, TraceFlags: trace.FlagsSampled})
	msg := nats.NewMsg(fmt.Sprintf("refresh.github.%d", id))
	msg.Header["Traceparent"] = []string{fmt.Sprintf("00-%s-%s-01", foreign.TraceID(), foreign.SpanID())}
	msg.Header.Set(model.HeaderRequestedAt, model.FormatRequestedAt(time.Now()))
	if err := env.Conn().PublishMsg(msg); err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 20*time.Second, "the span linked to a Traceparent header", func() bool {
		_, ok := refreshSpan(exp, id, "refreshed", foreign)
		return ok
	})

	// No token in any span.
	cred := env.Credential(id)
	for _, s := range exp.GetSpans() {
		for _, kv := range s.Attributes {
			v := kv.Value.String()
			if strings.Contains(v, cred.RefreshToken) || strings.Contains(v, cred.AccessToken) {
				t.Fatalf("span %s attribute %s holds a token", s.Name, kv.Key)
			}
		}
	}
}

// TestHeaderCase: written lower case, read in any case, and nothing written without
// a span.
func TestHeaderCase(t *testing.T) {
	h := nats.Header{}
	tracing.Inject(context.Background(), h)
	if len(h) != 0 {
		t.Fatalf("no span, but headers %v", h)
	}
	sc := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{9}, SpanID: trace.SpanID{8}, TraceFlags: trace.FlagsSampled})
	tracing.Inject(trace.ContextWithSpanContext(context.Background(), sc), h)
	if _, ok := h["traceparent"]; !ok || len(h) != 1 {
		t.Fatalf("headers %v: want one lower-case traceparent", h)
	}
	upper := nats.Header{"TRACEPARENT": h["traceparent"]}
	if got := tracing.Extract(upper); !got.Equal(sc.WithRemote(true)) {
		t.Fatalf("extracted %v from upper case, want %v", got, sc)
	}
	to := nats.Header{"Traceparent": {"stale"}}
	tracing.Copy(to, upper)
	if len(to) != 1 || to.Get("traceparent") != h.Get("traceparent") {
		t.Fatalf("copy: %v", to)
	}
}
