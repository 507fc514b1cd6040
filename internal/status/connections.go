package status

import (
	"context"
	"fmt"
	"strconv"

	"github.com/uptrace/bun"
)

// ConnectionReport is what the database shows of the connections refresher holds:
// every refresher process names its connections "refresher-<command>"
// (application_name), so the fleet's footprint is visible without asking it.
type ConnectionReport struct {
	// Visible is false when the role may not read pg_stat_activity of this database.
	Visible bool `json:"visible"`
	// ByApplication counts refresher's connections to this database by application
	// name ("refresher-consume", "refresher-publish", ...) and state.
	ByApplication []ConnectionCount `json:"by_application"`
	// Refresher is their total.
	Refresher int `json:"refresher"`
	// Server is every client connection of the server, any database, any client.
	Server int `json:"server"`
	// MaxConnections is the server's max_connections.
	MaxConnections int `json:"max_connections"`
}

// ConnectionCount is one application name and state's connection count. State is
// "active", "idle", "idle in transaction", ..., or "" when the role may not see it.
type ConnectionCount struct {
	Application string `json:"application"`
	State       string `json:"state"`
	Count       int    `json:"count"`
}

func connectionReport(ctx context.Context, db bun.IDB) (ConnectionReport, error) {
	var r ConnectionReport
	var max string
	if err := db.QueryRowContext(ctx, "SHOW max_connections").Scan(&max); err != nil {
		return r, fmt.Errorf("read max_connections: %w", err)
	}
	var err error
	if r.MaxConnections, err = strconv.Atoi(max); err != nil {
		return r, fmt.Errorf("max_connections %q: %w", max, err)
	}
	rows, err := db.QueryContext(ctx, `
		SELECT coalesce(application_name, ''), coalesce(state, ''), count(*)
		FROM pg_stat_activity
		WHERE datname = current_database() AND application_name LIKE 'refresher%'
		GROUP BY 1, 2 ORDER BY 1, 2`)
	if err != nil {
		return r, fmt.Errorf("read pg_stat_activity: %w", err)
	}
	defer rows.Close()
	for rows.Next() {
		var c ConnectionCount
		if err := rows.Scan(&c.Application, &c.State, &c.Count); err != nil {
			return r, err
		}
		r.ByApplication = append(r.ByApplication, c)
		r.Refresher += c.Count
	}
	if err := rows.Err(); err != nil {
		return r, err
	}
	if err := db.QueryRowContext(ctx, `SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'`).Scan(&r.Server); err != nil {
		return r, fmt.Errorf("count server connections: %w", err)
	}
	r.Visible = true
	return r, nil
}
