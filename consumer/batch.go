package consumer

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/uptrace/bun"

	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/provider"
)

// ErrLockedElsewhere means a batch found a row locked by another writer; the request
// is retried shortly rather than holding the batch's other rows while it waits.
var ErrLockedElsewhere = errors.New("row locked by another writer")

// handleBatch settles up to BatchSize messages with one transaction: one commit (one
// WAL flush) for all their rows instead of one per row.
func (c *Consumer) handleBatch(msgs []jetstream.Msg) {
	jobs := make([]*job, 0, len(msgs))
	for _, m := range msgs {
		if j, ok := c.prepare(m); ok {
			jobs = append(jobs, j)
		}
	}
	if len(jobs) == 0 {
		return
	}
	stop := c.keepAlive(msgs...)
	c.refreshBatch(jobs)
	stop()
	for _, j := range jobs {
		c.settle(j)
	}
}

// group is the jobs of one batch that ask for the same credential: one lock, at most
// one provider call, for all of them.
type group struct {
	key  model.Key
	jobs []*job
	// lead is the latest request: a refresh it needs satisfies the others too, and if
	// it is satisfied they all are.
	lead  *job
	cred  *model.Credential
	began time.Time
	tok   provider.Token
	err   error // the provider's
}

func (g *group) set(o Outcome, err error) {
	for _, j := range g.jobs {
		j.outcome, j.err = o, err
	}
}

// refreshBatch runs one transaction for a batch of jobs and sets each job's outcome.
//
// Rows are locked in id order, so two consumers' batches cannot deadlock, with SKIP
// LOCKED, so a row held elsewhere is retried later instead of holding up the batch.
// Provider calls run concurrently; each write has its own savepoint, so a failure rolls
// back that row only. The transaction runs on a context shutdown cannot cancel.
func (c *Consumer) refreshBatch(jobs []*job) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.attemptTTL())
	defer cancel()
	groups := groupJobs(jobs)
	var ids []int64 // distinct, ascending: groups are sorted by id
	for _, g := range groups {
		if len(ids) == 0 || ids[len(ids)-1] != g.key.ID {
			ids = append(ids, g.key.ID)
		}
	}

	var calls []*group // rows whose provider was called, in id order
	txStart := time.Now()
	err := c.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if err := c.setLocal(ctx, tx); err != nil {
			return err
		}
		need, err := c.lockBatch(ctx, tx, ids, groups)
		if err != nil {
			return err
		}
		if len(need) == 0 {
			return errRollback // nothing to write: no commit to flush
		}
		creds := make([]*model.Credential, len(need))
		for i, g := range need {
			creds[i] = g.cred
		}
		if err := c.markAttempts(ctx, creds); err != nil {
			return err
		}
		calls = need
		began := c.now().Truncate(time.Microsecond)
		var wg sync.WaitGroup
		for _, g := range need {
			g.began = began
			wg.Add(1)
			go func() {
				defer wg.Done()
				g.tok, g.err = c.callProvider(ctx, g.key.Service, g.lead.prov, g.cred.RefreshToken)
			}()
		}
		wg.Wait()
		return c.writeBatch(ctx, tx, need, began)
	})
	c.observer.Transaction(time.Since(txStart))
	if err == nil || errors.Is(err, errRollback) {
		c.afterBatch(calls, nil)
		return
	}
	// The transaction failed as a whole. Decisions that wrote nothing (skips, missing
	// rows) stand; everything else is retried, and tokens already issued are saved.
	for _, g := range groups {
		if g.jobs[0].outcome == "" || g.jobs[0].outcome == Refreshed || g.jobs[0].outcome == ReauthRequired {
			g.set(Retried, err)
		}
	}
	c.afterBatch(calls, err)
}

// groupJobs groups jobs by credential (service and id), in id order.
func groupJobs(jobs []*job) []*group {
	var groups []*group
	byKey := map[model.Key]*group{}
	for _, j := range jobs {
		g, ok := byKey[j.req.key]
		if !ok {
			g = &group{key: j.req.key}
			byKey[j.req.key] = g
			groups = append(groups, g)
		}
		g.jobs = append(g.jobs, j)
		if g.lead == nil || j.req.requestedAt.After(g.lead.req.requestedAt) {
			g.lead = j
		}
	}
	slices.SortFunc(groups, func(a, b *group) int { return cmp.Compare(a.key.ID, b.key.ID) })
	return groups
}

// lockBatch locks the batch's rows, decides every group that needs no provider call,
// and returns the groups that do.
//
// Two groups may name the same id with different services (one of them garbage): the
// row is locked once, and only the group whose service matches it goes on.
func (c *Consumer) lockBatch(ctx context.Context, tx bun.Tx, ids []int64, groups []*group) ([]*group, error) {
	lockStart := time.Now()
	var rows []*lockedRow
	err := tx.NewSelect().Model(&rows).
		ColumnExpr("c.*").
		ColumnExpr("a.version AS attempt_version").
		ColumnExpr("extract(epoch FROM now() - a.started_at)::float8 AS attempt_age").
		Join("LEFT JOIN refresh_attempts AS a ON a.credential_id = c.id").
		Where("c.id IN (?)", bun.In(ids)).
		OrderExpr("c.id").
		For("UPDATE OF c SKIP LOCKED").
		Scan(ctx)
	c.observer.LockWait(time.Since(lockStart))
	if err != nil {
		return nil, fmt.Errorf("lock %d credentials: %w", len(ids), err)
	}
	locked := make(map[int64]*lockedRow, len(rows))
	for _, row := range rows {
		locked[row.ID] = row
	}
	// Rows not returned are missing or locked by someone else.
	var absent, exist []int64
	for _, id := range ids {
		if locked[id] == nil {
			absent = append(absent, id)
		}
	}
	if len(absent) > 0 {
		if err := tx.NewSelect().Model((*model.Credential)(nil)).Column("id").
			Where("id IN (?)", bun.In(absent)).Scan(ctx, &exist); err != nil {
			return nil, fmt.Errorf("check %d unlocked credentials: %w", len(absent), err)
		}
	}
	var need []*group
	for _, g := range groups {
		row := locked[g.key.ID]
		if row == nil {
			if slices.Contains(exist, g.key.ID) {
				g.set(Retried, fmt.Errorf("lock credential %d: %w", g.key.ID, ErrLockedElsewhere))
			} else {
				g.set(NotFound, nil)
			}
			continue
		}
		g.cred = &row.Credential
		if o, err := c.decide(g.key, g.cred, &row.attemptRow, g.lead.req.requestedAt, g.lead.meta.NumDelivered); o != "" {
			g.set(o, err)
			continue
		}
		need = append(need, g)
	}
	return need, nil
}

// writeBatch stores the provider results of a batch and clears its markers. The fast
// path is one statement for every row under one savepoint; if it fails, the batch is
// rolled back to that savepoint and written row by row, each under its own savepoint,
// so that a failing row is retried alone.
func (c *Consumer) writeBatch(ctx context.Context, tx bun.Tx, need []*group, began time.Time) error {
	var ok, reauth []*group
	for _, g := range need {
		switch {
		case g.err == nil:
			ok = append(ok, g)
		case errors.Is(g.err, provider.ErrInvalidGrant):
			reauth = append(reauth, g)
		default:
			g.set(Retried, g.err)
		}
	}
	ids := make([]int64, len(need))
	for i, g := range need {
		ids[i] = g.key.ID
	}
	stmts, err := c.batchStatements(tx, ok, reauth, began, ids)
	if err != nil {
		return err
	}
	_, err = tx.ExecContext(ctx, "SAVEPOINT rows; "+stmts+"; RELEASE SAVEPOINT rows")
	if err == nil {
		for _, g := range ok {
			g.settleWritten(nil)
		}
		for _, g := range reauth {
			g.settleWritten(g.err)
		}
		return nil
	}
	c.log.Warn("batch write failed; writing its rows one by one", "rows", len(ok)+len(reauth), "error", err)
	if _, err := tx.ExecContext(ctx, "ROLLBACK TO SAVEPOINT rows"); err != nil {
		return err
	}
	for _, g := range append(ok, reauth...) {
		if err := c.writeInSavepoint(ctx, tx, g, began); err != nil {
			return err
		}
	}
	return clearAttempts(ctx, tx, ids)
}

// batchStatements renders the fast path's statements: one UPDATE of the token
// columns for every refreshed row, one for the rows the provider refused, and the
// DELETE of the batch's markers.
//
// Each is rendered to text here and the lot sent with no arguments, so that a '?'
// inside a rendered value is never taken for a placeholder.
func (c *Consumer) batchStatements(tx bun.Tx, ok, reauth []*group, began time.Time, ids []int64) (string, error) {
	var stmts []string
	if len(ok) > 0 {
		values := make([]string, len(ok))
		var args []any
		for i, g := range ok {
			access, refresh, expires, err := c.sealed(g.cred, g.tok, began)
			if err != nil {
				return "", err
			}
			values[i] = "(?::bigint, ?::text, ?::text, ?::timestamptz)"
			args = append(args, g.cred.ID, access, refresh, expires)
		}
		stmts = append(stmts, c.db.QueryGen().FormatQuery(`UPDATE credentials AS c SET
			access_token = v.access_token, refresh_token = v.refresh_token, expires_at = v.expires_at,
			refreshed_at = ?, version = c.version + 1, failures = 0, last_error = NULL, updated_at = now()
			FROM (VALUES `+strings.Join(values, ", ")+`) AS v (id, access_token, refresh_token, expires_at)
			WHERE c.id = v.id`, append([]any{began}, args...)...))
	}
	if len(reauth) > 0 {
		rids := make([]int64, len(reauth))
		for i, g := range reauth {
			rids[i] = g.cred.ID
		}
		stmts = append(stmts, tx.NewUpdate().Model((*model.Credential)(nil)).
			Set("status = ?", model.StatusReauthRequired).
			Set("failures = failures + 1").
			Set("last_error = ?", errOf(reauth[0].err)).
			Set("updated_at = now()").
			Where("id IN (?)", bun.In(rids)).String())
	}
	stmts = append(stmts, tx.NewDelete().Model((*model.Attempt)(nil)).Where("credential_id IN (?)", bun.In(ids)).String())
	return strings.Join(stmts, "; "), nil
}

// settleWritten sets the outcomes of a group whose write succeeded: the lead made the
// request the call answered; the others were satisfied by it. refused is the
// provider's invalid_grant, if that was the answer.
func (g *group) settleWritten(refused error) {
	for _, j := range g.jobs {
		switch {
		case refused != nil && j == g.lead:
			j.outcome, j.err = ReauthRequired, refused
		case refused != nil:
			j.outcome, j.err = SkippedReauth, nil
		case j == g.lead:
			j.outcome, j.err = Refreshed, nil
		default:
			j.outcome, j.err = SkippedFresh, nil
		}
	}
}

// writeInSavepoint stores one row's provider result under its own savepoint, so a
// failing row is rolled back alone, and sets the group's outcome.
func (c *Consumer) writeInSavepoint(ctx context.Context, tx bun.Tx, g *group, began time.Time) error {
	if g.err != nil && !errors.Is(g.err, provider.ErrInvalidGrant) {
		g.set(Retried, g.err)
		return nil
	}
	if _, err := tx.ExecContext(ctx, "SAVEPOINT row"); err != nil {
		return err
	}
	var err error
	if g.err != nil {
		err = markReauth(ctx, tx, g.cred.ID, errOf(g.err))
	} else {
		err = c.writeToken(ctx, tx, g.cred, g.tok, began, false)
	}
	if err != nil {
		if _, rerr := tx.ExecContext(ctx, "ROLLBACK TO SAVEPOINT row"); rerr != nil {
			return errors.Join(err, rerr)
		}
		g.set(Retried, err)
		return nil
	}
	if _, err := tx.ExecContext(ctx, "RELEASE SAVEPOINT row"); err != nil {
		return err
	}
	g.settleWritten(g.err)
	return nil
}

// afterBatch saves tokens whose write did not commit, clears the markers of calls
// that issued none, and records failures.
func (c *Consumer) afterBatch(calls []*group, txErr error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.attemptTTL())
	defer cancel()
	for _, g := range calls {
		if g.lead.outcome != Retried {
			continue
		}
		var a *answer
		if g.err == nil {
			a = &answer{cred: g.cred, tok: g.tok, began: g.began}
		}
		cause := txErr // nil when only this row's savepoint failed
		if cause == nil {
			cause = g.lead.err
		}
		if c.settleAttempt(ctx, g.key, g.cred.ID, a, cause) {
			g.settleWritten(nil)
		}
	}
	for _, g := range calls {
		if g.lead.outcome == Retried && g.lead.err != nil {
			if err := c.recordFailure(g.key, errOf(g.lead.err)); err != nil {
				c.log.Warn("could not record failure", "subject", g.key.Subject())
			}
		}
	}
}
