// Package verify checks every credential in the database against the fake provider,
// the oracle that knows which refresh token it issued last: "nothing lost" is checked,
// not assumed.
package verify

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/uptrace/bun"

	"github.com/refresher/refresher/internal/seed"
	"github.com/refresher/refresher/model"
	"github.com/refresher/refresher/provider/fake"
)

// Oracle knows the latest refresh token of each lineage.
type Oracle interface {
	// Verify returns nil when stored is the token the provider would accept next.
	Verify(ctx context.Context, lineage, stored string) error
	// Misuse counts replaced or unknown refresh tokens ever sent to the provider.
	Misuse(ctx context.Context) (int, error)
}

// Report is the outcome of a check.
type Report struct {
	Rows           int
	Good           int
	ReauthRequired int
	Lost           int
	// Misuse is the provider's count of replaced (or never issued) tokens presented.
	Misuse int
	// Examples are the first few problems, free of token values.
	Examples []string
}

// OK is true when every row holds the latest token and none is marked
// reauth_required, and no replaced token was ever sent.
func (r Report) OK() bool { return r.Lost == 0 && r.ReauthRequired == 0 && r.Misuse == 0 }

func (r Report) String() string {
	return fmt.Sprintf("rows=%d good=%d lost=%d reauth_required=%d replaced_tokens_sent=%d",
		r.Rows, r.Good, r.Lost, r.ReauthRequired, r.Misuse)
}

// Check compares every row of services (all when empty) with the oracle.
func Check(ctx context.Context, db bun.IDB, o Oracle, services ...string) (Report, error) {
	return CheckSealed(ctx, db, nil, o, services...)
}

// CheckSealed is Check for a table whose tokens are sealed by k.
func CheckSealed(ctx context.Context, db bun.IDB, k *model.Keyring, o Oracle, services ...string) (Report, error) {
	var rep Report
	var last int64
	for {
		var page []model.Credential
		q := db.NewSelect().Model(&page).Column("id", "account_id", "service", "refresh_token", "status").
			Where("id > ?", last).OrderExpr("id").Limit(1000)
		if len(services) > 0 {
			q = q.Where("service IN (?)", bun.In(services))
		}
		if err := q.Scan(ctx); err != nil {
			return rep, fmt.Errorf("read credentials after id %d: %w", last, err)
		}
		if len(page) == 0 {
			break
		}
		for _, c := range page {
			rep.Rows++
			rt, err := k.Open("refresh_token", c.RefreshToken)
			if err == nil {
				err = o.Verify(ctx, seed.Lineage(c.Service, c.AccountID), rt)
			}
			switch {
			case err != nil:
				rep.Lost++
				rep.example(fmt.Sprintf("credential %d: %v", c.ID, err))
			case c.Status != model.StatusActive:
				rep.ReauthRequired++
				rep.example(fmt.Sprintf("credential %d: status %s", c.ID, c.Status))
			default:
				rep.Good++
			}
		}
		last = page[len(page)-1].ID
	}
	n, err := o.Misuse(ctx)
	if err != nil {
		return rep, err
	}
	rep.Misuse = n
	return rep, nil
}

func (r *Report) example(s string) {
	if len(r.Examples) < 10 {
		r.Examples = append(r.Examples, s)
	}
}

// Local is an Oracle backed by an in-process fake provider.
type Local struct{ P *fake.Provider }

// Verify implements Oracle.
func (l Local) Verify(_ context.Context, lineage, stored string) error {
	return l.P.Verify(lineage, stored)
}

// Misuse implements Oracle.
func (l Local) Misuse(context.Context) (int, error) {
	s := l.P.Stats()
	return s.Reuses + s.Unrecognized, nil
}

// Remote is an Oracle backed by a `refresher fake-provider` over HTTP.
type Remote struct {
	BaseURL string
	Client  *http.Client
}

func (r Remote) client() *http.Client {
	if r.Client != nil {
		return r.Client
	}
	return &http.Client{Timeout: 10 * time.Second}
}

func (r Remote) get(ctx context.Context, path string, out any) (int, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimRight(r.BaseURL, "/")+path, nil)
	if err != nil {
		return 0, err
	}
	resp, err := r.client().Do(req)
	if err != nil {
		return 0, fmt.Errorf("ask fake provider: %w", err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return resp.StatusCode, nil
	}
	return resp.StatusCode, json.NewDecoder(resp.Body).Decode(out)
}

// Verify implements Oracle.
func (r Remote) Verify(ctx context.Context, lineage, stored string) error {
	var latest struct {
		RefreshToken string `json:"refresh_token"`
		Generation   int    `json:"generation"`
	}
	status, err := r.get(ctx, "/latest?lineage="+url.QueryEscape(lineage), &latest)
	if err != nil {
		return err
	}
	gen, _ := fake.Generation(stored)
	switch {
	case status == http.StatusNotFound && gen == 0:
		return nil // never refreshed: the seeded token is still the latest
	case status == http.StatusNotFound:
		return fmt.Errorf("lineage %s: stored generation %d but the provider never saw it", lineage, gen)
	case status != http.StatusOK:
		return fmt.Errorf("lineage %s: fake provider answered %d", lineage, status)
	case latest.RefreshToken != stored:
		return fmt.Errorf("lineage %s: stored generation %d, latest is %d (lost update)", lineage, gen, latest.Generation)
	}
	return nil
}

// Misuse implements Oracle.
func (r Remote) Misuse(ctx context.Context) (int, error) {
	var s fake.Stats
	status, err := r.get(ctx, "/stats", &s)
	if err != nil {
		return 0, err
	}
	if status != http.StatusOK {
		return 0, errors.New("fake provider /stats answered " + http.StatusText(status))
	}
	return s.Reuses + s.Unrecognized, nil
}
