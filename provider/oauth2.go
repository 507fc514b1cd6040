package provider

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"golang.org/x/oauth2"

	"github.com/refresher/refresher/internal/redact"
)

// Auth styles for client authentication at the token endpoint.
const (
	AuthStyleHeader = "header"
	AuthStyleParams = "params"
)

// Config describes one service's token endpoint.
type Config struct {
	TokenURL     string
	ClientID     string
	ClientSecret string
	// AuthStyle is "header" (HTTP Basic) or "params" (form fields). It must be explicit:
	// x/oauth2's auto-detection retries a refused request with the other style, sending
	// a refresh token a second time, which a rotating provider treats as reuse.
	AuthStyle string
	// Timeout bounds one token request end to end.
	Timeout time.Duration
}

// OAuth2 refreshes tokens through golang.org/x/oauth2 with an explicit auth style and
// a bounded HTTP client.
type OAuth2 struct {
	cfg    oauth2.Config
	client *http.Client
}

// NewOAuth2 validates cfg and returns a Refresher for it.
func NewOAuth2(cfg Config) (*OAuth2, error) {
	u, err := url.Parse(cfg.TokenURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("token URL %s: want an absolute http(s) URL", redact.URL(cfg.TokenURL))
	}
	var style oauth2.AuthStyle
	switch cfg.AuthStyle {
	case AuthStyleHeader, "":
		style = oauth2.AuthStyleInHeader
	case AuthStyleParams:
		style = oauth2.AuthStyleInParams
	default:
		return nil, fmt.Errorf("auth style %q: want %q or %q", cfg.AuthStyle, AuthStyleHeader, AuthStyleParams)
	}
	if cfg.Timeout <= 0 {
		return nil, fmt.Errorf("provider timeout %s: must be positive", cfg.Timeout)
	}
	return &OAuth2{
		cfg: oauth2.Config{
			ClientID:     cfg.ClientID,
			ClientSecret: cfg.ClientSecret,
			Endpoint:     oauth2.Endpoint{TokenURL: cfg.TokenURL, AuthStyle: style},
		},
		client: &http.Client{
			Timeout: cfg.Timeout,
			Transport: &http.Transport{
				Proxy:               nil, // tokens go straight to the provider, never via an env proxy
				DialContext:         (&net.Dialer{Timeout: cfg.Timeout, KeepAlive: 30 * time.Second}).DialContext,
				MaxIdleConnsPerHost: 64,
				IdleConnTimeout:     90 * time.Second,
				TLSHandshakeTimeout: cfg.Timeout,
			},
			// A token endpoint that redirects is misconfigured; following it could send
			// the refresh token somewhere else.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

// Refresh performs one refresh_token grant. It calls the token endpoint exactly once.
func (o *OAuth2) Refresh(ctx context.Context, refreshToken string) (Token, error) {
	ctx = context.WithValue(ctx, oauth2.HTTPClient, o.client)
	tok, err := o.cfg.TokenSource(ctx, &oauth2.Token{RefreshToken: refreshToken}).Token()
	if err != nil {
		return Token{}, classify(err)
	}
	if tok.AccessToken == "" {
		return Token{}, &TransientError{Reason: "response has no access_token"}
	}
	return Token{AccessToken: tok.AccessToken, RefreshToken: tok.RefreshToken, Expiry: tok.Expiry}, nil
}

// classify maps x/oauth2 errors to ErrInvalidGrant or a TransientError. It never keeps
// the response body: providers may echo request fields back in it.
func classify(err error) error {
	var re *oauth2.RetrieveError
	if errors.As(err, &re) {
		status := 0
		var retryAfter time.Duration
		if re.Response != nil {
			status = re.Response.StatusCode
			retryAfter = parseRetryAfter(re.Response.Header.Get("Retry-After"), time.Now())
		}
		if re.ErrorCode == "invalid_grant" {
			return fmt.Errorf("%w (status %d)", ErrInvalidGrant, status)
		}
		// Only an error code the OAuth specifications define is kept: the field is the
		// provider's to fill, and one that echoes the request would put a token here.
		reason := http.StatusText(status)
		if knownErrorCodes[re.ErrorCode] {
			reason = re.ErrorCode
		} else if re.ErrorCode != "" {
			reason += " (unrecognised error code withheld)"
		}
		if reason == "" {
			reason = "no status"
		}
		return &TransientError{Status: status, RetryAfter: retryAfter, Reason: sanitize(reason)}
	}
	reason := "request failed"
	var ne net.Error
	switch {
	case errors.Is(err, context.DeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout()):
		reason = "timeout"
	case errors.Is(err, context.Canceled):
		reason = "canceled"
	case errors.As(err, new(*net.OpError)):
		reason = "connection failed"
	}
	// The wrapped error is kept for errors.Is, but Error() prints only the reason: a
	// url.Error would print the token endpoint URL, which is fine, but oauth2's own
	// errors may include response bodies.
	return &TransientError{Reason: reason, Err: err}
}

// knownErrorCodes are the token endpoint error codes of RFC 6749 §5.2 and the ones
// RFC 6749 §4.1.2.1 and RFC 8628 add that providers return from it.
var knownErrorCodes = map[string]bool{
	"invalid_request": true, "invalid_client": true, "invalid_grant": true,
	"unauthorized_client": true, "unsupported_grant_type": true, "invalid_scope": true,
	"access_denied": true, "server_error": true, "temporarily_unavailable": true,
	"slow_down": true, "expired_token": true, "authorization_pending": true,
}

// parseRetryAfter reads delta-seconds or an HTTP date.
func parseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if s, err := strconv.Atoi(v); err == nil {
		if s < 0 {
			return 0
		}
		return time.Duration(s) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil && t.After(now) {
		return t.Sub(now)
	}
	return 0
}

// sanitize bounds a provider-supplied error code to something safe to log and store.
func sanitize(s string) string {
	if len(s) > 64 {
		s = s[:64]
	}
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r > 0x7e {
			return '?'
		}
		return r
	}, s)
}
