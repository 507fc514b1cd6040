package provider_test

import (
	"context"
	"errors"
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
