-- One normalization of emails (shared/emails.py): users are found and kept unique by
-- email_key (NFKC case fold, computed in Python), and look-alike addresses are refused by
-- email_skeleton. email stays as the user typed it, for display and mail.
--
-- Backfill: for ASCII addresses (all of them in practice) the expressions below are exactly
-- what Python computes: NFKC is the identity on ASCII, case folding is lower(), and the
-- replace() chain is the skeleton's ASCII table (tests/test_emails.py checks they agree).
-- Other addresses get a close approximation here; `python -m shared.emails rekey`
-- recomputes every row in Python. A row whose key or skeleton an older row already has
-- (a look-alike duplicate registered before this check) keeps NULL: it cannot sign in
-- until an operator settles it, and a NOTICE counts such rows.

ALTER TABLE users
    ADD COLUMN email_key      text,
    ADD COLUMN email_skeleton text;

UPDATE users SET email_key = lower(normalize(btrim(email), NFKC));
UPDATE users SET email_skeleton =
    replace(replace(replace(replace(replace(replace(replace(email_key,
        '"', ''''''), '%', 'º/₀'), '0', 'o'), '1', 'l'), '`', ''''), 'm', 'rn'), '|', 'l');

DO $$
DECLARE
    dropped integer;
BEGIN
    WITH ranked AS (
        SELECT id,
               row_number() OVER (PARTITION BY email_key ORDER BY id) AS by_key,
               row_number() OVER (PARTITION BY email_skeleton ORDER BY id) AS by_skeleton
          FROM users
    )
    UPDATE users u SET email_key = NULL, email_skeleton = NULL
      FROM ranked r
     WHERE r.id = u.id AND (r.by_key > 1 OR r.by_skeleton > 1);
    GET DIAGNOSTICS dropped = ROW_COUNT;
    IF dropped > 0 THEN
        RAISE NOTICE '% look-alike duplicate user(s) left without an email key', dropped;
    END IF;
END $$;

-- New rows always have both (shared/users.py); NULL only for the duplicates above.
CREATE UNIQUE INDEX users_email_key_key ON users (email_key);
CREATE UNIQUE INDEX users_email_skeleton_key ON users (email_skeleton);
-- Replaced by email_key: lower() follows the database's locale, not the application's rule.
DROP INDEX users_email_lower_key;
