package consumer_test

import (
	"context"
	"testing"
	"time"

	"github.com/refresher/refresher/internal/fleettest"
	"github.com/refresher/refresher/publisher"
)

// TestTokenWriteInCheckedTransaction: the statement that writes a credential's tokens
// runs in the transaction that locked the row and checked the claim, never through
// another connection or after that transaction ended. A BEFORE UPDATE trigger records,
// for every token write, its backend and transaction and whether that transaction
// holds the table lock SELECT … FOR UPDATE takes (RowShareLock, held to its end; an
// UPDATE alone takes RowExclusiveLock, and a trigger's row is always locked by the
// writer, so the row's xmax cannot tell), or whether the writing statement is the
// one-statement commit, whose WHERE is the check (claim id and presented token).
// Deterministic and fast: one look at each write, no waiting for a timeout. Batches
// take the full locking commit, so the batch mode covers that path.
//
// It catches the break "token write via pool" (go run ./internal/mutants).
func TestTokenWriteInCheckedTransaction(t *testing.T) {
	t.Parallel()
	fleettest.BothModes(t, func(t *testing.T, batch int) {
		env := fleettest.New(t, fleettest.Options{BatchSize: batch})
		const rows = 4
		ids := env.Seed("github", rows)
		ctx := context.Background()
		for _, stmt := range []string{
			`CREATE TABLE token_writes (id bigint, pid int, xid bigint, locked_by_self bool)`,
			`CREATE FUNCTION record_token_write() RETURNS trigger AS $$
			BEGIN
				INSERT INTO token_writes
				SELECT NEW.id, pg_backend_pid(), txid_current(), EXISTS (
					SELECT 1 FROM pg_locks WHERE pid = pg_backend_pid() AND granted
						AND locktype = 'relation' AND relation = 'credentials'::regclass AND mode = 'RowShareLock')
					-- or the writing statement is its own check: the one-statement commit
					-- writes only WHERE the claim and the presented token still hold.
					OR (position('c.claim_id = ' in current_query()) > 0 AND position('c.refresh_token = ' in current_query()) > 0);
				RETURN NEW;
			END $$ LANGUAGE plpgsql`,
			`CREATE TRIGGER record_token_write BEFORE UPDATE ON credentials FOR EACH ROW
				WHEN (NEW.refresh_token IS DISTINCT FROM OLD.refresh_token OR NEW.access_token IS DISTINCT FROM OLD.access_token)
				EXECUTE FUNCTION record_token_write()`,
		} {
			if _, err := env.DB.ExecContext(ctx, stmt); err != nil {
				t.Fatal(err)
			}
		}
		// The trigger's test of itself: a write under the writer's own lock is seen as
		// such, one by a transaction that did not lock the row is not.
		probe(t, env, ids[0])

		env.StartConsumer(env.Config())
		if _, err := env.Publisher(publisher.WithWindow(0)).Publish(ctx, "github", ids...); err != nil {
			t.Fatal(err)
		}
		var writes []tokenWrite
		fleettest.Eventually(t, 10*time.Second, "a token write for every row", func() bool {
			writes = readWrites(t, env)
			return len(writes) >= rows
		})
		for _, w := range writes {
			if !w.lockedBySelf {
				t.Fatalf("credential %d: tokens written by backend %d, transaction %d, which did not hold the row's lock: the write is not in the checked transaction", w.id, w.pid, w.xid)
			}
		}
		env.WaitIdle(10 * time.Second)
		if writes = readWrites(t, env); len(writes) != rows {
			t.Fatalf("%d token writes for %d rows, want one each", len(writes), rows)
		}
		env.Verify()
	})
}

type tokenWrite struct {
	id           int64
	pid          int
	xid          int64
	lockedBySelf bool
}

func readWrites(t *testing.T, env *fleettest.Env) []tokenWrite {
	t.Helper()
	rs, err := env.DB.QueryContext(context.Background(), `SELECT id, pid, xid, locked_by_self FROM token_writes ORDER BY xid`)
	if err != nil {
		t.Fatal(err)
	}
	defer rs.Close()
	var out []tokenWrite
	for rs.Next() {
		var w tokenWrite
		if err := rs.Scan(&w.id, &w.pid, &w.xid, &w.lockedBySelf); err != nil {
			t.Fatal(err)
		}
		out = append(out, w)
	}
	if err := rs.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// probe checks the recording trigger on credential id: a token write after SELECT …
// FOR UPDATE in the same transaction is recorded as locked by itself; a write by a
// transaction after the locking one has ended is not. Each probe write is undone.
func probe(t *testing.T, env *fleettest.Env, id int64) {
	t.Helper()
	ctx := context.Background()
	for _, locked := range []bool{true, false} {
		tx, err := env.DB.BeginTx(ctx, nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := tx.ExecContext(ctx, `SELECT id FROM credentials WHERE id = ? FOR UPDATE`, id); err != nil {
			t.Fatal(err)
		}
		if !locked {
			// The lock ends with its transaction; the write comes from a new one.
			if err := tx.Commit(); err != nil {
				t.Fatal(err)
			}
			if tx, err = env.DB.BeginTx(ctx, nil); err != nil {
				t.Fatal(err)
			}
		}
		var self bool
		if _, err := tx.ExecContext(ctx, `UPDATE credentials SET access_token = access_token || 'x' WHERE id = ?`, id); err != nil {
			t.Fatal(err)
		}
		if err := tx.QueryRowContext(ctx, `SELECT locked_by_self FROM token_writes`).Scan(&self); err != nil {
			t.Fatal(err)
		}
		if err := tx.Rollback(); err != nil {
			t.Fatal(err)
		}
		if self != locked {
			t.Fatalf("recording trigger: locked_by_self = %v for a write %s the writer's own lock", self, map[bool]string{true: "under", false: "without"}[locked])
		}
	}
}
