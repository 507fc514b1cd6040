-- The claim/call/commit protocol replaces the attempt marker: a claim is written and
-- committed durably by the short transaction that locked the credential, before any
-- provider call, and cleared by the transaction that stores the call's result.
DROP TABLE IF EXISTS refresh_attempts;

--bun:split

-- The claim lives on the credential's own row, not beside it: a SELECT ... FOR UPDATE
-- that waited for another claimer returns the row as that claimer committed it, claim
-- included, whereas a joined table would still be read from the snapshot taken before
-- the wait. claim_id fences the commit step (an attempt whose claim expired and was
-- taken over must not write); the expiry is by the database's clock.
ALTER TABLE credentials
    ADD COLUMN IF NOT EXISTS claim_id         bigint      NULL,
    ADD COLUMN IF NOT EXISTS claim_owner      text        NULL,
    ADD COLUMN IF NOT EXISTS claim_started_at timestamptz NULL,
    ADD COLUMN IF NOT EXISTS claim_expires_at timestamptz NULL;
