package model

import (
	"time"

	"github.com/uptrace/bun"
)

// Attempt marks a provider call in flight for a credential at a version; see the
// refresh_attempts migration for why it exists.
type Attempt struct {
	bun.BaseModel `bun:"table:refresh_attempts,alias:a"`

	CredentialID int64     `bun:"credential_id,pk"`
	Version      int64     `bun:"version,notnull"`
	StartedAt    time.Time `bun:"started_at,notnull,default:current_timestamp"`
}
