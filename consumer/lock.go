package consumer

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"time"

	"github.com/jackc/pgx/v5/pgconn"
	"github.com/uptrace/bun"

	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/provider"
)

// errRollback ends a transaction that must not commit although nothing failed: the
// skip path, whose FOR UPDATE took a transaction id that a commit would have to flush.
var errRollback = errors.New("rollback")

// errStopping aborts a message whose provider call has not begun when shutdown starts.
var errStopping = errors.New("shutting down")

// ErrLockTimeout means another writer held the row past REFRESHER_LOCK_TIMEOUT.
var ErrLockTimeout = errors.New("row lock timeout")

// refresh runs one message's transaction and reports its outcome.
//
// It runs under its own deadline on a context that shutdown cannot cancel: once the
// provider has rotated the token, the only copy of the new one is in this goroutine,
// and abandoning the write would lose the credential.
func (c *Consumer) refresh(req request, prov provider.Refresher, delivered uint64) (Outcome, error) {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.attemptTTL())
	defer cancel()
	if c.naive {
		return c.refreshNaive(ctx, req, prov)
	}
	outcome := Retried
	var (
		provErr  error
		marked   *model.Credential // set once an attempt marker is committed
		answered *answer           // set once the provider has issued a token
	)
	txStart := time.Now()
	defer func() { c.observer.Transaction(time.Since(txStart)) }()
	err := c.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if err := c.setLocal(ctx, tx); err != nil {
			return err
		}
		lockStart := time.Now()
		cred, att, err := lockWithAttempt(ctx, tx, req.key)
		c.observer.LockWait(time.Since(lockStart))
		if errors.Is(err, sql.ErrNoRows) {
			outcome = NotFound
			return errRollback
		}
		if err != nil {
			return err
		}
		if o, derr := c.decide(req.key, cred, att, req.requestedAt, delivered); o != "" {
			outcome = o
			switch o {
			case Interrupted:
				return errStopping
			case Retried:
				return derr
			}
			return errRollback
		}
		if err := c.markAttempt(ctx, cred); err != nil {
			return err
		}
		marked = cred
		// Truncated to what timestamptz stores: rounding up could make the refresh look
		// later than a request made just after it began.
		began := c.now().Truncate(time.Microsecond)
		tok, err := c.callProvider(ctx, req.key.Service, prov, cred.RefreshToken)
		switch {
		case errors.Is(err, provider.ErrInvalidGrant):
			outcome, provErr = ReauthRequired, err
			if err := clearAttempt(ctx, tx, cred.ID); err != nil {
				return err
			}
			return markReauth(ctx, tx, cred.ID, errOf(err))
		case err != nil:
			return err
		}
		answered = &answer{cred: cred, tok: tok, began: began}
		if err := c.writeToken(ctx, tx, cred, tok, began, true); err != nil {
			return err
		}
		outcome = Refreshed
		return nil
	})
	switch {
	case err == nil:
		return outcome, provErr
	case errors.Is(err, errRollback):
		return outcome, nil
	case errors.Is(err, errStopping):
		return Interrupted, nil
	}
	if marked != nil && c.settleAttempt(ctx, req.key, marked.ID, answered, err) {
		return Refreshed, nil
	}
	if errors.Is(err, ErrAttemptPending) {
		return Retried, err // not a failure of this credential: another attempt is in flight
	}
	if c.recordFailure(req.key, errOf(err)) != nil {
		c.log.Warn("could not record failure", "subject", req.key.Subject())
	}
	return Retried, err
}

// decide applies the checks a locked row goes through before any provider call. It
// returns the outcome that settles the request without a call (with the error behind
// a Retried), or "" when the provider must be called. Shared by both commit modes.
func (c *Consumer) decide(key model.Key, cred *model.Credential, att *attemptRow, requestedAt time.Time, delivered uint64) (Outcome, error) {
	switch pe := c.pending(cred, att); {
	case cred.Service != key.Service:
		return NotFound, nil
	case cred.Status != model.StatusActive:
		return SkippedReauth, nil
	case satisfied(cred.RefreshedAt, requestedAt):
		return SkippedFresh, nil
	case c.isStopping() && delivered < uint64(c.cfg.MaxDeliver):
		// The last delivery is worked through even during shutdown: a nak now would
		// exhaust MaxDeliver and lose the request.
		return Interrupted, nil
	case pe != nil:
		return Retried, pe
	}
	return "", nil
}

// settleAttempt finishes an attempt whose transaction did not commit (a killed
// connection, a database restart, a failed write). A token the provider issued (a,
// when set) exists only here and is saved by a second transaction; without one, the
// marker is cleared so the next delivery need not wait for it. It reports whether a
// token was saved.
func (c *Consumer) settleAttempt(ctx context.Context, key model.Key, credID int64, a *answer, cause error) bool {
	if a != nil {
		serr := c.salvage(ctx, key, a)
		if serr == nil {
			c.log.Warn("token saved by a second transaction after the first failed", "subject", key.Subject(), "error", cause)
			return true
		}
		// Lost unless the provider has a reuse grace period. Never print the token.
		c.log.Error("rotated token could not be stored", "subject", key.Subject(), "error", cause, "salvage_error", serr)
		return false
	}
	if err := clearAttempt(ctx, c.db, credID); err != nil {
		c.log.Warn("could not clear the attempt marker; the next try waits for it to expire", "subject", key.Subject(), "error", err)
	}
	return false
}

// answer is a provider's successful reply, kept until it is committed.
type answer struct {
	cred  *model.Credential // the row as locked when the call was made
	tok   provider.Token
	began time.Time
}

// salvage stores a token the provider issued after the transaction that asked for it
// failed. It retries, with backoff, until ctx ends: a database restart takes seconds.
//
// Under a new lock it writes only if the row's version is still the one the call was
// made from; otherwise another writer committed since, which can only be the same
// token (through the provider's grace period) or a later one, so nothing is written.
// A row marked reauth_required meanwhile (another consumer presented the token this
// call had just replaced) is restored to active, since the token held here is valid.
func (c *Consumer) salvage(ctx context.Context, key model.Key, a *answer) error {
	delay := 100 * time.Millisecond
	for {
		err := c.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
			if err := c.setLocal(ctx, tx); err != nil {
				return err
			}
			cur, err := lockCredential(ctx, tx, key)
			if err != nil {
				return err
			}
			if err := clearAttempt(ctx, tx, cur.ID); err != nil {
				return err
			}
			if cur.Version != a.cred.Version {
				return nil
			}
			if err := c.writeToken(ctx, tx, cur, a.tok, a.began, false); err != nil {
				return err
			}
			if cur.Status != model.StatusActive {
				_, err := tx.NewUpdate().Model((*model.Credential)(nil)).
					Set("status = ?", model.StatusActive).Where("id = ?", cur.ID).Exec(ctx)
				return err
			}
			return nil
		})
		if err == nil || errors.Is(err, sql.ErrNoRows) || !retryable(err) {
			return err
		}
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("%w (last attempt: %w)", ctx.Err(), err)
		case <-t.C:
		}
		delay = min(2*delay, 2*time.Second)
	}
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

// callProvider makes one token request and measures it.
func (c *Consumer) callProvider(ctx context.Context, service string, prov provider.Refresher, storedRefreshToken string) (provider.Token, error) {
	refreshToken, err := c.keyring.Open("refresh_token", storedRefreshToken)
	if err != nil {
		return provider.Token{}, err
	}
	start := time.Now()
	tok, err := prov.Refresh(ctx, refreshToken)
	c.stats.providerCall()
	c.observer.ProviderCall(service, time.Since(start), err)
	return tok, err
}

// setLocal bounds how long this transaction waits for the row and how long it may sit
// idle (during the provider call) before PostgreSQL ends it and frees the lock.
func (c *Consumer) setLocal(ctx context.Context, tx bun.Tx) error {
	_, err := tx.ExecContext(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d; SET LOCAL idle_in_transaction_session_timeout = %d",
		c.cfg.LockTimeout.Milliseconds(), c.cfg.idleInTxTimeout().Milliseconds()))
	if err != nil {
		return fmt.Errorf("set transaction timeouts: %w", err)
	}
	return nil
}

// lockCredential selects the row FOR UPDATE, through tx: the lock, not a later check,
// is what stops two writers from both starting from the same refresh token.
func lockCredential(ctx context.Context, tx bun.IDB, key model.Key) (*model.Credential, error) {
	cred := new(model.Credential)
	err := tx.NewSelect().Model(cred).
		Where("id = ?", key.ID).
		Where("service = ?", key.Service).
		For("UPDATE").
		Scan(ctx)
	if err != nil {
		return nil, lockError(key, err)
	}
	return cred, nil
}

// sealed is what a refresh stores: the tokens in their stored form (sealed when a
// keyring is configured; the old refresh token when the provider did not rotate) and
// the expiry.
func (c *Consumer) sealed(cred *model.Credential, tok provider.Token, began time.Time) (access, refresh string, expires time.Time, err error) {
	if access, err = c.keyring.Seal("access_token", tok.AccessToken); err != nil {
		return "", "", time.Time{}, err
	}
	refresh = cred.RefreshToken // stored form: kept when the provider did not rotate
	if tok.RefreshToken != "" {
		if refresh, err = c.keyring.Seal("refresh_token", tok.RefreshToken); err != nil {
			return "", "", time.Time{}, err
		}
	}
	expires = tok.Expiry
	if expires.IsZero() {
		expires = began.Add(c.cfg.DefaultTokenTTL)
	}
	return access, refresh, expires, nil
}

// attemptRow is the attempt marker found beside a locked row, if any.
type attemptRow struct {
	Version    *int64   `bun:"attempt_version,scanonly"`
	AgeSeconds *float64 `bun:"attempt_age,scanonly"`
}

// lockedRow is a credential locked together with its attempt marker.
type lockedRow struct {
	model.Credential `bun:",extend"`
	attemptRow
}

// lockWithAttempt is lockCredential that also reads the row's attempt marker in the
// same statement (one round trip instead of two on the path every refresh takes).
func lockWithAttempt(ctx context.Context, tx bun.IDB, key model.Key) (*model.Credential, *attemptRow, error) {
	row := new(lockedRow)
	err := tx.NewSelect().Model(row).
		ColumnExpr("c.*").
		ColumnExpr("a.version AS attempt_version").
		ColumnExpr("extract(epoch FROM now() - a.started_at)::float8 AS attempt_age").
		Join("LEFT JOIN refresh_attempts AS a ON a.credential_id = c.id").
		Where("c.id = ?", key.ID).
		Where("c.service = ?", key.Service).
		For("UPDATE OF c").
		Scan(ctx)
	if err != nil {
		return nil, nil, lockError(key, err)
	}
	return &row.Credential, &row.attemptRow, nil
}

// lockError names a failed lock, turning lock_not_available into ErrLockTimeout.
func lockError(key model.Key, err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) && pgErr.Code == "55P03" { // lock_not_available
		return fmt.Errorf("lock credential %d: %w", key.ID, ErrLockTimeout)
	}
	if errors.Is(err, sql.ErrNoRows) {
		return err
	}
	return fmt.Errorf("lock credential %d: %w", key.ID, err)
}

// writeToken stores a refresh's result, sealed when a keyring is configured: only the
// token columns and bookkeeping, so concurrent application writes to other columns
// survive.
//
// With clearMarker, the statement also deletes the row's attempt marker, so the marker
// goes exactly when the token it guards is committed, without another round trip.
func (c *Consumer) writeToken(ctx context.Context, tx bun.IDB, cred *model.Credential, tok provider.Token, began time.Time, clearMarker bool) error {
	accessToken, refreshToken, expires, err := c.sealed(cred, tok, began)
	if err != nil {
		return err
	}
	q := tx.NewUpdate().Model((*model.Credential)(nil))
	if clearMarker {
		q = q.With("cleared", tx.NewDelete().Model((*model.Attempt)(nil)).Where("credential_id = ?", cred.ID))
	}
	res, err := q.
		Set("access_token = ?", accessToken).
		Set("refresh_token = ?", refreshToken).
		Set("expires_at = ?", expires).
		Set("refreshed_at = ?", began).
		Set("version = version + 1").
		Set("failures = 0").
		Set("last_error = NULL").
		Set("updated_at = now()").
		Where("id = ?", cred.ID).
		Exec(ctx)
	if err != nil {
		return fmt.Errorf("write credential %d: %w", cred.ID, err)
	}
	if n, _ := res.RowsAffected(); n != 1 {
		return fmt.Errorf("write credential %d: %d rows updated", cred.ID, n)
	}
	return nil
}

// markReauth records that the provider refused the grant for good.
func markReauth(ctx context.Context, tx bun.IDB, id int64, reason string) error {
	_, err := tx.NewUpdate().Model((*model.Credential)(nil)).
		Set("status = ?", model.StatusReauthRequired).
		Set("failures = failures + 1").
		Set("last_error = ?", reason).
		Set("updated_at = now()").
		Where("id = ?", id).
		Exec(ctx)
	if err != nil {
		return fmt.Errorf("mark credential %d reauth_required: %w", id, err)
	}
	return nil
}

// recordFailure counts a failed attempt in its own short transaction, after the
// refresh transaction rolled back. It touches no token column, so it cannot undo a
// refresh that another process committed meanwhile.
func (c *Consumer) recordFailure(key model.Key, reason string) error {
	ctx, cancel := context.WithTimeout(context.Background(), c.cfg.LockTimeout+5*time.Second)
	defer cancel()
	return c.db.RunInTx(ctx, nil, func(ctx context.Context, tx bun.Tx) error {
		if _, err := tx.ExecContext(ctx, fmt.Sprintf("SET LOCAL lock_timeout = %d", c.cfg.LockTimeout.Milliseconds())); err != nil {
			return err
		}
		_, err := tx.NewUpdate().Model((*model.Credential)(nil)).
			Set("failures = failures + 1").
			Set("last_error = ?", reason).
			Set("updated_at = now()").
			Where("id = ?", key.ID).
			Where("service = ?", key.Service).
			Exec(ctx)
		return err
	})
}
