DROP INDEX IF EXISTS credentials_claims_idx;

--bun:split

DROP INDEX IF EXISTS credentials_updated_at_idx;
