package bench

import (
	"context"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/stdlib"

	"github.com/refresher/refresher/internal/seed"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/provider/fake"
)

// SeedFigure is how the bench filled its database (COPY), for the record.
type SeedFigure struct {
	Rows       int     `json:"rows"`
	Seconds    float64 `json:"seconds"`
	RowsPerSec float64 `json:"rows_per_sec"`
}

// Seed expiries: the first tenth of the publish rows expire soon, so that
// `publish --expiring-within` selects exactly them for the small peak-RSS run.
const (
	expiresSoon  = time.Hour
	expiresLater = 30 * 24 * time.Hour
	soonWindow   = 2 * time.Hour
)

// seedAll fills the three services: the publish rows, the consume rows every
// consume figure reuses (a later request is never satisfied by an earlier refresh),
// and the skip rows, refreshed "now" so that older requests are already satisfied.
func (r *rig) seedAll(ctx context.Context) (SeedFigure, error) {
	o := r.opts
	consRows := max(o.Requests, o.SweepRequests, o.DuplicateRows, latencyRequests(o), r.slowRowsNeeded())
	now := time.Now()
	start := now
	small := smallRows(o.Rows)
	if err := r.copyRows(ctx, servicePublish, o.Rows, func(i int) time.Time {
		if i <= small {
			return now.Add(expiresSoon)
		}
		return now.Add(expiresLater)
	}, nil); err != nil {
		return SeedFigure{}, err
	}
	if err := r.copyRows(ctx, serviceConsume, consRows, func(int) time.Time { return now.Add(expiresSoon) }, nil); err != nil {
		return SeedFigure{}, err
	}
	r.skipSeeded = now.Truncate(time.Microsecond)
	if err := r.copyRows(ctx, serviceSkip, o.SkipRequests, func(int) time.Time { return now.Add(expiresSoon) }, &r.skipSeeded); err != nil {
		return SeedFigure{}, err
	}
	elapsed := time.Since(start)
	total := o.Rows + consRows + o.SkipRequests
	var err error
	if r.consIDs, err = r.ids(ctx, serviceConsume); err != nil {
		return SeedFigure{}, err
	}
	if r.skipIDs, err = r.ids(ctx, serviceSkip); err != nil {
		return SeedFigure{}, err
	}
	if err := r.vacuum(ctx); err != nil {
		return SeedFigure{}, err
	}
	r.log.Info("bench: seeded", "rows", total, "elapsed", elapsed.Round(time.Millisecond))
	return SeedFigure{Rows: total, Seconds: elapsed.Seconds(), RowsPerSec: float64(total) / elapsed.Seconds()}, nil
}

// smallRows is the row count of the small peak-RSS run.
func smallRows(rows int) int { return max(rows/10, 1) }

// copyRows inserts n active credentials of service with COPY, through pgx under the
// bun handle, streaming rows so that a million of them are never in memory at once.
// Tokens are the fake provider's generation-0 tokens, as `refresher seed` makes.
func (r *rig) copyRows(ctx context.Context, service string, n int, expires func(i int) time.Time, refreshedAt *time.Time) error {
	conn, err := r.setup.Conn(ctx)
	if err != nil {
		return fmt.Errorf("seed %s: %w", service, err)
	}
	defer conn.Close()
	var copied int64
	err = conn.Raw(func(dc any) error {
		sc, ok := dc.(*stdlib.Conn)
		if !ok {
			return fmt.Errorf("driver connection is %T, not pgx", dc)
		}
		i := 0
		src := pgx.CopyFromFunc(func() ([]any, error) {
			if i == n {
				return nil, nil
			}
			i++
			access, refresh := fake.SeedTokens(seed.Lineage(service, int64(i)))
			return []any{int64(i), service, access, refresh, expires(i), refreshedAt, model.StatusActive}, nil
		})
		copied, err = sc.Conn().CopyFrom(ctx, pgx.Identifier{"credentials"},
			[]string{"account_id", "service", "access_token", "refresh_token", "expires_at", "refreshed_at", "status"}, src)
		return err
	})
	if err != nil {
		return fmt.Errorf("seed %d %s credentials with COPY: %w", n, service, err)
	}
	if copied != int64(n) {
		return fmt.Errorf("seed %s: COPY stored %d rows of %d", service, copied, n)
	}
	return nil
}

// ids lists service's credential ids in order.
func (r *rig) ids(ctx context.Context, service string) ([]int64, error) {
	var ids []int64
	err := r.setup.NewSelect().Model((*model.Credential)(nil)).Column("id").
		Where("service = ?", service).OrderExpr("id").Scan(ctx, &ids)
	if err != nil {
		return nil, fmt.Errorf("list %s ids: %w", service, err)
	}
	return ids, nil
}
