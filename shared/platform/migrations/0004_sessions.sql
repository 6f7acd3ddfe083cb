-- Sessions: rotating refresh tokens (stored hashed), revocable one login at a time.

-- One row per login: the refresh-token family. Revoking it ends the login everywhere:
-- refresh here, access tokens through a Redis key named by the session id.
CREATE TABLE sessions (
    id             uuid        PRIMARY KEY,
    user_id        bigint      NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    created_at     timestamptz NOT NULL DEFAULT now(),
    -- When its newest access token was issued: a revocation publishes only sessions
    -- whose access tokens can still be alive.
    last_issued_at timestamptz NOT NULL DEFAULT now(),
    revoked_at     timestamptz,
    revoked_reason text
);
CREATE INDEX sessions_user_live_idx ON sessions (user_id) WHERE revoked_at IS NULL;

-- Each refresh token is used once: rotation marks it used and issues its successor in the
-- same family. Presenting a used one again is theft: the whole family is revoked.
CREATE TABLE refresh_tokens (
    token_hash bytea       PRIMARY KEY,
    session_id uuid        NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL,
    used_at    timestamptz
);
CREATE INDEX refresh_tokens_session_idx ON refresh_tokens (session_id);
