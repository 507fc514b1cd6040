package consumer

import (
	"context"
	"database/sql/driver"
	"fmt"
	"time"

	"github.com/uptrace/bun"
)

// shortTx is one short transaction of the protocol (a claim or a commit), driven by
// hand on a connection of its own so that it costs three round trips: BEGIN with its
// settings, the locking SELECT, and the writes with COMMIT. The pool uses the simple
// protocol, which runs several statements sent as one string in order and stops at
// the first error.
type shortTx struct {
	conn     bun.Conn
	open     bool // BEGIN sent, no COMMIT or ROLLBACK yet
	observer Observer
}

// settingsSQL is the fixed SQL text the protocol's statements carry, rendered once
// from the configuration instead of on every message.
type settingsSQL struct {
	// beginDurable and beginAsync start a short transaction with its settings.
	beginDurable, beginAsync string
	// durableSettings is a FROM item that sets, for a one-statement step's own
	// transaction, what beginDurable sets for the others.
	durableSettings string
}

func newSettingsSQL(cfg Config) settingsSQL {
	ms := cfg.LockTimeout.Milliseconds()
	begin := "BEGIN; SET LOCAL lock_timeout = %d; SET LOCAL synchronous_commit = %s"
	return settingsSQL{
		beginDurable: fmt.Sprintf(begin, ms, "on"),
		beginAsync:   fmt.Sprintf(begin, ms, "off"),
		durableSettings: fmt.Sprintf("(SELECT set_config('synchronous_commit', 'on', true), set_config('lock_timeout', '%d', true)) AS settings",
			ms),
	}
}

// begin starts a short transaction. Its commit waits for the WAL flush whatever the
// server's or the role's default (unless durable is false, for the test control): a
// claim or a token that a crash could take back after it was acted on is the failure
// this protocol exists to stop.
func (c *Consumer) begin(ctx context.Context, durable bool) (*shortTx, error) {
	conn, err := c.db.Conn(ctx)
	if err != nil {
		return nil, fmt.Errorf("database connection: %w", err)
	}
	begin := c.sql.beginDurable
	if !durable {
		begin = c.sql.beginAsync
	}
	t := &shortTx{conn: conn, open: true, observer: c.observer}
	if _, err := conn.ExecContext(ctx, begin); err != nil {
		t.close(ctx)
		return nil, fmt.Errorf("begin: %w", err)
	}
	return t, nil
}

// exec sends rendered statements within the transaction.
func (t *shortTx) exec(ctx context.Context, stmts string) error {
	_, err := t.conn.ExecContext(ctx, stmts)
	return err
}

// commitWith sends rendered statements (none: "") and COMMIT in one round trip.
func (t *shortTx) commitWith(ctx context.Context, stmts string) error {
	q := "COMMIT"
	if stmts != "" {
		q = stmts + "; COMMIT"
	}
	if _, err := t.conn.ExecContext(ctx, q); err != nil {
		return err
	}
	t.open = false
	return nil
}

// close rolls back what was not committed and gives the connection back. A
// connection whose transaction state is unknown (ROLLBACK failed) is discarded, never
// handed to the next user in the middle of a transaction. The ROLLBACK is sent even
// when ctx is done (that is often why it is needed), within a bound of its own.
func (t *shortTx) close(ctx context.Context) {
	if t.open {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		_, err := t.conn.ExecContext(ctx, "ROLLBACK")
		cancel()
		if err != nil {
			_ = t.conn.Raw(func(any) error { return driver.ErrBadConn })
		}
		t.open = false
	}
	_ = t.conn.Close()
}

// render turns the groups' writes into statements ("" when there are none).
type render func(groups []*group) (string, error)

// writeAndCommit sends every group's writes and COMMIT in one round trip, under a
// savepoint. If that fails for a reason other than the connection, the writes are
// rolled back to the savepoint and sent group by group, each under a savepoint of its
// own; refused is called for each group whose writes fail alone (and may return
// statements to send in their place), so that one bad row cannot hold back a batch.
// It reports whether the transaction committed with writes (false: nothing to write,
// rolled back).
func (t *shortTx) writeAndCommit(ctx context.Context, groups []*group, r render, refused func(*group, error) string) (bool, error) {
	all, err := r(groups)
	if err != nil {
		return false, err
	}
	if all == "" {
		return false, nil // close rolls back: nothing to flush
	}
	err = t.commitWith(ctx, "SAVEPOINT rows; "+all)
	if err == nil || retryable(err) {
		return err == nil, err
	}
	if rerr := t.exec(ctx, "ROLLBACK TO SAVEPOINT rows"); rerr != nil {
		// COMMIT itself failed (a deferred constraint): the transaction is gone.
		return false, err
	}
	if len(groups) > 1 {
		groups[0].log().Warn("batch statement failed; applying it row by row", "rows", len(groups), "error", err)
		t.observer.BatchSplit(len(groups))
	}
	for _, g := range groups {
		one, rerr := r([]*group{g})
		if rerr != nil {
			return false, rerr
		}
		if one == "" {
			continue
		}
		werr := err
		if len(groups) > 1 {
			werr = t.exec(ctx, "SAVEPOINT row; "+one+"; RELEASE SAVEPOINT row")
		}
		if werr == nil {
			continue
		}
		if retryable(werr) {
			return false, werr
		}
		if len(groups) > 1 {
			if err := t.exec(ctx, "ROLLBACK TO SAVEPOINT row"); err != nil {
				return false, err
			}
		}
		if instead := refused(g, werr); instead != "" {
			if err := t.exec(ctx, "SAVEPOINT row; "+instead+"; RELEASE SAVEPOINT row"); err != nil {
				if retryable(err) {
					return false, err
				}
				if err := t.exec(ctx, "ROLLBACK TO SAVEPOINT row"); err != nil {
					return false, err
				}
			}
		}
	}
	if err := t.commitWith(ctx, ""); err != nil {
		return false, err
	}
	return true, nil
}
