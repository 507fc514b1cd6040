package consumer

import (
	"context"
	"errors"

	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/provider"
)

// refreshNaive is the read, call, write-back cycle of the periodic job this project
// replaces, kept only so the lost-update test can show that it loses updates (and so
// that the test is known to be able to fail). Nothing outside tests can select it.
func (c *Consumer) refreshNaive(ctx context.Context, req request, prov provider.Refresher) (Outcome, error) {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), c.cfg.claimTTL())
	defer cancel()
	cred, err := loadCredential(ctx, c.db, req.key)
	if err != nil {
		return Retried, err
	}
	if cred == nil {
		return NotFound, nil
	}
	if cred.Status != model.StatusActive {
		return SkippedReauth, nil
	}
	if satisfied(cred.RefreshedAt, req.requestedAt) {
		return SkippedFresh, nil
	}
	g := &group{key: req.key, claim: &claim{cred: cred}, lead: &job{ctx: ctx, prov: prov}}
	c.callGroups(ctx, []*group{g})
	if errors.Is(g.err, provider.ErrInvalidGrant) {
		_, err := c.db.ExecContext(ctx, c.failuresSQL([]failureWrite{{cred.ID, errOf(g.err)}}, true))
		return ReauthRequired, err
	}
	if g.err != nil {
		return Retried, g.err
	}
	w, err := c.sealed(&lockedRow{Credential: *cred}, g)
	if err != nil {
		return Retried, err
	}
	if _, err := c.db.ExecContext(ctx, c.tokensSQL([]tokenWrite{w}, false)); err != nil {
		return Retried, err
	}
	return Refreshed, nil
}
