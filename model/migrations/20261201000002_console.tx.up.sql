-- refresher console: the overview's "per minute over the last hour" chart reads the
-- rows changed in the last hour (refreshes and failures both set updated_at), and its
-- in-flight column counts live claims. (Plain CREATE INDEX: migrations run under an
-- advisory lock that a concurrent build would wait on. On a million rows each build
-- takes about a second, during which writes to credentials wait.)
CREATE INDEX IF NOT EXISTS credentials_updated_at_idx
    ON credentials (updated_at);

--bun:split

CREATE INDEX IF NOT EXISTS credentials_claims_idx
    ON credentials (claim_expires_at) INCLUDE (service, claim_owner)
    WHERE claim_id IS NOT NULL;
