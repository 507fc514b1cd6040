package consumer

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/uptrace/bun"

	"github.com/refresher/refresher/model"
)

// This file owns every statement the consumer sends. Each takes one row or many, so
// the per-row and batched paths share them.

// lockedRow is a locked credential with what the database's clock says of its claim.
type lockedRow struct {
	model.Credential `bun:",extend"`
	// ClaimLive reports that the row's claim has not expired (nil: no claim).
	ClaimLive *bool `bun:"claim_live,scanonly"`
	// ClaimAge is how long ago the claim was taken.
	ClaimAge *float64 `bun:"claim_age,scanonly"`
}

// liveClaim reports whether an attempt's claim holds the row.
func (r *lockedRow) liveClaim() bool { return r.ClaimID != nil && r.ClaimLive != nil && *r.ClaimLive }

// lockRows selects the credentials with ids FOR UPDATE, in id order (two transactions
// locking overlapping sets cannot deadlock), with each row's claim. With skipLocked a
// row held by another transaction is left out instead of waited for.
func lockRows(ctx context.Context, tx bun.IDB, ids []int64, skipLocked bool) ([]*lockedRow, error) {
	lock := "UPDATE OF c"
	if skipLocked {
		lock += " SKIP LOCKED"
	}
	var rows []*lockedRow
	q := tx.NewSelect().Model(&rows).
		ColumnExpr("c.*").
		ColumnExpr("c.claim_expires_at > now() AS claim_live").
		ColumnExpr("extract(epoch FROM now() - c.claim_started_at)::float8 AS claim_age")
	if len(ids) == 1 {
		q = q.Where("c.id = ?", ids[0])
	} else {
		q = q.Where("c.id IN (?)", bun.In(ids)).OrderExpr("c.id")
	}
	if err := q.For(lock).Scan(ctx); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, lockError(ids, err)
	}
	return rows, nil
}

// lockError names the credentials a failed lock was for, turning lock_not_available
// into ErrLockTimeout.
func lockError(ids []int64, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "55P03" { // lock_not_available
		return fmt.Errorf("lock credentials %v: %w", ids, ErrLockTimeout)
	}
	return fmt.Errorf("lock credentials %v: %w", ids, err)
}

// existing returns which of ids exist, without locking them (to tell a row locked
// elsewhere from a missing one after SKIP LOCKED).
func existing(ctx context.Context, db bun.IDB, ids []int64) ([]int64, error) {
	var out []int64
	if err := db.NewSelect().Model((*model.Credential)(nil)).Column("id").
		Where("id IN (?)", bun.In(ids)).Scan(ctx, &out); err != nil && !errors.Is(err, sql.ErrNoRows) {
		return nil, fmt.Errorf("check %d credentials: %w", len(ids), err)
	}
	return out, nil
}

// The statements below are rendered to SQL text here and sent without arguments (a
// '?' inside a rendered value is then never taken for a placeholder), so that a
// transaction can send its writes and its COMMIT in one round trip.

// clearClaim is the SET list that drops a row's claim.
const clearClaim = "claim_id = NULL, claim_owner = NULL, claim_started_at = NULL, claim_expires_at = NULL"

// refreshedBookkeeping is what every token write sets beside the token columns.
const refreshedBookkeeping = "version = c.version + 1, failures = 0, last_error = NULL, updated_at = now()"

// claimSQL records claims on locked rows (claims maps credential id to claim id),
// replacing expired ones. The expiry is computed by the database's clock, the one
// every later check reads.
func (c *Consumer) claimSQL(claims map[int64]int64) string {
	values := make([]string, 0, len(claims))
	args := make([]any, 0, 2*len(claims)+2)
	args = append(args, c.owner, c.cfg.claimTTL().Milliseconds())
	for id, claim := range claims {
		values = append(values, "(?::bigint, ?::bigint)")
		args = append(args, id, claim)
	}
	return c.format(`UPDATE credentials AS c SET claim_id = v.claim, claim_owner = ?::text, claim_started_at = now(),
			claim_expires_at = now() + ?::bigint * interval '1 millisecond'
		FROM (VALUES `+strings.Join(values, ", ")+`) AS v (id, claim) WHERE c.id = v.id`, args...)
}

// tokenWrite is one refresh result to store.
type tokenWrite struct {
	id                   int64
	access, refresh      string // stored (sealed) forms
	expires, refreshedAt time.Time
	claimID              int64
}

// tokensSQL stores refresh results: only the token columns and bookkeeping, so an
// application's concurrent writes to other columns survive; the same statement clears
// the claims the results settle (claim id 0: the naive control, which has none).
func (c *Consumer) tokensSQL(ws []tokenWrite) string {
	values := make([]string, len(ws))
	args := make([]any, 0, 6*len(ws))
	for i, w := range ws {
		values[i] = "(?::bigint, ?::text, ?::text, ?::timestamptz, ?::timestamptz, ?::bigint)"
		var claim any
		if w.claimID != 0 {
			claim = w.claimID
		}
		args = append(args, w.id, w.access, w.refresh, w.expires, w.refreshedAt, claim)
	}
	return c.format(`UPDATE credentials AS c SET
			access_token = v.access_token, refresh_token = v.refresh_token, expires_at = v.expires_at,
			refreshed_at = v.refreshed_at, `+refreshedBookkeeping+`, `+clearClaim+`
		FROM (VALUES `+strings.Join(values, ", ")+`) AS v (id, access_token, refresh_token, expires_at, refreshed_at, claim_id)
		WHERE c.id = v.id AND c.claim_id IS NOT DISTINCT FROM v.claim_id`, args...)
}

// reauthSQL records that the provider refused the grants of ids for good.
func (c *Consumer) reauthSQL(ids []int64, reason string) string {
	return c.db.NewUpdate().Model((*model.Credential)(nil)).
		Set("status = ?", model.StatusReauthRequired).
		Set("failures = failures + 1").
		Set("last_error = ?", reason).
		Set("updated_at = now()").
		Where("id IN (?)", bun.In(ids)).
		String()
}

// failureSQL counts a failed call on a credential. It touches no token column.
func (c *Consumer) failureSQL(id int64, reason string) string {
	return c.db.NewUpdate().Model((*model.Credential)(nil)).
		Set("failures = failures + 1").
		Set("last_error = ?", reason).
		Set("updated_at = now()").
		Where("id = ?", id).
		String()
}

// dropClaimsSQL clears claims (credential id to claim id): a claim taken over by
// another attempt meanwhile is not this attempt's to clear.
func (c *Consumer) dropClaimsSQL(claims map[int64]int64) string {
	if len(claims) == 0 {
		return ""
	}
	values := make([]string, 0, len(claims))
	args := make([]any, 0, 2*len(claims))
	for id, claim := range claims {
		values = append(values, "(?::bigint, ?::bigint)")
		args = append(args, id, claim)
	}
	return c.format(`UPDATE credentials AS c SET `+clearClaim+`
		FROM (VALUES `+strings.Join(values, ", ")+`) AS v (id, claim) WHERE c.id = v.id AND c.claim_id = v.claim`, args...)
}

// format renders a statement with its arguments.
func (c *Consumer) format(query string, args ...any) string {
	return c.db.QueryGen().FormatQuery(query, args...)
}

// claimHolder reads, without locking, the claim on a credential now (nil: the
// credential is gone).
func claimHolder(ctx context.Context, db bun.IDB, id int64) (*lockedRow, error) {
	row := new(lockedRow)
	err := db.NewSelect().Model(row).
		Column("c.id", "c.claim_id", "c.claim_owner").
		ColumnExpr("c.claim_expires_at > now() AS claim_live").
		ColumnExpr("extract(epoch FROM now() - c.claim_started_at)::float8 AS claim_age").
		Where("c.id = ?", id).
		Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read claim of credential %d: %w", id, err)
	}
	return row, nil
}

// retryable tells database errors that may pass (the server restarting, a connection
// lost, a lock held) from those the same statement will meet again.
func retryable(err error) bool {
	var pgErr *pgconn.PgError
	if !errors.As(err, &pgErr) {
		return true // no answer from the server: connection trouble
	}
	switch pgErr.Code[:2] {
	case "08", "53", "57", "58", "40": // connection, resources, operator intervention, system, rollback
		return true
	}
	return pgErr.Code == "55P03" // lock_not_available
}
