package consumer

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
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

// checkAttempt fails with a *pendingError when an unexpired marker exists for the
// version of the row just locked. A marker for an older version is stale: that
// attempt's result was committed.
func (c *Consumer) checkAttempt(ctx context.Context, tx bun.IDB, cred *model.Credential) error {
	var age time.Duration
	var ageSecs float64
	err := tx.NewSelect().Model((*model.Attempt)(nil)).
		ColumnExpr("extract(epoch FROM now() - started_at)").
		Where("credential_id = ?", cred.ID).
		Where("version = ?", cred.Version).
		Scan(ctx, &ageSecs)
	if errors.Is(err, sql.ErrNoRows) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("check refresh attempt of credential %d: %w", cred.ID, err)
	}
	age = time.Duration(ageSecs * float64(time.Second))
	if ttl := c.cfg.attemptTTL(); age < ttl {
		return &pendingError{wait: max(ttl-age, 100*time.Millisecond)}
	}
	return nil // expired: its owner is gone and nobody will save that token
}

// markAttempt commits a marker for cred's current version on a connection other than
// the one holding the lock, so it outlives the locking transaction. Its commit does not
// wait for the WAL flush: a database crash that loses it also loses the transaction it
// guards, which leaves nothing to wait for.
func (c *Consumer) markAttempt(ctx context.Context, cred *model.Credential) error {
	err := c.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.ExecContext(ctx, "SET LOCAL synchronous_commit = off"); err != nil {
			return err
		}
		_, err := tx.NewInsert().Model(&model.Attempt{CredentialID: cred.ID, Version: cred.Version}).
			Value("started_at", "now()").
			On("CONFLICT (credential_id) DO UPDATE").
			Set("version = EXCLUDED.version").
			Set("started_at = EXCLUDED.started_at").
			Exec(ctx)
		return err
	})
	if err != nil {
		return fmt.Errorf("mark refresh attempt of credential %d: %w", cred.ID, err)
	}
	return nil
}

// clearAttempt deletes the marker of a credential.
func clearAttempt(ctx context.Context, db bun.IDB, id int64) error {
	if _, err := db.NewDelete().Model((*model.Attempt)(nil)).Where("credential_id = ?", id).Exec(ctx); err != nil {
		return fmt.Errorf("clear refresh attempt of credential %d: %w", id, err)
	}
	return nil
}
