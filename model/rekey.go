package model

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/uptrace/bun"
)

// RekeyResult counts what Rekey did.
type RekeyResult struct {
	Rows     int // rows examined
	Resealed int // rows rewritten under the primary key
}

// Rekey re-encrypts every credential whose tokens are plaintext or sealed with a key
// other than k's primary one, a page of rows at a time. Each page is one transaction
// that locks its rows (FOR UPDATE, like a refresh) so a rekey never writes back a
// token that a concurrent refresh has just replaced. A page that waits on a lock past
// lockTimeout is retried. progress, if set, is called after each page.
func Rekey(ctx context.Context, db *bun.DB, k *Keyring, lockTimeout time.Duration, progress func(RekeyResult)) (RekeyResult, error) {
	var res RekeyResult
	if k == nil {
		return res, errors.New("rekey: REFRESHER_ENCRYPTION_KEYS is not set: nothing to encrypt with")
	}
	primary := k.PrimaryID()
	var last int64
	for {
		var page []Credential
		attempt := 0
		for {
			page = page[:0]
			resealed := 0
			err := db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
				if _, err := tx.ExecContext(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", lockTimeout.Milliseconds())); err != nil {
					return err
				}
				if err := tx.NewSelect().Model(&page).Column("id", "access_token", "refresh_token").
					Where("id > ?", last).OrderExpr("id").Limit(500).For("UPDATE").Scan(ctx); err != nil {
					return err
				}
				for i := range page {
					c := &page[i]
					if SealedWith(c.AccessToken) == primary && SealedWith(c.RefreshToken) == primary {
						continue
					}
					if err := k.OpenTokens(c); err != nil {
						return err
					}
					access, refresh, err := k.SealTokens(c.AccessToken, c.RefreshToken)
					if err != nil {
						return err
					}
					if _, err := tx.NewUpdate().Model((*Credential)(nil)).
						Set("access_token = ?", access).Set("refresh_token = ?", refresh).
						Where("id = ?", c.ID).Exec(ctx); err != nil {
						return fmt.Errorf("reseal credential %d: %w", c.ID, err)
					}
					resealed++
				}
				return nil
			})
			if err == nil {
				res.Resealed += resealed
				break
			}
			attempt++
			var pgErr *pgconn.PgError
			if ctx.Err() != nil || attempt >= 10 || !errors.As(err, &pgErr) || pgErr.Code != "55P03" {
				return res, fmt.Errorf("rekey credentials after id %d: %w", last, err)
			}
			select {
			case <-ctx.Done():
				return res, ctx.Err()
			case <-time.After(time.Duration(attempt) * 200 * time.Millisecond):
			}
		}
		if len(page) == 0 {
			return res, nil
		}
		res.Rows += len(page)
		last = page[len(page)-1].ID
		if progress != nil {
			progress(res)
		}
	}
}
