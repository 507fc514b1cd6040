package bench

import (
	"context"
	"fmt"
	"time"
)

// DBDelta is what one run did to the database, read from PostgreSQL's own counters
// for the bench database (pg_stat_database), and from the WAL position.
type DBDelta struct {
	Messages int64 `json:"messages"`
	// Commits and Rollbacks are transactions ended in the bench database; they
	// include the pool's occasional liveness pings (empty transactions).
	Commits   int64 `json:"commits"`
	Rollbacks int64 `json:"rollbacks"`
	// RowsUpdated is tup_updated: row versions written by UPDATE.
	RowsUpdated int64 `json:"rows_updated"`
	// WALBytes is pg_current_wal_lsn() after minus before. It is the whole
	// server's: other sessions writing at the same time add to it.
	WALBytes int64 `json:"wal_bytes"`
}

// perMessage divides a count by the run's messages.
func (d DBDelta) perMessage(v int64) float64 {
	if d.Messages == 0 {
		return 0
	}
	return float64(v) / float64(d.Messages)
}

type dbSnapshot struct {
	commits, rollbacks, updated int64
	lsn                         string
}

// snapshot reads the counters through the admin connection, which is in another
// database, so that reading them is not itself a transaction they count.
func (r *rig) snapshot(ctx context.Context) (dbSnapshot, error) {
	var s dbSnapshot
	err := r.admin.QueryRow(ctx, `SELECT xact_commit, xact_rollback, tup_updated, pg_current_wal_lsn()::text
		FROM pg_stat_database WHERE datname = $1`, r.dbName).Scan(&s.commits, &s.rollbacks, &s.updated, &s.lsn)
	if err != nil {
		return s, fmt.Errorf("read pg_stat_database: %w", err)
	}
	return s, nil
}

// quiesce waits until no client connection to the bench database is left. A
// backend flushes its statistics when it exits, but an idle one may hold them for
// ten seconds, so the counters are complete only once every pool that worked in the
// database is closed and its backends are gone. The bench's own set-up pool keeps
// no idle connections for that reason.
func (r *rig) quiesce(ctx context.Context) error {
	deadline := time.Now().Add(15 * time.Second)
	for {
		var n int
		if err := r.admin.QueryRow(ctx, `SELECT count(*) FROM pg_stat_activity
			WHERE datname = $1 AND backend_type = 'client backend'`, r.dbName).Scan(&n); err != nil {
			return fmt.Errorf("count connections to %s: %w", r.dbName, err)
		}
		if n == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%d connections to %s still open after 15s", n, r.dbName)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// before takes the snapshot a run is measured from, once the counters are settled.
func (r *rig) before(ctx context.Context) (dbSnapshot, error) {
	if err := r.quiesce(ctx); err != nil {
		return dbSnapshot{}, err
	}
	return r.snapshot(ctx)
}

// since measures the run of messages that began at before; the run's pools must be
// closed. The WAL position is the whole server's and is read first, before waiting.
func (r *rig) since(ctx context.Context, before dbSnapshot, messages int) (DBDelta, error) {
	d := DBDelta{Messages: int64(messages)}
	if err := r.admin.QueryRow(ctx, "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::pg_lsn)::bigint", before.lsn).Scan(&d.WALBytes); err != nil {
		return d, fmt.Errorf("read WAL position: %w", err)
	}
	if err := r.quiesce(ctx); err != nil {
		return d, err
	}
	now, err := r.snapshot(ctx)
	if err != nil {
		return d, err
	}
	d.Commits = now.commits - before.commits
	d.Rollbacks = now.rollbacks - before.rollbacks
	d.RowsUpdated = now.updated - before.updated
	if d.Commits+d.Rollbacks < d.Messages {
		return d, fmt.Errorf("pg_stat_database counted %d transactions for %d messages", d.Commits+d.Rollbacks, d.Messages)
	}
	return d, nil
}
