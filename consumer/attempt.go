package consumer

import (
	"context"
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
// version of the row just locked.
func (c *Consumer) checkAttempt(ctx context.Context, tx bun.IDB, cred *model.Credential) error {
	pending, err := c.pendingAttempts(ctx, tx, []*model.Credential{cred})
	if err != nil {
		return err
	}
	if pe := pending[cred.ID]; pe != nil {
		return pe
	}
	return nil
}

// pendingAttempts finds the unexpired markers for the versions of the rows just
// locked. A marker for an older version is stale: that attempt's result was committed.
// An expired one belongs to a process that is gone and will save nothing.
func (c *Consumer) pendingAttempts(ctx context.Context, tx bun.IDB, creds []*model.Credential) (map[int64]*pendingError, error) {
	if len(creds) == 0 {
		return nil, nil
	}
	ids := make([]int64, len(creds))
	version := make(map[int64]int64, len(creds))
	for i, cr := range creds {
		ids[i] = cr.ID
		version[cr.ID] = cr.Version
	}
	var rows []struct {
		CredentialID int64   `bun:"credential_id"`
		Version      int64   `bun:"version"`
		AgeSeconds   float64 `bun:"age"`
	}
	err := tx.NewSelect().Model((*model.Attempt)(nil)).
		Column("credential_id", "version").
		ColumnExpr("extract(epoch FROM now() - started_at)::float8 AS age").
		Where("credential_id IN (?)", bun.In(ids)).
		Scan(ctx, &rows)
	if err != nil {
		return nil, fmt.Errorf("check refresh attempts of %d credentials: %w", len(ids), err)
	}
	ttl := c.cfg.attemptTTL()
	pending := map[int64]*pendingError{}
	for _, r := range rows {
		age := time.Duration(r.AgeSeconds * float64(time.Second))
		if r.Version == version[r.CredentialID] && age < ttl {
			pending[r.CredentialID] = &pendingError{wait: max(ttl-age, 100*time.Millisecond)}
		}
	}
	return pending, nil
}

// markAttempt commits a marker for cred's current version; see markAttempts.
func (c *Consumer) markAttempt(ctx context.Context, cred *model.Credential) error {
	return c.markAttempts(ctx, []*model.Credential{cred})
}

// markAttempts commits markers for the current versions of creds on a connection
// other than the one holding the locks, so they outlive the locking transaction. The
// commit does not wait for the WAL flush: a database crash that loses the markers also
// loses the transaction they guard, which leaves nothing to wait for.
func (c *Consumer) markAttempts(ctx context.Context, creds []*model.Credential) error {
	rows := make([]model.Attempt, len(creds))
	for i, cr := range creds {
		rows[i] = model.Attempt{CredentialID: cr.ID, Version: cr.Version}
	}
	err := c.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.ExecContext(ctx, "SET LOCAL synchronous_commit = off"); err != nil {
			return err
		}
		_, err := tx.NewInsert().Model(&rows).
			Value("started_at", "now()").
			On("CONFLICT (credential_id) DO UPDATE").
			Set("version = EXCLUDED.version").
			Set("started_at = EXCLUDED.started_at").
			Exec(ctx)
		return err
	})
	if err != nil {
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
