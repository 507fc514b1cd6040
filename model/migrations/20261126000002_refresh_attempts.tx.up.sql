-- A refresh attempt in flight: written (and committed) just before a provider call, on
-- a connection other than the one holding the row lock, and deleted by the commit that
-- stores the call's result. If that transaction dies after the provider rotated the
-- token (a killed connection, a database restart), the row here tells other consumers
-- that the stored refresh token may already be replaced and its replacement is being
-- saved, so they wait instead of presenting it. No foreign key: checking one would
-- take a KEY SHARE lock on the credential, which the FOR UPDATE holder blocks.
CREATE TABLE IF NOT EXISTS refresh_attempts (
    credential_id bigint      PRIMARY KEY,
    version       bigint      NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now()
);
