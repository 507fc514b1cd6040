package provider_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/refresher/refresher/provider"
	"github.com/refresher/refresher/provider/fake"
)

func newFake(t *testing.T, o fake.Options) (*fake.Provider, string) {
	t.Helper()
	p := fake.New(o)
	url, stop, err := p.Start("127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = stop(context.Background()) })
	return p, url
}

func client(t *testing.T, url, style, secret string, timeout time.Duration) *provider.OAuth2 {
	t.Helper()
	c, err := provider.NewOAuth2(provider.Config{TokenURL: url + "/token", ClientID: "id", ClientSecret: secret, AuthStyle: style, Timeout: timeout})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func TestRefreshRotates(t *testing.T) {
	for _, style := range []string{provider.AuthStyleHeader, provider.AuthStyleParams} {
		t.Run(style, func(t *testing.T) {
			fp, url := newFake(t, fake.Options{ClientID: "id", ClientSecret: "secret"})
			c := client(t, url, style, "secret", 5*time.Second)
			_, rt := fake.SeedTokens("svc-1")
			tok, err := c.Refresh(context.Background(), rt)
			if err != nil {
				t.Fatal(err)
			}
			if tok.RefreshToken == rt || tok.AccessToken == "" || tok.Expiry.Before(time.Now()) {
				t.Fatalf("token not rotated: gen %v", tok.Expiry)
			}
			if err := fp.Verify("svc-1", tok.RefreshToken); err != nil {
				t.Fatal(err)
			}
			st := fp.Stats()
			if (style == provider.AuthStyleHeader) != (st.HeaderAuth == 1) {
				t.Fatalf("auth style %s not used: %+v", style, st)
			}
		})
	}
}

// TestNoAuthStyleRetry: x/oauth2's auto-detection would retry a refused request with
// the other auth style, sending the refresh token twice. With the style set, a refused
// client costs exactly one call.
func TestNoAuthStyleRetry(t *testing.T) {
	fp, url := newFake(t, fake.Options{ClientID: "id", ClientSecret: "secret"})
	c := client(t, url, provider.AuthStyleHeader, "wrong", 5*time.Second)
	_, rt := fake.SeedTokens("svc-1")
	_, err := c.Refresh(context.Background(), rt)
	var te *provider.TransientError
	if !errors.As(err, &te) || te.Status != http.StatusUnauthorized {
		t.Fatalf("error = %v, want a TransientError with status 401 (our misconfiguration, not a dead grant)", err)
	}
	if calls := fp.Stats().Calls; calls != 1 {
		t.Fatalf("%d token requests for one refresh: the refresh token was sent again", calls)
	}
}

func TestRefreshErrors(t *testing.T) {
	fp, url := newFake(t, fake.Options{})
	c := client(t, url, provider.AuthStyleHeader, "secret", 5*time.Second)
	_, rt := fake.SeedTokens("svc-1")
	ctx := context.Background()
	tok, err := c.Refresh(ctx, rt)
	if err != nil {
		t.Fatal(err)
	}

	// The replaced token is refused for good.
	if _, err := c.Refresh(ctx, rt); !errors.Is(err, provider.ErrInvalidGrant) {
		t.Fatalf("reuse: error = %v, want ErrInvalidGrant", err)
	}
	// 503 and 429 are transient, 429 with its Retry-After.
	fp.SetOutage(true)
	_, err = c.Refresh(ctx, tok.RefreshToken)
	var te *provider.TransientError
	if !errors.As(err, &te) || te.Status != 503 {
		t.Fatalf("outage: error = %v", err)
	}
	fp.SetOutage(false)
	fp.SetRateLimit(true, 7*time.Second)
	_, err = c.Refresh(ctx, tok.RefreshToken)
	if provider.RetryAfter(err) != 7*time.Second {
		t.Fatalf("429: error = %v, retry after %s", err, provider.RetryAfter(err))
	}
	fp.SetRateLimit(false, 0)
	// A slow provider times out as a transient error.
	fp.SetLatency(time.Second)
	slow := client(t, url, provider.AuthStyleHeader, "secret", 100*time.Millisecond)
	_, err = slow.Refresh(ctx, tok.RefreshToken)
	if !errors.As(err, &te) || te.Reason != "timeout" {
		t.Fatalf("timeout: error = %v", err)
	}
	// No error message carries a token.
	for _, e := range []error{err} {
		if strings.Contains(e.Error(), "rt.") {
			t.Fatalf("error carries a token: %v", e)
		}
	}
}

// TestErrorsDoNotEchoBodies: a provider that echoes the request in its error body
// must not get the refresh token into our errors (and so into logs and last_error).
func TestErrorsDoNotEchoBodies(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_ = r.ParseForm()
		w.Header().Set("Content-Type", "application/json")
		w.WriteHeader(http.StatusBadGateway)
		_, _ = w.Write([]byte(`{"error":"server_error","echo":"` + r.PostForm.Get("refresh_token") + `"}`))
	}))
	defer srv.Close()
	c := client(t, srv.URL, provider.AuthStyleParams, "secret", time.Second)
	_, err := c.Refresh(context.Background(), "super-secret-refresh-token")
	if err == nil || strings.Contains(err.Error(), "super-secret") {
		t.Fatalf("error = %v", err)
	}
}

func TestNewOAuth2Validates(t *testing.T) {
	for _, tt := range []struct {
		cfg  provider.Config
		want string
	}{
		{provider.Config{TokenURL: "not a url", Timeout: time.Second}, "absolute http(s) URL"},
		{provider.Config{TokenURL: "ftp://x/token", Timeout: time.Second}, "absolute http(s) URL"},
		{provider.Config{TokenURL: "http://x/token", AuthStyle: "auto", Timeout: time.Second}, `auth style "auto"`},
		{provider.Config{TokenURL: "http://x/token"}, "timeout"},
	} {
		if _, err := provider.NewOAuth2(tt.cfg); err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("NewOAuth2(%+v) error = %v, want %q", tt.cfg, err, tt.want)
		}
	}
}

// TestErrorBodiesNeverEchoed: whatever the status, an error answer whose body echoes
// the refresh token presented (in error_description, in a field of its own, or as
// plain text) must not bring it into the error, which reaches logs, last_error and
// dead letters. Each answer is also classified as it must be.
//
// It catches the break "invalid_grant keeps the body" (go run ./internal/mutants).
func TestErrorBodiesNeverEchoed(t *testing.T) {
	const planted = "planted-refresh-token-5f1c9a"
	for _, tt := range []struct {
		name        string
		status      int
		contentType string
		body        string // %s is the echoed token
		invalid     bool   // ErrInvalidGrant, else a TransientError with the status
	}{
		{"400 invalid_grant", 400, "application/json", `{"error":"invalid_grant","error_description":"refresh token %s was revoked","echo":"%[1]s"}`, true},
		{"400 invalid_grant form-encoded", 400, "application/x-www-form-urlencoded", `error=invalid_grant&error_description=bad+token+%s`, true},
		{"400 invalid_request", 400, "application/json", `{"error":"invalid_request","error_description":"cannot parse %s"}`, false},
		{"401 invalid_client", 401, "application/json", `{"error":"invalid_client","error_description":"client sent %s"}`, false},
		{"403 plain text", 403, "text/plain", `forbidden: refresh_token=%s`, false},
		{"429 with Retry-After", 429, "application/json", `{"error":"slow_down","echo":{"refresh_token":"%s"}}`, false},
		{"500 html", 500, "text/html", `<html><body>Internal error handling %s</body></html>`, false},
		{"502 json", 502, "application/json", `{"error":"server_error","error_description":"upstream got %s"}`, false},
		{"503 no error code", 503, "application/json", `{"message":"down for maintenance","request":"grant_type=refresh_token&refresh_token=%s"}`, false},
		{"504 plain text", 504, "text/plain", `gateway timeout for %s`, false},
		{"400 token in the error field itself", 400, "application/json", `{"error":"%s"}`, false},
		{"500 token in the error field itself, form-encoded", 500, "application/x-www-form-urlencoded", `error=%s`, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_ = r.ParseForm()
				if got := r.PostForm.Get("refresh_token"); got != planted {
					t.Errorf("provider got refresh_token %q", got)
				}
				w.Header().Set("Content-Type", tt.contentType)
				if tt.status == http.StatusTooManyRequests {
					w.Header().Set("Retry-After", "3")
				}
				w.WriteHeader(tt.status)
				_, _ = fmt.Fprintf(w, tt.body, r.PostForm.Get("refresh_token"))
			}))
			defer srv.Close()
			c := client(t, srv.URL, provider.AuthStyleParams, "secret", time.Second)
			_, err := c.Refresh(context.Background(), planted)
			if err == nil {
				t.Fatal("no error for an error answer")
			}
			for _, s := range []string{err.Error(), fmt.Sprintf("%v", err), fmt.Sprintf("%+v", err)} {
				if strings.Contains(s, planted) || strings.Contains(s, "5f1c9a") {
					t.Fatalf("the error carries the echoed refresh token: %s", strings.ReplaceAll(s, planted, "<PLANTED>"))
				}
			}
			var te *provider.TransientError
			switch {
			case tt.invalid && !errors.Is(err, provider.ErrInvalidGrant):
				t.Fatalf("error = %v, want ErrInvalidGrant", err)
			case !tt.invalid && (!errors.As(err, &te) || te.Status != tt.status):
				t.Fatalf("error = %v, want a TransientError with status %d", err, tt.status)
			case tt.status == http.StatusTooManyRequests && provider.RetryAfter(err) != 3*time.Second:
				t.Fatalf("429: retry after %s, want 3s", provider.RetryAfter(err))
			}
		})
	}
}
