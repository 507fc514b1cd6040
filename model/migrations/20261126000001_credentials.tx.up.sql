CREATE TABLE IF NOT EXISTS credentials (
    id            bigserial   PRIMARY KEY,
    account_id    bigint      NOT NULL,
    service       text        NOT NULL,
    access_token  text        NOT NULL,
    refresh_token text        NOT NULL,
    expires_at    timestamptz NOT NULL,
    refreshed_at  timestamptz NULL,
    version       bigint      NOT NULL DEFAULT 0,
    status        text        NOT NULL DEFAULT 'active'
                  CHECK (status IN ('active', 'reauth_required')),
    failures      int         NOT NULL DEFAULT 0,
    last_error    text        NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT credentials_account_service_key UNIQUE (account_id, service)
);

--bun:split

-- The publisher pages through "service = ? and expires_at < ?" by id (keyset), so the
-- index is ordered by (service, id) and carries expires_at for the filter; only active
-- rows are ever scheduled, which keeps it partial and small.
CREATE INDEX IF NOT EXISTS credentials_schedule_idx
    ON credentials (service, id) INCLUDE (expires_at)
    WHERE status = 'active';
