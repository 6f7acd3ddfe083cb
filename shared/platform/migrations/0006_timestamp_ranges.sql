-- Event times a client sets stay where Python can read them back (security review, item 2).
--
-- The API accepts RFC 3339 times written in years 1900-2999 with an offset of at most 23:59
-- (shared/schemas.py, Timestamp), so every accepted value lies in
-- [1899-12-31 00:00 UTC, 3000-01-02 00:00 UTC). The database now refuses anything else, so
-- no code path can store a time that breaks reads (year 10000, 'infinity', BC dates).
--
-- Repair first: a stored time outside that window (only possible before this migration)
-- becomes NULL, i.e. "not announced", which both columns already allow; the event stays
-- listed and bookable and drops out of ?order=upcoming until its organizer sets a new time.
-- updated_at marks the change. The count of repaired events is reported as a NOTICE.

DO $$
DECLARE
    repaired integer;
BEGIN
    UPDATE events
       SET start_time = CASE
                            WHEN start_time >= '1899-12-31 00:00:00+00' AND start_time < '3000-01-02 00:00:00+00'
                            THEN start_time
                        END,
           end_time   = CASE
                            WHEN end_time >= '1899-12-31 00:00:00+00' AND end_time < '3000-01-02 00:00:00+00'
                            THEN end_time
                        END,
           updated_at = now()
     WHERE NOT (start_time >= '1899-12-31 00:00:00+00' AND start_time < '3000-01-02 00:00:00+00')
        OR NOT (end_time >= '1899-12-31 00:00:00+00' AND end_time < '3000-01-02 00:00:00+00');
    GET DIAGNOSTICS repaired = ROW_COUNT;
    IF repaired > 0 THEN
        RAISE NOTICE 'migration 0006: % event(s) had a start or end time outside 1899-12-31..3000-01-02 UTC; set to NULL', repaired;
    END IF;
END
$$;

-- Named *_in_range: the API maps a violation of these to 422 invalid_value (shared/web.py).
ALTER TABLE events
    ADD CONSTRAINT events_start_time_in_range
        CHECK (start_time >= '1899-12-31 00:00:00+00' AND start_time < '3000-01-02 00:00:00+00'),
    ADD CONSTRAINT events_end_time_in_range
        CHECK (end_time >= '1899-12-31 00:00:00+00' AND end_time < '3000-01-02 00:00:00+00');
