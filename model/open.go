package model

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/uptrace/bun"
	"github.com/uptrace/bun/dialect/pgdialect"
)

// ApplicationName is the application_name of the connections Open makes, unless the
// URL names one: `refresher status` counts the fleet's connections by it. The binary
// sets it to "refresher-<command>".
var ApplicationName = "refresher"

// Open connects to PostgreSQL at url through pgx and returns a Bun handle whose pool
// holds at most maxConns connections (0: database/sql's default, unlimited). It pings
// before returning so a wrong URL fails here, not on the first message.
func Open(ctx context.Context, url string, maxConns int) (*bun.DB, error) {
	cfg, err := parseURL(url)
	if err != nil {
		return nil, err
	}
	// Bun renders every value into the SQL text itself, so no statement is ever reused
	// with new parameters: preparing each one (pgx's default) costs an extra round trip
	// and churns its statement cache. The simple protocol sends each in one.
	cfg.DefaultQueryExecMode = pgx.QueryExecModeSimpleProtocol
	if cfg.RuntimeParams["application_name"] == "" {
		cfg.RuntimeParams["application_name"] = ApplicationName
	}
	sqldb := stdlib.OpenDB(*cfg)
	if maxConns > 0 {
		sqldb.SetMaxOpenConns(maxConns)
		sqldb.SetMaxIdleConns(maxConns)
	}
	// A burst's connections go back to the server within seconds: an application sharing
	// the database must not be locked out by connections refresher merely keeps.
	sqldb.SetConnMaxIdleTime(5 * time.Second)
	db := bun.NewDB(sqldb, pgdialect.New())
	pingCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if err := db.PingContext(pingCtx); err != nil {
		db.Close()
		if Unreachable(err) {
			return nil, fmt.Errorf("PostgreSQL at %s is unreachable (nothing answered there; is the server running, and are host and port right?): %w", RedactURL(url), err)
		}
		return nil, fmt.Errorf("connect to PostgreSQL at %s: %w", RedactURL(url), err)
	}
	return db, nil
}

// Unreachable reports whether err from connecting means no server answered (refused,
// timed out, unknown host), as opposed to a server that answered and refused.
func Unreachable(err error) bool {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return false
	}
	var netErr net.Error
	var dnsErr *net.DNSError
	return errors.As(err, &netErr) || errors.As(err, &dnsErr) || errors.Is(err, context.DeadlineExceeded)
}

// Stats exposes pool statistics (used by health checks and tests).
func Stats(db *bun.DB) sql.DBStats { return db.DB.Stats() }
