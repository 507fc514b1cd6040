// Package seed inserts demo credentials whose tokens the fake provider accepts.
package seed

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"github.com/uptrace/bun"

	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/provider/fake"
)

// Lineage is the fake provider's name for the credential of account at service.
func Lineage(service string, accountID int64) string {
	return service + "-" + strconv.FormatInt(accountID, 10)
}

// Insert adds count active credentials for service, with account ids following the
// highest one already present (or, when there is none, from freshBase), access tokens expiring in expiresIn, and gen-0 tokens
// the fake provider adopts on first use. It returns the number inserted.
func Insert(ctx context.Context, db bun.IDB, service string, count int, expiresIn time.Duration) (int, error) {
	return InsertSealed(ctx, db, nil, service, count, expiresIn)
}

// InsertSealed is Insert with the tokens sealed by k (nil: plaintext).
func InsertSealed(ctx context.Context, db bun.IDB, k *model.Keyring, service string, count int, expiresIn time.Duration) (int, error) {
	return InsertWithProgress(ctx, db, k, service, count, expiresIn, nil)
}

// InsertWithProgress is InsertSealed calling progress with the running count.
func InsertWithProgress(ctx context.Context, db bun.IDB, k *model.Keyring, service string, count int, expiresIn time.Duration, progress func(inserted int)) (int, error) {
	if err := model.ValidateService(service); err != nil {
		return 0, err
	}
	if count < 1 {
		return 0, fmt.Errorf("count %d: must be at least 1", count)
	}
	var maxAccount int64
	if err := db.NewSelect().Model((*model.Credential)(nil)).
		ColumnExpr("coalesce(max(account_id), 0)").
		Where("service = ?", service).Scan(ctx, &maxAccount); err != nil {
		return 0, fmt.Errorf("find highest %s account id: %w", service, err)
	}
	if maxAccount == 0 {
		// A table with none of this service's rows (a new or recreated database) starts
		// from the clock, not from 1: a fake provider that outlived the old database
		// remembers accounts 1..N as already rotated, and would refuse their fresh
		// gen-0 tokens as reuse (the rows would end reauth_required).
		maxAccount = freshBase(clock())
	}
	const batch = 1000
	expires := time.Now().Add(expiresIn)
	inserted := 0
	for inserted < count {
		n := min(batch, count-inserted)
		rows := make([]model.Credential, n)
		for i := range rows {
			account := maxAccount + int64(inserted+i+1)
			access, refresh, err := k.SealTokens(fake.SeedTokens(Lineage(service, account)))
			if err != nil {
				return inserted, err
			}
			rows[i] = model.Credential{
				AccountID: account, Service: service,
				AccessToken: access, RefreshToken: refresh,
				ExpiresAt: expires, Status: model.StatusActive,
			}
		}
		if _, err := db.NewInsert().Model(&rows).
			ExcludeColumn("id", "created_at", "updated_at", "refreshed_at", "last_error").
			Exec(ctx); err != nil {
			return inserted, fmt.Errorf("insert %s credentials: %w", service, err)
		}
		inserted += n
		if progress != nil {
			progress(inserted)
		}
	}
	return inserted, nil
}

// freshBase is where account ids start for a service with no rows: Unix seconds times
// a million, so seeding a new database never reuses an account id (and so a fake
// provider lineage) seeded in an earlier one, unless a million rows were seeded within
// the same second.
func freshBase(now time.Time) int64 { return now.Unix() * 1_000_000 }

// clock is time.Now; tests move it.
var clock = time.Now
