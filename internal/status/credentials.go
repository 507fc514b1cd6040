package status

import (
	"context"
	"fmt"
	"time"

	"github.com/uptrace/bun"

	"github.com/refresher/refresher/model"
)

// CredentialReport is the credentials table by service.
type CredentialReport struct {
	// TableExists is false until `refresher migrate` has run.
	TableExists bool `json:"table_exists"`
	// Window is the "expires soon" horizon, like "30m0s".
	Window string `json:"window"`
	// Services are sorted by name.
	Services []ServiceCredentials `json:"services"`
	// Total sums every service (Service is empty).
	Total ServiceCredentials `json:"total"`
}

// ServiceCredentials counts one service's credentials. Expiry and freshness count
// only active rows: reauth_required rows are never refreshed, by design, so their
// age says nothing about the fleet.
type ServiceCredentials struct {
	Service string `json:"service,omitempty"`
	Total   int64  `json:"total"`
	// ByStatus counts rows per status (active, reauth_required).
	ByStatus map[string]int64 `json:"by_status"`
	// Expired active rows hold an access token already past expires_at.
	Expired int64 `json:"expired"`
	// ExpiringWithinWindow active rows expire after now and at most Window from now.
	ExpiringWithinWindow int64 `json:"expiring_within_window"`
	// NeverRefreshed active rows have no refreshed_at.
	NeverRefreshed int64 `json:"never_refreshed"`
	// OldestRefreshedAt is the least recent refreshed_at among active rows; null if
	// none was ever refreshed.
	OldestRefreshedAt *time.Time `json:"oldest_refreshed_at"`
}

type credentialRow struct {
	Service        string     `bun:"service"`
	Status         string     `bun:"status"`
	Total          int64      `bun:"total"`
	Expired        int64      `bun:"expired"`
	Expiring       int64      `bun:"expiring"`
	NeverRefreshed int64      `bun:"never_refreshed"`
	Oldest         *time.Time `bun:"oldest"`
}

// credentialReport counts the table in one pass, grouped by service and status.
func credentialReport(ctx context.Context, db bun.IDB, now time.Time, window time.Duration) (CredentialReport, error) {
	rep := CredentialReport{Window: window.String(), Services: []ServiceCredentials{}, Total: newService("")}
	// to_regclass follows search_path like the queries do, so "exists" means "the
	// queries below would find it".
	if err := db.NewRaw("SELECT to_regclass('credentials') IS NOT NULL").Scan(ctx, &rep.TableExists); err != nil {
		return rep, fmt.Errorf("look up the credentials table: %w", err)
	}
	if !rep.TableExists {
		return rep, nil
	}
	var rows []credentialRow
	err := db.NewSelect().Model((*model.Credential)(nil)).
		Column("service", "status").
		ColumnExpr("count(*) AS total").
		ColumnExpr("count(*) FILTER (WHERE expires_at <= ?) AS expired", now).
		ColumnExpr("count(*) FILTER (WHERE expires_at > ? AND expires_at <= ?) AS expiring", now, now.Add(window)).
		ColumnExpr("count(*) FILTER (WHERE refreshed_at IS NULL) AS never_refreshed").
		ColumnExpr("min(refreshed_at) AS oldest").
		GroupExpr("service, status").
		OrderExpr("service, status").
		Scan(ctx, &rows)
	if err != nil {
		return rep, fmt.Errorf("count credentials: %w", err)
	}
	for _, r := range rows {
		if n := len(rep.Services); n == 0 || rep.Services[n-1].Service != r.Service {
			rep.Services = append(rep.Services, newService(r.Service))
		}
		for _, s := range []*ServiceCredentials{&rep.Services[len(rep.Services)-1], &rep.Total} {
			s.Total += r.Total
			s.ByStatus[r.Status] += r.Total
			if r.Status != model.StatusActive {
				continue
			}
			s.Expired += r.Expired
			s.ExpiringWithinWindow += r.Expiring
			s.NeverRefreshed += r.NeverRefreshed
			if r.Oldest != nil && (s.OldestRefreshedAt == nil || r.Oldest.Before(*s.OldestRefreshedAt)) {
				s.OldestRefreshedAt = utc(*r.Oldest)
			}
		}
	}
	return rep, nil
}

// newService has a zero count for each known status, so both always appear.
func newService(name string) ServiceCredentials {
	return ServiceCredentials{Service: name, ByStatus: map[string]int64{
		model.StatusActive: 0, model.StatusReauthRequired: 0,
	}}
}
