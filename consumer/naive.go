package consumer

import (
	"context"
	"database/sql"
	"errors"
	"time"

	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/provider"
)

// refreshNaive is the read, call, write-back cycle of the periodic job this project
// replaces, kept only so the lost-update test can show that it loses updates (and so
// that the test is known to be able to fail). Nothing outside tests can select it.
func (c *Consumer) refreshNaive(ctx context.Context, req request, prov provider.Refresher) (Outcome, error) {
	cred := new(model.Credential)
	err := c.db.NewSelect().Model(cred).Where("id = ?", req.key.ID).Where("service = ?", req.key.Service).Scan(ctx)
	if errors.Is(err, sql.ErrNoRows) {
		return NotFound, nil
	}
	if err != nil {
		return Retried, err
	}
	if cred.Status != model.StatusActive {
		return SkippedReauth, nil
	}
	if satisfied(cred.RefreshedAt, req.requestedAt) {
		return SkippedFresh, nil
	}
	began := c.now().Truncate(time.Microsecond)
	tok, err := c.callProvider(ctx, req.key.Service, prov, cred.RefreshToken)
	if errors.Is(err, provider.ErrInvalidGrant) {
		return ReauthRequired, markReauth(ctx, c.db, cred.ID, errOf(err))
	}
	if err != nil {
		return Retried, err
	}
	if err := c.writeToken(ctx, c.db, cred, tok, began, false); err != nil {
		return Retried, err
	}
	return Refreshed, nil
}
