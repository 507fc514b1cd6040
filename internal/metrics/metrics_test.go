package metrics_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	prommodel "github.com/prometheus/common/model"

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/internal/metrics"
	"github.com/refresher/refresher/internal/pgtest"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/provider"
)

func TestMain(m *testing.M) { pgtest.Main(m) }

// get fetches url and returns the status and body.
func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: read body: %v", url, err)
	}
	return resp.StatusCode, string(body)
}

// scrape reads /metrics as Prometheus would and returns the raw text and its parse.
func scrape(t *testing.T, base string) (string, map[string]*dto.MetricFamily) {
	t.Helper()
	code, body := get(t, base+"/metrics")
	if code != http.StatusOK {
		t.Fatalf("/metrics: status %d: %s", code, body)
	}
	p := expfmt.NewTextParser(prommodel.UTF8Validation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, body)
	}
	return body, fams
}

// value sums, over the series of name whose labels include want, a counter's or
// gauge's value or a histogram's sample count. A missing family fails the test.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, want map[string]string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("metric %s is not exported", name)
	}
	var sum float64
series:
	for _, m := range f.GetMetric() {
		have := map[string]string{}
		for _, l := range m.GetLabel() {
			have[l.GetName()] = l.GetValue()
		}
		for k, v := range want {
			if have[k] != v {
				continue series
			}
		}
		switch {
		case m.Counter != nil:
			sum += m.GetCounter().GetValue()
		case m.Gauge != nil:
			sum += m.GetGauge().GetValue()
		case m.Histogram != nil:
			sum += float64(m.GetHistogram().GetSampleCount())
		}
	}
	return sum
}

func publishRaw(t *testing.T, env *fleettest.Env, msg *nats.Msg) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := env.JS().PublishMsg(ctx, msg); err != nil {
		t.Fatalf("publish %s: %v", msg.Subject, err)
	}
}

// TestMetricsCountWhatHappened runs a consumer with the observer through refreshes,
// a stale duplicate, a missing row and two malformed requests, and checks that what
// /metrics says equals what the consumer and the fake provider counted.
func TestMetricsCountWhatHappened(t *testing.T) {
	// Latency keeps messages in flight long enough to be seen by a scrape.
	env := fleettest.New(t, fleettest.Options{Latency: 200 * time.Millisecond})
	m := metrics.New(env.Services...)
	m.WatchDB(env.DB.DB)
	srv := httptest.NewServer(metrics.Handler(m))
	t.Cleanup(srv.Close)

	github, google := env.Seed("github", 5), env.Seed("google", 3)
	before := time.Now().Add(-time.Hour) // earlier than any refresh: the skip rule applies
	r := env.StartConsumer(env.Config(), consumer.WithObserver(m))
	p := env.Publisher()
	ctx := context.Background()
	if _, err := p.Publish(ctx, "github", github...); err != nil {
		t.Fatal(err)
	}
	if _, err := p.Publish(ctx, "google", google...); err != nil {
		t.Fatal(err)
	}
	fleettest.Eventually(t, 10*time.Second, "a scrape showing messages in flight", func() bool {
		_, fams := scrape(t, srv.URL)
		return value(t, fams, "refresher_messages_in_flight", nil) > 0
	})
	if _, err := p.Publish(ctx, "github", 999999); err != nil { // no such row
		t.Fatal(err)
	}
	publishRaw(t, env, &nats.Msg{Subject: "refresh.github.abc"})              // bad id
	publishRaw(t, env, &nats.Msg{Subject: "refresh.bogus.1", Data: []byte{}}) // unknown service
	env.WaitIdle(30 * time.Second)
	// A request made before the refresh that just happened: satisfied, no provider call.
	publishRaw(t, env, &nats.Msg{
		Subject: model.Key{Service: "github", ID: github[0]}.Subject(),
		Header:  nats.Header{model.HeaderRequestedAt: []string{model.FormatRequestedAt(before)}},
	})
	env.WaitIdle(30 * time.Second)

	body, fams := scrape(t, srv.URL)
	st := r.Stats()
	for _, o := range metrics.Outcomes {
		got := value(t, fams, "refresher_messages_total", map[string]string{"outcome": o.String()})
		if got != float64(st.Of(o)) {
			t.Errorf("refresher_messages_total{outcome=%q} = %v, consumer Stats say %d", o, got, st.Of(o))
		}
	}
	for _, tt := range []struct {
		service string
		outcome consumer.Outcome
		want    float64
	}{
		{"github", consumer.Refreshed, 5},
		{"google", consumer.Refreshed, 3},
		{"github", consumer.NotFound, 1},
		{"github", consumer.SkippedFresh, 1},
		{metrics.UnknownService, consumer.Malformed, 2},
		{"google", consumer.Malformed, 0}, // created at zero for alerts
	} {
		got := value(t, fams, "refresher_messages_total", map[string]string{"service": tt.service, "outcome": tt.outcome.String()})
		if got != tt.want {
			t.Errorf("refresher_messages_total{service=%q,outcome=%q} = %v, want %v", tt.service, tt.outcome, got, tt.want)
		}
	}

	calls := value(t, fams, "refresher_provider_request_duration_seconds", nil)
	if fake := env.Fake.Stats().Calls; calls != float64(st.ProviderCalls) || calls != float64(fake) || calls != 8 {
		t.Errorf("provider requests: metrics %v, consumer %d, fake provider %d; want 8 each", calls, st.ProviderCalls, fake)
	}
	if ok := value(t, fams, "refresher_provider_request_duration_seconds", map[string]string{"service": "github", "result": metrics.ResultOK}); ok != 5 {
		t.Errorf("github provider requests with result ok = %v, want 5", ok)
	}
	// Every refresh took the lock in two short transactions (claim, commit); the missing
	// row and the stale duplicate in one (claim, rolled back); malformed ones in none.
	for _, name := range []string{"refresher_lock_wait_seconds", "refresher_transaction_duration_seconds"} {
		if got := value(t, fams, name, nil); got != 2*8+2 {
			t.Errorf("%s count = %v, want %d", name, got, 2*8+2)
		}
	}
	if got := value(t, fams, "refresher_answers_discarded_total", nil); got != 0 {
		t.Errorf("refresher_answers_discarded_total = %v, want 0", got)
	}
	if got := value(t, fams, "go_sql_max_open_connections", map[string]string{"db_name": "refresher"}); got != float64(env.DB.DB.Stats().MaxOpenConnections) {
		t.Errorf("go_sql_max_open_connections = %v, want the pool's %d", got, env.DB.DB.Stats().MaxOpenConnections)
	}
	if got := value(t, fams, "refresher_messages_in_flight", nil); got != 0 {
		t.Errorf("refresher_messages_in_flight = %v after the fleet went idle", got)
	}
	for _, name := range []string{"refresher_nats_reconnects_total", "go_goroutines", "process_start_time_seconds"} {
		value(t, fams, name, nil)
	}
	assertNoTokens(t, env, body)
}

// tokenPattern matches the fake provider's refresh and access tokens.
var tokenPattern = regexp.MustCompile(`\b(rt|at)\.[a-z0-9_-]+\.[0-9]+\.[A-Za-z0-9_-]{16,}`)

// assertNoTokens fails if any token stored in the database, or anything shaped like
// one, appears in body.
func assertNoTokens(t *testing.T, env *fleettest.Env, body string) {
	t.Helper()
	var creds []model.Credential
	if err := env.DB.NewSelect().Model(&creds).Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	if len(creds) == 0 {
		t.Fatal("no credentials to look for")
	}
	for _, c := range creds {
		// The pattern must recognise real tokens, or its silence below means nothing.
		if !tokenPattern.MatchString(c.RefreshToken) || !tokenPattern.MatchString(c.AccessToken) {
			t.Fatalf("token pattern does not match the stored tokens of credential %d", c.ID)
		}
		if strings.Contains(body, c.RefreshToken) || strings.Contains(body, c.AccessToken) {
			t.Fatalf("/metrics shows a token of credential %d", c.ID)
		}
	}
	if tok := tokenPattern.FindString(body); tok != "" {
		t.Fatalf("/metrics shows something shaped like a token (%.8s…)", tok)
	}
}

func TestResult(t *testing.T) {
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"ok", nil, metrics.ResultOK},
		{"invalid grant", fmtErr(provider.ErrInvalidGrant), metrics.ResultInvalidGrant},
		{"transient", &provider.TransientError{Status: 503, Reason: "unavailable"}, metrics.ResultTransient},
		{"wrapped transient", fmtErr(&provider.TransientError{Reason: "timeout"}), metrics.ResultTransient},
		{"other", context.Canceled, metrics.ResultError},
	}
	for _, tt := range tests {
		if got := metrics.Result(tt.err); got != tt.want {
			t.Errorf("%s: Result(%v) = %q, want %q", tt.name, tt.err, got, tt.want)
		}
	}
}

func fmtErr(err error) error { return fmt.Errorf("refresh: %w", err) }

// TestServiceLabel: only configured services become label values, so a publisher
// cannot create series by inventing service names.
func TestServiceLabel(t *testing.T) {
	m := metrics.New("github")
	m.MessageDone("github", consumer.Refreshed, time.Millisecond)
	m.MessageDone("", consumer.Malformed, time.Millisecond)
	m.MessageDone("invented", consumer.Malformed, time.Millisecond)
	m.ProviderCall("invented", time.Millisecond, nil)
	srv := httptest.NewServer(metrics.Handler(m))
	t.Cleanup(srv.Close)
	body, fams := scrape(t, srv.URL)
	if strings.Contains(body, "invented") {
		t.Fatalf("/metrics has a series for an unconfigured service:\n%s", body)
	}
	for _, tt := range []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"refresher_messages_total", map[string]string{"service": "github", "outcome": "refreshed"}, 1},
		{"refresher_messages_total", map[string]string{"service": metrics.UnknownService, "outcome": "malformed"}, 2},
		{"refresher_provider_request_duration_seconds", map[string]string{"service": metrics.UnknownService, "result": "ok"}, 1},
	} {
		if got := value(t, fams, tt.name, tt.labels); got != tt.want {
			t.Errorf("%s%v = %v, want %v", tt.name, tt.labels, got, tt.want)
		}
	}
}
