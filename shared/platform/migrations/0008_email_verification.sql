-- Email verification: mail other than the verification itself goes only to verified
-- addresses (REQUIRE_VERIFIED_EMAIL), so the platform cannot be used to mail strangers.

ALTER TABLE users ADD COLUMN email_verified_at timestamptz;

-- Single-use, expiring tokens. Only a SHA-256 of the token is stored: the token itself
-- exists in the worker's memory and in the email, never in PostgreSQL, Redis or a dead
-- letter. `email` is the address the token was mailed to: it verifies that address only.
CREATE TABLE email_verification_tokens (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    user_id     bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    email       text        NOT NULL,
    token_hash  bytea       NOT NULL UNIQUE CHECK (length(token_hash) = 32),
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    used_at     timestamptz,
    -- a newer token was requested: this one no longer works
    revoked_at  timestamptz
);
CREATE INDEX email_verification_tokens_live_idx
    ON email_verification_tokens (user_id) WHERE used_at IS NULL AND revoked_at IS NULL;
-- The periodic tidy deletes tokens long past expiry (used or not, none can work then).
CREATE INDEX email_verification_tokens_expiry_idx ON email_verification_tokens (expires_at);

-- A delivery key now also records a notification deliberately not sent (the address is
-- not verified), so a redelivered task skips it instead of retrying forever, and the
-- `Notified N users` count is of mails really sent.
ALTER TABLE notification_deliveries
    ADD COLUMN status text NOT NULL DEFAULT 'sent' CHECK (status IN ('sent', 'skipped_unverified'));
-- Verifying releases the user's held one-to-one notifications (small: skipped rows only).
CREATE INDEX notification_deliveries_skipped_idx
    ON notification_deliveries (user_id) WHERE status = 'skipped_unverified';
