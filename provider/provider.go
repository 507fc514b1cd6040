// Package provider calls OAuth2 token endpoints with the refresh_token grant and turns
// their answers into the three outcomes the consumer branches on: a new token, a grant
// the provider will never accept again, or a failure worth retrying. It never touches
// the database.
package provider

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// ErrInvalidGrant means the provider refused the refresh token for good (revoked,
// expired, or already rotated): only the user signing in again can repair it.
var ErrInvalidGrant = errors.New("invalid_grant")

// Token is what a successful refresh returns. RefreshToken is the one to store next:
// the rotated one, or the one sent when the provider did not rotate.
type Token struct {
	AccessToken  string
	RefreshToken string
	Expiry       time.Time
}

// Refresher exchanges a refresh token for a new Token.
type Refresher interface {
	Refresh(ctx context.Context, refreshToken string) (Token, error)
}

// TransientError is a failure after which the same request may succeed later: 5xx,
// 429, timeouts, connection errors, and client errors that indicate our own
// misconfiguration rather than a dead grant.
type TransientError struct {
	// Status is the HTTP status, 0 when no response arrived.
	Status int
	// RetryAfter is the provider's Retry-After hint, 0 when absent.
	RetryAfter time.Duration
	// Reason is short and free of token values, safe for logs and the database.
	Reason string
	Err    error
}

func (e *TransientError) Error() string {
	if e.Status != 0 {
		return fmt.Sprintf("provider answered %d: %s", e.Status, e.Reason)
	}
	return "provider unreachable: " + e.Reason
}

func (e *TransientError) Unwrap() error { return e.Err }

// RetryAfter returns the provider's Retry-After hint carried by err, if any.
func RetryAfter(err error) time.Duration {
	var te *TransientError
	if errors.As(err, &te) {
		return te.RetryAfter
	}
	return 0
}
