package metrics_test

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/internal/metrics"
	"github.com/refresher/refresher/internal/natsconn"
	"github.com/refresher/refresher/internal/natstest"
	"github.com/refresher/refresher/model"
)

// TestReadyzConditions: each readiness condition alone turns /readyz to 503 with its
// reason, while /healthz stays 200.
func TestReadyzConditions(t *testing.T) {
	env := fleettest.New(t, fleettest.Options{})
	live := env.Conn()
	closedConn := env.Conn()
	closedConn.Close()
	closedDB, err := model.Open(context.Background(), env.DBURL, 1)
	if err != nil {
		t.Fatal(err)
	}
	closedDB.Close()
	// A connection whose server is gone for good: reconnecting, not closed.
	gone := natstest.Start(t)
	orphan, err := natsconn.Connect(gone.URL(), t.Name()+"-orphan", env.Log)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(orphan.Close)
	gone.Shutdown()
	fleettest.Eventually(t, 10*time.Second, "the client to notice its server is gone", func() bool { return !orphan.IsConnected() })
	open, closed := make(chan struct{}), make(chan struct{})
	close(closed)

	tests := []struct {
		name     string
		checks   []metrics.Check
		wantCode int
		want     string
	}{
		{"all well", metrics.ConsumerChecks(open, live, env.DB, closed), http.StatusOK, "ok"},
		{"no shutdown channel", metrics.ConsumerChecks(nil, live, env.DB, closed), http.StatusOK, "ok"},
		{"not bound", metrics.ConsumerChecks(open, live, env.DB, open), http.StatusServiceUnavailable, "consumer not bound"},
		{"shutting down", metrics.ConsumerChecks(closed, live, env.DB, closed), http.StatusServiceUnavailable, "shutting down"},
		{"nats server shut down", metrics.ConsumerChecks(open, orphan, env.DB, closed), http.StatusServiceUnavailable, "nats not connected (RECONNECTING)"},
		{"nats connection closed", metrics.ConsumerChecks(open, closedConn, env.DB, closed), http.StatusServiceUnavailable, "nats not connected (CLOSED)"},
		{"database closed", metrics.ConsumerChecks(open, live, closedDB, closed), http.StatusServiceUnavailable, "database ping"},
		{"database slow", []metrics.Check{metrics.DatabaseCheck(slowPinger{}, 20*time.Millisecond)}, http.StatusServiceUnavailable, "did not answer a ping within 20ms"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(metrics.Handler(metrics.New(), tt.checks...))
			t.Cleanup(srv.Close)
			code, body := get(t, srv.URL+"/readyz")
			if code != tt.wantCode || !strings.Contains(body, tt.want) {
				t.Fatalf("/readyz = %d %q, want %d containing %q", code, body, tt.wantCode, tt.want)
			}
			if code, body := get(t, srv.URL+"/healthz"); code != http.StatusOK {
				t.Fatalf("/healthz = %d %q, want 200", code, body)
			}
		})
	}
}

// slowPinger stands for a database that does not answer: it returns only when the
// probe gives up.
type slowPinger struct{}

func (slowPinger) PingContext(ctx context.Context) error {
	<-ctx.Done()
	return ctx.Err()
}

// TestReadyzFollowsTheConsumer walks one real consumer through its life: not ready
// before it binds, ready once bound, not ready while its NATS server is down, ready
// again after the reconnect (which is counted), not ready from shutdown on.
func TestReadyzFollowsTheConsumer(t *testing.T) {
	env := fleettest.New(t, fleettest.Options{})
	m := metrics.New(env.Services...)
	nc := env.Conn()
	m.WatchNATS(nc)
	cfg := env.Config()
	c, err := consumer.New(env.DB, nc, env.Providers(cfg.ProviderTimeout), cfg,
		consumer.WithLogger(env.Log), consumer.WithObserver(m))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := httptest.NewServer(metrics.Handler(m, metrics.ConsumerChecks(ctx.Done(), nc, env.DB, c.Ready())...))
	t.Cleanup(srv.Close)
	readyz := func() (int, string) { return get(t, srv.URL+"/readyz") }
	waitReadyz := func(what string, code int, reason string) {
		t.Helper()
		fleettest.Eventually(t, 30*time.Second, what, func() bool {
			got, body := readyz()
			return got == code && strings.Contains(body, reason)
		})
	}

	if code, body := readyz(); code != http.StatusServiceUnavailable || !strings.Contains(body, "not bound") {
		t.Fatalf("before Run: /readyz = %d %q, want 503 not bound", code, body)
	}
	done := make(chan error, 1)
	go func() { done <- c.Run(ctx) }()
	stop := func() error {
		cancel()
		select {
		case err := <-done:
			done <- err // for the cleanup
			return err
		case <-time.After(20 * time.Second):
			return errors.New("consumer did not stop within 20s")
		}
	}
	t.Cleanup(func() { _ = stop() })
	waitReadyz("/readyz 200 once bound", http.StatusOK, "ok")

	env.NATS.Stop() // a crash, as clients see it
	waitReadyz("/readyz 503 with NATS down", http.StatusServiceUnavailable, "nats not connected")
	if err := env.NATS.Restart(); err != nil {
		t.Fatal(err)
	}
	waitReadyz("/readyz 200 after the reconnect", http.StatusOK, "ok")
	if _, fams := scrape(t, srv.URL); value(t, fams, "refresher_nats_reconnects_total", nil) != 1 {
		t.Errorf("refresher_nats_reconnects_total = %v, want 1", value(t, fams, "refresher_nats_reconnects_total", nil))
	}

	if err := stop(); err != nil {
		t.Fatalf("consumer stop: %v", err)
	}
	if code, body := readyz(); code != http.StatusServiceUnavailable || !strings.Contains(body, "shutting down") {
		t.Fatalf("after shutdown: /readyz = %d %q, want 503 shutting down", code, body)
	}
}
