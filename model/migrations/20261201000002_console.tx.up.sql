-- refresher console: the overview's "failed per minute over the last hour" reads the
-- failing rows changed in the last hour, and its in-flight column counts live claims.
-- Both indexes are partial, so the fleet's ordinary refreshes (failures 0, no claim
-- after the commit) add no entry to them. (Plain CREATE INDEX: migrations run under an
-- advisory lock that a concurrent build would wait on.)
CREATE INDEX IF NOT EXISTS credentials_failures_idx
    ON credentials (updated_at) INCLUDE (service)
    WHERE failures > 0;

--bun:split

CREATE INDEX IF NOT EXISTS credentials_claims_idx
    ON credentials (claim_expires_at) INCLUDE (service, claim_owner)
    WHERE claim_id IS NOT NULL;
