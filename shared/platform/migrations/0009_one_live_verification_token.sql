-- At most one live (unused, unrevoked) verification token per user: a resend racing
-- the first mail can no longer leave two working tokens. Minting locks the user row so
-- the later send revokes the earlier token; this index makes that a rule of the data.

-- Older concurrent sends may have left several live tokens: keep each user's newest.
UPDATE email_verification_tokens t SET revoked_at = now()
 WHERE t.used_at IS NULL AND t.revoked_at IS NULL
   AND EXISTS (SELECT 1 FROM email_verification_tokens n
                WHERE n.user_id = t.user_id AND n.used_at IS NULL AND n.revoked_at IS NULL
                  AND n.id > t.id);

CREATE UNIQUE INDEX email_verification_tokens_one_live_idx
    ON email_verification_tokens (user_id) WHERE used_at IS NULL AND revoked_at IS NULL;
-- The unique index serves every lookup the old partial index did.
DROP INDEX email_verification_tokens_live_idx;
