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
// transaction can send its writes and its COMMIT in one round trip. Each takes one row
// or many (a VALUES list), so the per-row, batched, one-statement and naive paths share
// them.
//
// oneStatement marks a write sent as its own transaction, with no SELECT … FOR UPDATE
// before it (fast.go): the UPDATE is then the row lock, the checks and the write at
// once. It carries, as a FROM item, the settings the short transactions' BEGIN sets,
// and its WHERE holds the checks the locked path makes in Go; when one fails the
// statement changes nothing and the caller takes the locked path.

// clearClaim is the SET list that drops a row's claim.
const clearClaim = "claim_id = NULL, claim_owner = NULL, claim_started_at = NULL, claim_expires_at = NULL"

// refreshedBookkeeping is what every token write sets beside the token columns.
const refreshedBookkeeping = "version = c.version + 1, failures = 0, last_error = NULL, updated_at = now()"

// valuesList renders a VALUES list of n rows, each of the form row, e.g.
// "(?::bigint, ?::text)".
func valuesList(row string, n int) string {
	rows := make([]string, n)
	for i := range rows {
		rows[i] = row
	}
	return "(VALUES " + strings.Join(rows, ", ") + ")"
}

// claimWrite is one claim to record.
type claimWrite struct {
	id, claimID int64
	// service and requestedAt are what a one-statement claim checks the row against.
	service     string
	requestedAt time.Time
}

// claimSQL records claims on rows, replacing expired ones. The expiry is computed by
// the database's clock, the one every later check reads. With oneStatement it claims
// only a row that is active, not refreshed since the request and not claimed at all
// (the case where the locked path would claim without a second thought), and returns
// the rows it claimed.
func (c *Consumer) claimSQL(ws []claimWrite, oneStatement bool) string {
	args := make([]any, 0, 4*len(ws)+3)
	args = append(args, c.owner, c.cfg.claimTTL().Milliseconds())
	for _, w := range ws {
		args = append(args, w.id, w.claimID, w.service, w.requestedAt)
	}
	from, where := "", "c.id = v.id"
	if oneStatement {
		from = ", " + c.sql.durableSettings
		where += ` AND c.service = v.service AND c.status = ? AND c.claim_id IS NULL
		  AND (c.refreshed_at IS NULL OR c.refreshed_at <= v.requested_at)
		RETURNING c.*`
		args = append(args, model.StatusActive)
	}
	return c.format(`UPDATE credentials AS c SET claim_id = v.claim_id, claim_owner = ?::text, claim_started_at = now(),
			claim_expires_at = now() + ?::bigint * interval '1 millisecond'
		FROM `+valuesList("(?::bigint, ?::bigint, ?::text, ?::timestamptz)", len(ws))+
		` AS v (id, claim_id, service, requested_at)`+from+`
		WHERE `+where, args...)
}

// tokenWrite is one refresh result to store.
type tokenWrite struct {
	id                   int64
	service              string
	access, refresh      string // stored (sealed) forms
	expires, refreshedAt time.Time
	claimID              int64
	// presented is the stored form of the refresh token the call presented: a
	// one-statement write happens only while the row still holds it.
	presented string
}

// tokensSQL stores refresh results: only the token columns and bookkeeping, so an
// application's concurrent writes to other columns survive; the same statement clears
// the claims the results settle (claim id 0: the naive control, which has none). With
// oneStatement it writes only while the claim is still the attempt's and the row still
// holds the token presented.
func (c *Consumer) tokensSQL(ws []tokenWrite, oneStatement bool) string {
	args := make([]any, 0, 8*len(ws)+1)
	for _, w := range ws {
		var claim any
		if w.claimID != 0 {
			claim = w.claimID
		}
		args = append(args, w.id, w.service, w.access, w.refresh, w.expires, w.refreshedAt, claim, w.presented)
	}
	from, where := "", ""
	if oneStatement {
		from = ", " + c.sql.durableSettings
		where = " AND c.claim_id = v.claim_id AND c.service = v.service AND c.refresh_token = v.presented"
	}
	return c.format(`UPDATE credentials AS c SET
			access_token = v.access_token, refresh_token = v.refresh_token, expires_at = v.expires_at,
			refreshed_at = v.refreshed_at, `+refreshedBookkeeping+`, `+clearClaim+`
		FROM `+valuesList("(?::bigint, ?::text, ?::text, ?::text, ?::timestamptz, ?::timestamptz, ?::bigint, ?::text)", len(ws))+
		` AS v (id, service, access_token, refresh_token, expires_at, refreshed_at, claim_id, presented)`+from+`
		WHERE c.id = v.id AND c.claim_id IS NOT DISTINCT FROM v.claim_id`+where, args...)
}

// failureWrite is one failed provider call to record.
type failureWrite struct {
	id     int64
	reason string // for last_error, never a token (errOf)
}

// failuresSQL counts failed calls on credentials, with each one's reason; with reauth
// it also marks them reauth_required (the provider refused their grants for good). It
// touches no token column.
func (c *Consumer) failuresSQL(fs []failureWrite, reauth bool) string {
	args := make([]any, 0, 2*len(fs)+1)
	set := ""
	if reauth {
		set = "status = ?, "
		args = append(args, model.StatusReauthRequired)
	}
	for _, f := range fs {
		args = append(args, f.id, f.reason)
	}
	return c.format(`UPDATE credentials AS c SET `+set+`failures = c.failures + 1, last_error = v.reason, updated_at = now()
		FROM `+valuesList("(?::bigint, ?::text)", len(fs))+` AS v (id, reason) WHERE c.id = v.id`, args...)
}

// dropClaimsSQL clears claims (credential id to claim id): a claim taken over by
// another attempt meanwhile is not this attempt's to clear.
func (c *Consumer) dropClaimsSQL(claims map[int64]int64) string {
	if len(claims) == 0 {
		return ""
	}
	args := make([]any, 0, 2*len(claims))
	for id, claim := range claims {
		args = append(args, id, claim)
	}
	return c.format(`UPDATE credentials AS c SET `+clearClaim+`
		FROM `+valuesList("(?::bigint, ?::bigint)", len(claims))+` AS v (id, claim) WHERE c.id = v.id AND c.claim_id = v.claim`, args...)
}

// writeSQL renders the commit step's writes for every group's verdict: tokens, reauth
// marks, failures, dropped claims ("" when nothing is to be written).
func (c *Consumer) writeSQL(groups []*group, locked map[int64]*lockedRow, verdicts map[*group]verdict) (string, error) {
	var (
		stmts            []string
		tokens           []tokenWrite
		reauth, failures []failureWrite
		drop             = map[int64]int64{}
	)
	for _, g := range groups {
		switch verdicts[g] {
		case writeToken:
			w, err := c.sealed(locked[g.key.ID], g)
			if err != nil {
				return "", err
			}
			tokens = append(tokens, w)
		case writeReauth:
			reauth = append(reauth, failureWrite{g.key.ID, errOf(g.err)})
			drop[g.key.ID] = g.claim.id
		case writeFailure:
			failures = append(failures, failureWrite{g.key.ID, errOf(g.err)})
			drop[g.key.ID] = g.claim.id
		case replacedGrant, refusedWrite:
			drop[g.key.ID] = g.claim.id
		}
	}
	if len(failures) > 0 {
		stmts = append(stmts, c.failuresSQL(failures, false))
	}
	if len(tokens) > 0 {
		stmts = append(stmts, c.tokensSQL(tokens, false))
	}
	if len(reauth) > 0 {
		stmts = append(stmts, c.failuresSQL(reauth, true))
	}
	if len(drop) > 0 {
		stmts = append(stmts, c.dropClaimsSQL(drop))
	}
	return strings.Join(stmts, "; "), nil
}

// format renders a statement with its arguments.
func (c *Consumer) format(query string, args ...any) string {
	return c.db.QueryGen().FormatQuery(query, args...)
}

// loadCredential reads credential key without locking it (nil: there is none): the
// naive control's read.
func loadCredential(ctx context.Context, db bun.IDB, key model.Key) (*model.Credential, error) {
	cred := new(model.Credential)
	err := db.NewSelect().Model(cred).Where("id = ?", key.ID).Where("service = ?", key.Service).Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read credential %d: %w", key.ID, err)
	}
	return cred, nil
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
