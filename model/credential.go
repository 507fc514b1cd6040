// Package model owns the credentials table (its Bun model and SQL migrations) and the
// format of refresh requests: subjects, bodies and headers. It knows nothing of NATS
// connections or HTTP.
package model

import (
	"log/slog"
	"time"

	"github.com/uptrace/bun"
)

// Credential statuses.
const (
	// StatusActive rows are refreshed on schedule and on request.
	StatusActive = "active"
	// StatusReauthRequired rows were refused by their provider (invalid_grant): only the
	// user signing in again can repair them, so they are never refreshed.
	StatusReauthRequired = "reauth_required"
)

// Credential is one OAuth grant held for one account at one service.
type Credential struct {
	bun.BaseModel `bun:"table:credentials,alias:c"`

	ID           int64      `bun:"id,pk,autoincrement"`
	AccountID    int64      `bun:"account_id,notnull"`
	Service      string     `bun:"service,notnull"`
	AccessToken  string     `bun:"access_token,notnull"`
	RefreshToken string     `bun:"refresh_token,notnull"`
	ExpiresAt    time.Time  `bun:"expires_at,notnull"`
	RefreshedAt  *time.Time `bun:"refreshed_at"`
	Version      int64      `bun:"version,notnull,default:0"`
	Status       string     `bun:"status,notnull,default:'active'"`
	Failures     int        `bun:"failures,notnull,default:0"`
	LastError    *string    `bun:"last_error"`
	CreatedAt    time.Time  `bun:"created_at,notnull,default:current_timestamp"`
	UpdatedAt    time.Time  `bun:"updated_at,notnull,default:current_timestamp"`

	// The claim of the refresh attempt in flight, if any: written and committed before
	// the provider call, cleared by the write of its result. Only refresher writes them.
	ClaimID        *int64     `bun:"claim_id"`
	ClaimOwner     *string    `bun:"claim_owner"`
	ClaimStartedAt *time.Time `bun:"claim_started_at"`
	ClaimExpiresAt *time.Time `bun:"claim_expires_at"`
}

// LogValue keeps tokens out of logs whenever a credential is logged whole.
func (c *Credential) LogValue() slog.Value {
	return slog.GroupValue(
		slog.Int64("id", c.ID),
		slog.String("service", c.Service),
		slog.Int64("account_id", c.AccountID),
		slog.Int64("version", c.Version),
		slog.String("status", c.Status),
	)
}

// TokenColumns are the only columns a refresh writes besides bookkeeping; listing them
// keeps an UPDATE from ever writing back a stale copy of anything else.
var TokenColumns = []string{
	"access_token", "refresh_token", "expires_at", "refreshed_at",
	"version", "failures", "last_error", "updated_at",
}
