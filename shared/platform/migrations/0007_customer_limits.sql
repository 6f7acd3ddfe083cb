-- Per-customer ticket limits and per-event hold lifetimes.

-- NULL: the server default (MAX_TICKETS_PER_CUSTOMER, never below the event's per-booking
-- maximum; HOLD_TTL_MAX_SECONDS).
ALTER TABLE events
    ADD COLUMN max_tickets_per_customer integer CHECK (max_tickets_per_customer BETWEEN 1 AND 1000000),
    ADD COLUMN max_hold_seconds integer CHECK (max_hold_seconds BETWEEN 1 AND 86400);

-- What one customer has of one event: confirmed bookings' current quantity plus active
-- holds (those past expires_at included until something reclaims them, like
-- events.available_tickets). Every writer locks the event row first, then this row.
--
-- A claim sets limit_at_claim to the event's limit as it is now, in the same statement
-- that adds the tickets, so the CHECK aborts a claim that would pass the limit: atomic
-- under any concurrency, and a limit lowered below what a customer has refuses new
-- claims while what they have stays. Decrements leave limit_at_claim alone.
CREATE TABLE customer_tickets (
    event_id       bigint  NOT NULL REFERENCES events (id),
    user_id        bigint  NOT NULL REFERENCES users (id),
    tickets        integer NOT NULL CHECK (tickets >= 0),
    limit_at_claim integer NOT NULL,
    PRIMARY KEY (event_id, user_id),
    CONSTRAINT customer_tickets_within_limit CHECK (tickets <= limit_at_claim)
) WITH (fillfactor = 70);  -- updated in place by every claim: room for HOT updates

INSERT INTO customer_tickets (event_id, user_id, tickets, limit_at_claim)
SELECT event_id, user_id, sum(quantity), sum(quantity)
  FROM (SELECT event_id, user_id, quantity FROM bookings WHERE status = 'confirmed'
        UNION ALL
        SELECT event_id, user_id, quantity FROM holds WHERE status = 'active') AS taken
 GROUP BY event_id, user_id;
