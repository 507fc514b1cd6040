package consumer_test

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

	"github.com/refresher/refresher/consumer"
	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/internal/metrics"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/publisher"
	"github.com/refresher/refresher/stream"
)

// tokenShape matches any token the fake provider issues, and the planted one.
var tokenShape = regexp.MustCompile(`\b(rt|at)\.[a-z0-9_-]+\.[0-9]+\.[A-Za-z0-9_-]{8,}`)

// plantedToken is a refresh token the provider refuses (invalid_grant); it has the
// shape of a real one so the pattern check covers it too.
const plantedToken = "rt.planted.0.PlantedSecret0f13"

// TestNoTokenInFailurePaths runs a request down every failure path and looks for a
// token everywhere a failure is reported: the log, every dead letter (headers and
// body), credentials.last_error and /metrics. The paths: transient provider errors
// until the request is dead-lettered, invalid_grant (on a planted token), a row lock
// held past the lock timeout, and a database error on the token write (a CHECK
// constraint, whose DETAIL would print the whole row, tokens included).
//
// It catches the break "token in provider error" (go run ./internal/mutants).
func TestNoTokenInFailurePaths(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		// setup breaks things for credential id before the request is published, and
		// may adjust the consumer's configuration.
		setup func(t *testing.T, env *fleettest.Env, id int64, cfg *consumer.Config)
		// where the path's failure must show, so the test is known to take it: in
		// every dead letter (there must be one), and in last_error.
		reason, lastError string
	}{
		{
			name: "transient errors to the DLQ",
			setup: func(t *testing.T, env *fleettest.Env, _ int64, _ *consumer.Config) {
				env.Fake.SetOutage(true)
			},
			reason: "provider answered 503", lastError: "503",
		},
		{
			name: "invalid_grant",
			setup: func(t *testing.T, env *fleettest.Env, id int64, _ *consumer.Config) {
				exec(t, env, `UPDATE credentials SET refresh_token = ? WHERE id = ?`, plantedToken, id)
			},
			lastError: "invalid_grant",
		},
		{
			name: "lock timeout",
			setup: func(t *testing.T, env *fleettest.Env, id int64, cfg *consumer.Config) {
				cfg.LockTimeout = 100 * time.Millisecond
				ctx := context.Background()
				tx, err := env.DB.BeginTx(ctx, nil)
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = tx.Rollback() })
				if _, err := tx.ExecContext(ctx, `SELECT id FROM credentials WHERE id = ? FOR UPDATE`, id); err != nil {
					t.Fatal(err)
				}
			},
			reason: "row lock timeout",
		},
		{
			name: "database error",
			setup: func(t *testing.T, env *fleettest.Env, id int64, _ *consumer.Config) {
				exec(t, env, fmt.Sprintf(`ALTER TABLE credentials ADD CONSTRAINT no_refresh CHECK (id <> %d OR version = 0)`, id))
			},
			reason: `violates check constraint "no_refresh"`,
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fleettest.BothModes(t, func(t *testing.T, batch int) {
				// A reuse interval keeps the retries of the database-error path on it: the
				// token its first call replaced is never stored.
				env := fleettest.New(t, fleettest.Options{BatchSize: batch, Grace: time.Minute})
				ids := env.Seed("github", 2)
				cfg := env.Config()
				cfg.MaxDeliver = 2
				tt.setup(t, env, ids[0], &cfg)
				m := metrics.New("github")
				srv := httptest.NewServer(metrics.Handler(m))
				t.Cleanup(srv.Close)
				env.StartConsumer(cfg, consumer.WithObserver(m), env.NoCircuit())
				if _, err := env.Publisher(publisher.WithWindow(0)).Publish(context.Background(), "github", ids...); err != nil {
					t.Fatal(err)
				}
				env.WaitIdle(30 * time.Second)

				outputs := map[string]string{"the log": env.Logs(), "/metrics": get(t, srv.URL+"/metrics")}
				dls := deadLetterTexts(t, env)
				for i, dl := range dls {
					outputs[fmt.Sprintf("dead letter %d", i+1)] = dl
				}
				var lastErrors []string
				for _, id := range ids {
					if c := env.Credential(id); c.LastError != nil {
						lastErrors = append(lastErrors, *c.LastError)
					}
				}
				outputs["credentials.last_error"] = strings.Join(lastErrors, "\n")

				// The path was taken.
				if tt.reason != "" && len(dls) == 0 {
					t.Fatalf("no dead letter; want one with %q", tt.reason)
				}
				for _, dl := range dls {
					if !strings.Contains(dl, tt.reason) {
						t.Fatalf("dead letter %q does not show %q", dl, tt.reason)
					}
				}
				if !strings.Contains(outputs["credentials.last_error"], tt.lastError) {
					t.Fatalf("last_error %q does not show %q", outputs["credentials.last_error"], tt.lastError)
				}
				if !strings.Contains(outputs["/metrics"], "refresher_messages_total") {
					t.Fatal("/metrics shows no message counts: the observer was not wired")
				}
				assertNoToken(t, env, outputs)
			})
		})
	}
}

// assertNoToken fails if any stored token, the planted one, or anything shaped like a
// token appears in any of outputs.
func assertNoToken(t *testing.T, env *fleettest.Env, outputs map[string]string) {
	t.Helper()
	var creds []model.Credential
	if err := env.DB.NewSelect().Model(&creds).Scan(context.Background()); err != nil {
		t.Fatal(err)
	}
	secrets := []string{plantedToken}
	for _, c := range creds {
		secrets = append(secrets, c.RefreshToken, c.AccessToken)
	}
	for _, s := range secrets {
		// The pattern must recognise every token, or its silence below means nothing.
		if !tokenShape.MatchString(s) {
			t.Fatalf("the token pattern does not match a stored token (%.8s…)", s)
		}
	}
	for where, text := range outputs {
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("%s carries a token (%.8s…)", where, s)
			}
		}
		if tok := tokenShape.FindString(text); tok != "" {
			t.Errorf("%s carries something shaped like a token (%.8s…)", where, tok)
		}
	}
}

// deadLetterTexts returns every message of REFRESH_DLQ as text: subject, every
// header and the body.
func deadLetterTexts(t *testing.T, env *fleettest.Env) []string {
	t.Helper()
	var out []string
	for _, m := range fleettest.StreamMessages(t, env.JS(), stream.DLQStream) {
		var b strings.Builder
		b.WriteString(m.Subject + "\n")
		for k, vs := range m.Header {
			for _, v := range vs {
				b.WriteString(k + ": " + v + "\n")
			}
		}
		b.Write(m.Data)
		out = append(out, b.String())
	}
	return out
}

func get(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func exec(t *testing.T, env *fleettest.Env, query string, args ...any) {
	t.Helper()
	if _, err := env.DB.ExecContext(context.Background(), query, args...); err != nil {
		t.Fatal(err)
	}
}
