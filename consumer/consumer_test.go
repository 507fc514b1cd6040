package consumer_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
)

func subj(id int64) string { return model.Key{Service: "github", ID: id}.Subject() }

func publishRaw(t *testing.T, env *fleettest.Env, subject, body string, header map[string]string) {
	t.Helper()
	m := nats.NewMsg(subject)
	m.Data = []byte(body)
	for k, v := range header {
		m.Header.Set(k, v)
	}
	if _, err := env.Publisher().JetStream().PublishMsg(context.Background(), m); err != nil {
		t.Fatalf("publish %q: %v", subject, err)
	}
}

// TestBadInput sends every kind of bad request a client can, then a good one: each
// bad one is terminated with a reason and copied to REFRESH_DLQ, a request for a
// missing row is acknowledged, and the consumer keeps working.
func TestBadInput(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{BatchSize: batch})
		ids := env.Seed("github", 2)
		r := env.StartConsumer(env.Config())

		bad := []struct {
			name, subject, body string
			header              map[string]string
			reason              string
		}{
			{"id not a number", "refresh.github.abc", "", nil, "not a positive integer"},
			{"id zero", "refresh.github.0", "", nil, "not a positive integer"},
			{"id with leading zero", "refresh.github.01", "", nil, "not a positive integer"},
			{"id overflow", "refresh.github.99999999999999999999", "", nil, "not a positive integer"},
			{"upper-case service", "refresh.GitHub.1", "", nil, "bad service name"},
			{"service too long", "refresh." + strings.Repeat("s", 65) + ".1", "", nil, "bad service name"},
			{"too few tokens", "refresh.github", "", nil, "want refresh.<service>.<id>"},
			{"too many tokens", "refresh.github.1.2", "", nil, "want refresh.<service>.<id>"},
			{"unknown service", "refresh.gitlab.1", "", nil, `unknown service "gitlab"`},
			{"body not json", "refresh.github.1", "{oops", nil, "invalid JSON"},
			{"body unknown field", "refresh.github.1", `{"requestedat":"2026-01-01T00:00:00Z"}`, nil, "unknown field"},
			{"body wrong type", "refresh.github.1", `{"reason":7}`, nil, "wrong type"},
			{"header not a time", "refresh.github.1", "", map[string]string{model.HeaderRequestedAt: "yesterday"}, "want RFC 3339"},
			{"header in the future", "refresh.github.1", "", map[string]string{model.HeaderRequestedAt: time.Now().Add(24 * time.Hour).Format(time.RFC3339)}, "bad request time"},
		}
		for _, b := range bad {
			publishRaw(t, env, b.subject, b.body, b.header)
		}
		publishRaw(t, env, "refresh.github.999999", "", nil) // no such row
		publishRaw(t, env, subj(ids[0]), "", nil)
		env.WaitIdle(30 * time.Second)

		dls := env.DeadLetters()
		if len(dls) != len(bad) {
			t.Fatalf("%d dead letters, want %d: %+v", len(dls), len(bad), dls)
		}
		// Workers settle messages concurrently, so dead letters need not be in publish
		// order: each bad request must match its own dead letter, used once.
		used := make([]bool, len(dls))
		for _, b := range bad {
			found := false
			for i, dl := range dls {
				if used[i] || dl.Original != b.subject || string(dl.Data) != b.body || !strings.Contains(dl.Reason, b.reason) {
					continue
				}
				used[i], found = true, true
				if dl.Subject != "dlq."+b.subject || !strings.HasPrefix(dl.Reason, "malformed: ") || dl.Deliveries != "1" {
					t.Errorf("%s: dead letter subject %q, reason %q, deliveries %q", b.name, dl.Subject, dl.Reason, dl.Deliveries)
				}
				break
			}
			if !found {
				t.Errorf("%s: no dead letter of %q with its body kept and a reason containing %q in %+v", b.name, b.subject, b.reason, dls)
			}
		}
		st := r.Stats()
		if st.Malformed != int64(len(bad)) || st.NotFound != 1 || st.Refreshed != 1 {
			t.Fatalf("stats %+v: want %d malformed, 1 not found, 1 refreshed", st, len(bad))
		}
		if c := env.Credential(ids[0]); c.RefreshedAt == nil || c.Version != 1 {
			t.Fatalf("good request after bad ones not handled: %+v", c)
		}
		env.Verify()
	})
}

// TestSkipRule: a request made before the row's last refresh costs a lock, not a
// provider call; one made after it is honoured.
func TestSkipRule(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{BatchSize: batch})
		ids := env.Seed("github", 1)
		env.StartConsumer(env.Config())
		p := env.Publisher(publisher.WithWindow(0))
		ctx := context.Background()

		if _, err := p.Publish(ctx, "github", ids[0]); err != nil {
			t.Fatal(err)
		}
		env.WaitIdle(30 * time.Second)
		first := env.Credential(ids[0])
		if first.RefreshedAt == nil || first.Version != 1 {
			t.Fatalf("first request not refreshed: %+v", first)
		}
		calls := env.Fake.Stats().Calls

		// A replay of a request made before that refresh: satisfied, no provider call.
		old := first.RefreshedAt.Add(-time.Second)
		publishRaw(t, env, subj(ids[0]), "", map[string]string{model.HeaderRequestedAt: model.FormatRequestedAt(old)})
		publishRaw(t, env, subj(ids[0]), `{"requested_at":"`+old.Format(time.RFC3339Nano)+`"}`, nil)
		env.WaitIdle(30 * time.Second)
		if got := env.Fake.Stats().Calls; got != calls {
			t.Fatalf("skip rule made %d provider calls", got-calls)
		}
		if c := env.Credential(ids[0]); c.Version != 1 {
			t.Fatalf("skipped request wrote the row: version %d", c.Version)
		}

		// A request made after the refresh began must refresh again.
		later := first.RefreshedAt.Add(time.Millisecond)
		publishRaw(t, env, subj(ids[0]), "", map[string]string{model.HeaderRequestedAt: model.FormatRequestedAt(later)})
		env.WaitIdle(30 * time.Second)
		if c := env.Credential(ids[0]); c.Version != 2 {
			t.Fatalf("request after the refresh was skipped: version %d", c.Version)
		}
		env.Verify()
	})
}

// TestInvalidGrant: a refused grant marks the row reauth_required, terminates the
// message without a retry or a dead letter, and later requests skip the row.
func TestInvalidGrant(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{BatchSize: batch})
		ids := env.Seed("github", 2)
		ctx := context.Background()
		if _, err := env.DB.NewUpdate().Model((*model.Credential)(nil)).
			Set("refresh_token = ?", "revoked-by-the-user").Where("id = ?", ids[0]).Exec(ctx); err != nil {
			t.Fatal(err)
		}
		r := env.StartConsumer(env.Config())
		p := env.Publisher(publisher.WithWindow(0))
		if _, err := p.Publish(ctx, "github", ids...); err != nil {
			t.Fatal(err)
		}
		env.WaitIdle(30 * time.Second)
		c := env.Credential(ids[0])
		if c.Status != model.StatusReauthRequired || c.LastError == nil || !strings.Contains(*c.LastError, "invalid_grant") {
			t.Fatalf("row after invalid_grant: status %s last_error %v", c.Status, c.LastError)
		}
		if ok := env.Credential(ids[1]); ok.Version != 1 {
			t.Fatalf("other row not refreshed: %+v", ok)
		}
		st := r.Stats()
		if st.ReauthRequired != 1 || st.Retried != 0 || len(env.DeadLetters()) != 0 {
			t.Fatalf("stats %+v, dead letters %d: want one reauth_required, no retry, no DLQ", st, len(env.DeadLetters()))
		}
		calls := env.Fake.Stats().Calls
		if _, err := p.Publish(ctx, "github", ids[0]); err != nil {
			t.Fatal(err)
		}
		env.WaitIdle(30 * time.Second)
		if env.Fake.Stats().Calls != calls || r.Stats().SkippedReauth != 1 {
			t.Fatalf("a reauth_required row was sent to the provider again")
		}
	})
}

// TestRequestDuringRefreshIsNotSatisfiedByIt: refreshed_at records when the provider
// call began, so a request made while that call is in flight (the token it asks to
// replace may be the one being issued) gets a refresh of its own.
func TestRequestDuringRefreshIsNotSatisfiedByIt(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{Latency: 500 * time.Millisecond, BatchSize: batch})
		ids := env.Seed("github", 1)
		env.StartConsumer(env.Config())
		p := env.Publisher(publisher.WithWindow(0))
		ctx := context.Background()
		if _, err := p.Publish(ctx, "github", ids[0]); err != nil {
			t.Fatal(err)
		}
		fleettest.Eventually(t, 10*time.Second, "the first provider call in flight", func() bool {
			return env.Fake.Stats().Calls == 1
		})
		if _, err := p.Publish(ctx, "github", ids[0]); err != nil {
			t.Fatal(err)
		}
		env.WaitIdle(30 * time.Second)
		if c := env.Credential(ids[0]); c.Version != 2 {
			t.Fatalf("version %d: the request made during the first refresh was taken as satisfied by it", c.Version)
		}
		env.Verify()
	})
}
