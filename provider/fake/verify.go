package fake

import (
	"fmt"
)

// VerifyError says how a stored refresh token differs from what the provider
// expects. It carries generations, never token values, so it is safe to print
// in test failures and logs.
type VerifyError struct {
	Lineage string
	// StoredGen is the stored token's generation, -1 when it cannot be parsed.
	StoredGen int
	// LatestGen is the provider's current generation, -1 when the lineage was
	// never presented to it.
	LatestGen int
	// Reason is a short explanation, e.g. "stale" or "never issued".
	Reason string
}

func (e *VerifyError) Error() string {
	latest := "never presented to the provider"
	if e.LatestGen >= 0 {
		latest = fmt.Sprintf("latest is generation %d", e.LatestGen)
	}
	stored := "stored refresh token is malformed"
	if e.StoredGen >= 0 {
		stored = fmt.Sprintf("stored refresh token is generation %d", e.StoredGen)
	}
	return fmt.Sprintf("fake provider: lineage %s: %s, %s: %s", e.Lineage, stored, latest, e.Reason)
}

// Verify checks a refresh token read from the database against the provider's
// view of lineage: it returns nil when the next refresh with that token would
// succeed without a grace period, and a *VerifyError otherwise. A lineage never
// presented is expected to still hold its seeded generation-0 token.
func (p *Provider) Verify(lineage, storedRefreshToken string) error {
	verr := &VerifyError{Lineage: lineage, StoredGen: -1, LatestGen: -1}
	pt, wellFormed := parseRefresh(storedRefreshToken)
	if wellFormed {
		verr.StoredGen = pt.gen
	}

	p.mu.Lock()
	st, known := p.lineages[lineage]
	var latest string
	issuedGen, issued := 0, false
	if known {
		latest = st.refresh
		verr.LatestGen = st.gen
		issuedGen, issued = st.issued[storedRefreshToken]
	}
	p.mu.Unlock()

	switch {
	case !wellFormed:
		verr.Reason = "not a refresh token"
	case pt.lineage != lineage:
		verr.Reason = "token belongs to lineage " + pt.lineage
	case !known && pt.gen == 0:
		return nil
	case !known:
		verr.Reason = "rotated without the provider (was the provider restarted?)"
	case storedRefreshToken == latest:
		return nil
	case issued:
		verr.StoredGen = issuedGen
		verr.Reason = "stale: the provider rotated it (lost update)"
	default:
		verr.Reason = "never issued by the provider"
	}
	return verr
}
