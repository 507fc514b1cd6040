package consumer

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/uptrace/bun"

	"github.com/refresher/refresher/model"
)

// ErrAttemptPending means another consumer's provider call for this credential may have
// rotated the stored refresh token and its result is still being saved: presenting the
// stored token now would send a replaced one.
var ErrAttemptPending = errors.New("a refresh of this credential is already in flight")

// pendingError carries how long to wait for the other attempt.
type pendingError struct{ wait time.Duration }

func (e *pendingError) Error() string {
	return fmt.Sprintf("%s (retry in %s)", ErrAttemptPending, e.wait.Round(time.Millisecond))
}
func (e *pendingError) Unwrap() error { return ErrAttemptPending }

// pending returns a *pendingError when the marker read beside a locked row is live:
// same version as the row, younger than the attempt TTL.
func (c *Consumer) pending(cred *model.Credential, att *attemptRow) *pendingError {
	if att == nil || att.Version == nil || att.AgeSeconds == nil || *att.Version != cred.Version {
		return nil
	}
	return c.pendingFor(time.Duration(*att.AgeSeconds * float64(time.Second)))
}

// pendingFor is the wait for a marker of the given age, nil once it has expired.
func (c *Consumer) pendingFor(age time.Duration) *pendingError {
	if ttl := c.cfg.attemptTTL(); age < ttl {
		return &pendingError{wait: max(ttl-age, 100*time.Millisecond)}
	}
	return nil // expired: its owner is gone and nobody will save that token
}

// markAttempt commits a marker for cred's current version; see markAttempts.
func (c *Consumer) markAttempt(ctx context.Context, cred *model.Credential) error {
	return c.markAttempts(ctx, []*model.Credential{cred})
}

// markAttempts commits markers for the current versions of creds on a connection
// other than the one holding the locks, so they outlive the locking transaction. It is
// one statement in its own implicit transaction, which turns synchronous_commit off for
// itself: its commit does not wait for the WAL flush, because a database crash that
// loses the markers also loses the transaction they guard, leaving nothing to wait for.
func (c *Consumer) markAttempts(ctx context.Context, creds []*model.Credential) error {
	values := make([]string, len(creds))
	args := make([]any, 0, 2*len(creds))
	for i, cr := range creds {
		values[i] = "(?::bigint, ?::bigint)"
		args = append(args, cr.ID, cr.Version)
	}
	query := `INSERT INTO refresh_attempts (credential_id, version, started_at)
		SELECT v.id, v.version, now()
		FROM (VALUES ` + strings.Join(values, ", ") + `) AS v (id, version),
		     (SELECT set_config('synchronous_commit', 'off', true)) AS async
		ON CONFLICT (credential_id) DO UPDATE SET version = EXCLUDED.version, started_at = EXCLUDED.started_at`
	if _, err := c.db.ExecContext(ctx, query, args...); err != nil {
		return fmt.Errorf("mark refresh attempts of %d credentials: %w", len(creds), err)
	}
	return nil
}

// clearAttempt deletes the marker of a credential.
func clearAttempt(ctx context.Context, db bun.IDB, id int64) error {
	return clearAttempts(ctx, db, []int64{id})
}

// clearAttempts deletes the markers of credentials.
func clearAttempts(ctx context.Context, db bun.IDB, ids []int64) error {
	if _, err := db.NewDelete().Model((*model.Attempt)(nil)).Where("credential_id IN (?)", bun.In(ids)).Exec(ctx); err != nil {
		return fmt.Errorf("clear refresh attempts of %d credentials: %w", len(ids), err)
	}
	return nil
}
