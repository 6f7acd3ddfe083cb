-- An event's available tickets spread over several rows (issue 13): concurrent grants take
-- different rows instead of queueing on one row lock (shared/ticketing/inventory.py).
--
-- events.shards: how many stock rows the event has, fixed at creation (INVENTORY_SHARDS,
-- fewer for small events). events.gate_seq: bumped, together with every stock row's copy,
-- by each writer that changes what the grant rules read on the event (cancel, times,
-- limits, capacity), so a grant that read the event before such a change and then got a
-- stock row written by it sees the two numbers differ and grants nothing (it then takes
-- the exact path, which locks every row and reads the event again).
ALTER TABLE events
    ADD COLUMN shards integer NOT NULL DEFAULT 1 CHECK (shards BETWEEN 1 AND 1024),
    ADD COLUMN gate_seq bigint NOT NULL DEFAULT 0;

CREATE TABLE event_stock (
    event_id          bigint  NOT NULL REFERENCES events (id),
    shard             integer NOT NULL CHECK (shard >= 0),
    available_tickets integer NOT NULL CHECK (available_tickets >= 0),
    gate_seq          bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (event_id, shard)
) WITH (fillfactor = 50);  -- updated in place by every grant: room for HOT updates

-- Existing events keep one row holding what they had: exactly the one-row design they ran
-- on, with no split decided by SQL at deploy time for events already on sale. New events
-- get their rows from the settings.
INSERT INTO event_stock (event_id, shard, available_tickets)
SELECT id, 0, available_tickets FROM events;

-- The sum of the stock rows is the only count: a column left behind would go stale.
-- (Its CHECKs, >= 0 and <= total_tickets, go with it; the rows keep >= 0, and every
-- writer keeps the sum within total_tickets under the lock of every row.)
ALTER TABLE events DROP COLUMN available_tickets;
