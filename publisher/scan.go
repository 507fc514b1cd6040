package publisher

import (
	"context"
	"fmt"
	"time"

	"github.com/uptrace/bun"

	"github.com/refresher/refresher/model"
)

// Scan selects the credentials a scheduled publish run requests refreshes for.
type Scan struct {
	Service string
	// ExpiringWithin keeps rows whose access token expires before now+ExpiringWithin;
	// zero keeps every active row of the service.
	ExpiringWithin time.Duration
	// IDs, when set, restricts the scan to these ids.
	IDs []int64
	// PageSize is the keyset page (default 1000).
	PageSize int
}

// PublishScan publishes one request per active credential matching s. It reads ids
// only, a page at a time by keyset (id > last), so memory stays flat however many rows
// match, and a row inserted or deleted mid-run cannot shift the pages.
func (p *Publisher) PublishScan(ctx context.Context, db bun.IDB, s Scan) (Result, error) {
	if err := model.ValidateService(s.Service); err != nil {
		return Result{}, err
	}
	if s.ExpiringWithin < 0 {
		return Result{}, fmt.Errorf("expiring-within %s: must not be negative", s.ExpiringWithin)
	}
	if s.PageSize <= 0 {
		s.PageSize = 1000
	}
	for _, id := range s.IDs {
		if id <= 0 {
			return Result{}, fmt.Errorf("id %d: must be positive", id)
		}
	}
	cutoff := p.now().Add(s.ExpiringWithin)
	var (
		page    []int64
		pos     int
		last    int64
		done    bool
		scanErr error
	)
	next := func() (int64, bool) {
		if pos == len(page) {
			if done {
				return 0, false
			}
			page = page[:0]
			pos = 0
			q := db.NewSelect().Model((*model.Credential)(nil)).Column("id").
				Where("service = ?", s.Service).
				Where("status = ?", model.StatusActive).
				Where("id > ?", last).
				OrderExpr("id").
				Limit(int64(s.PageSize))
			if s.ExpiringWithin > 0 {
				q = q.Where("expires_at < ?", cutoff)
			}
			if len(s.IDs) > 0 {
				q = q.Where("id IN (?)", bun.In(s.IDs))
			}
			if err := q.Scan(ctx, &page); err != nil {
				scanErr = fmt.Errorf("scan %s credentials after id %d: %w", s.Service, last, err)
				return 0, false
			}
			if len(page) < s.PageSize {
				done = true
			}
			if len(page) == 0 {
				return 0, false
			}
			last = page[len(page)-1]
		}
		pos++
		return page[pos-1], true
	}
	res, err := p.publishAll(ctx, s.Service, next)
	if scanErr != nil {
		return res, scanErr
	}
	return res, err
}
