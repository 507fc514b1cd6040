DROP INDEX IF EXISTS credentials_claims_idx;

--bun:split

DROP INDEX IF EXISTS credentials_failures_idx;
