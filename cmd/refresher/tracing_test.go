package main

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"go.opentelemetry.io/otel"

	"github.com/refresher/refresher/internal/fleettest"
)

// TestPublishSendsTraces: with OTEL_EXPORTER_OTLP_ENDPOINT set, `publish` exports its
// spans over OTLP/HTTP before it exits; without it, nothing is sent.
func TestPublishSendsTraces(t *testing.T) {
	prev := otel.GetTracerProvider()
	t.Cleanup(func() { otel.SetTracerProvider(prev) })
	var posts atomic.Int64
	collector := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodPost && r.URL.Path == "/v1/traces" {
			posts.Add(1)
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer collector.Close()

	fx := fleettest.New(t, fleettest.Options{})
	id := fx.Seed("github", 1)[0]
	statusEnv(t, fx)
	args := []string{"publish", "--service", "github", "--ids", strconv.FormatInt(id, 10)}
	if code, _, stderr := runCLI(t, args...); code != 0 || strings.Contains(stderr, "OTLP") || posts.Load() != 0 {
		t.Fatalf("without OTEL_*: exit %d, %d exports\n%s", code, posts.Load(), stderr)
	}
	t.Setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.URL)
	code, _, stderr := runCLI(t, args...)
	if code != 0 || !strings.Contains(stderr, "sending traces over OTLP") {
		t.Fatalf("publish with OTEL_EXPORTER_OTLP_ENDPOINT: exit %d\n%s", code, stderr)
	}
	if posts.Load() == 0 {
		t.Fatal("no trace export reached the collector before publish exited")
	}
}
