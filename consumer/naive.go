package consumer

import (
	"context"
	"database/sql"
	"errors"

	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/provider"
)

// refreshNaive is the read, call, write-back cycle of the periodic job this project
// replaces, kept only so the lost-update test can show that it loses updates (and so
// that the test is known to be able to fail). Nothing outside tests can select it.
func (c *Consumer) refreshNaive(req request, prov provider.Refresher) (Outcome, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.claimTTL())
	defer cancel()
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
	g := &group{key: req.key, claim: &claim{cred: cred}, lead: &job{prov: prov}}
	c.callGroups([]*group{g})
	if errors.Is(g.err, provider.ErrInvalidGrant) {
		_, err := c.db.ExecContext(ctx, c.reauthSQL([]int64{cred.ID}, errOf(g.err)))
		return ReauthRequired, err
	}
	if g.err != nil {
		return Retried, g.err
	}
	w, err := c.sealed(&lockedRow{Credential: *cred}, g)
	if err != nil {
		return Retried, err
	}
	if _, err := c.db.ExecContext(ctx, c.tokensSQL([]tokenWrite{w})); err != nil {
		return Retried, err
	}
	return Refreshed, nil
}
