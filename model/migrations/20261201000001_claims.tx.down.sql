ALTER TABLE credentials
    DROP COLUMN IF EXISTS claim_id,
    DROP COLUMN IF EXISTS claim_owner,
    DROP COLUMN IF EXISTS claim_started_at,
    DROP COLUMN IF EXISTS claim_expires_at;

--bun:split

CREATE TABLE IF NOT EXISTS refresh_attempts (
    credential_id bigint      PRIMARY KEY,
    version       bigint      NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now()
);
