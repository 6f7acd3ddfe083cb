-- Ticket types, quotas, multi-line orders, access codes (issue 14).
--
-- An event sells ticket types; a quota is a capacity shared by one or more types of one
-- event; a type sits in every quota that lists it and is available only while each has room.
-- Every event has exactly one event quota (events.total_tickets is its size) listing every
-- type, so the seed's model is the one-type, one-quota case. A quota's available tickets are
-- spread over its stock rows (quota_stock, issue 13's sharding, now per quota).
--
-- Lock order everywhere: the event row, then stock rows in (quota_id, shard) order, then
-- access codes, holds, bookings, customer counters.

ALTER TABLE events
    ADD COLUMN currency char(3) NOT NULL DEFAULT 'EUR' CHECK (currency ~ '^[A-Z]{3}$');

CREATE TABLE ticket_types (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id         bigint      NOT NULL REFERENCES events (id),
    name             text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    description      text        CHECK (length(description) <= 2000),
    price_minor      bigint      NOT NULL DEFAULT 0 CHECK (price_minor BETWEEN 0 AND 100000000000),
    sales_start      timestamptz,
    sales_end        timestamptz,
    min_per_order    integer     NOT NULL DEFAULT 1 CHECK (min_per_order BETWEEN 1 AND 1000000),
    max_per_order    integer     CHECK (max_per_order BETWEEN 1 AND 1000000),
    max_per_customer integer     CHECK (max_per_customer BETWEEN 1 AND 1000000),
    hidden           boolean     NOT NULL DEFAULT false,
    position         integer     NOT NULL DEFAULT 0,
    active           boolean     NOT NULL DEFAULT true,
    -- The type the seed's API books ({event_id, quantity}); one per event.
    is_default       boolean     NOT NULL DEFAULT false,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT ticket_types_order_bounds CHECK (max_per_order IS NULL OR max_per_order >= min_per_order),
    CONSTRAINT ticket_types_sales_window CHECK (sales_end IS NULL OR sales_start IS NULL OR sales_end > sales_start),
    UNIQUE (event_id, id)
);
CREATE UNIQUE INDEX ticket_types_one_default ON ticket_types (event_id) WHERE is_default;
CREATE INDEX ticket_types_event_idx ON ticket_types (event_id, position, id);

CREATE TABLE quotas (
    id         bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id   bigint      NOT NULL REFERENCES events (id),
    name       text        NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    size       integer     NOT NULL CHECK (size >= 0),
    -- How many stock rows it has, fixed at creation (shards_for).
    shards     integer     NOT NULL DEFAULT 1 CHECK (shards BETWEEN 1 AND 1024),
    -- The event quota: lists every type of the event; its size is events.total_tickets.
    is_event   boolean     NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, id)
);
CREATE UNIQUE INDEX quotas_one_event_quota ON quotas (event_id) WHERE is_event;

-- Which types a quota counts. Both sides belong to the same event (the composite keys).
CREATE TABLE quota_types (
    quota_id       bigint NOT NULL,
    ticket_type_id bigint NOT NULL,
    event_id       bigint NOT NULL,
    PRIMARY KEY (ticket_type_id, quota_id),
    FOREIGN KEY (event_id, quota_id) REFERENCES quotas (event_id, id),
    FOREIGN KEY (event_id, ticket_type_id) REFERENCES ticket_types (event_id, id)
);
CREATE INDEX quota_types_quota_idx ON quota_types (quota_id);

-- A quota's available tickets, spread over rows (issue 13's event_stock, now per quota).
-- gate_seq copies events.gate_seq: writers of what the grant rules read bump both.
CREATE TABLE quota_stock (
    quota_id          bigint  NOT NULL REFERENCES quotas (id),
    shard             integer NOT NULL CHECK (shard >= 0),
    available_tickets integer NOT NULL CHECK (available_tickets >= 0),
    gate_seq          bigint  NOT NULL DEFAULT 0,
    PRIMARY KEY (quota_id, shard)
) WITH (fillfactor = 50);  -- updated in place by every grant: room for HOT updates

-- Access codes unlock hidden types and book before a type's sales_start (presale).
-- Only a SHA-256 digest of the code is stored; uses are counted by the granting statement,
-- the CHECK refusing a use past max_uses under any concurrency.
CREATE TABLE access_codes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    bigint      NOT NULL REFERENCES events (id),
    code_digest bytea       NOT NULL,
    label       text        CHECK (length(label) <= 200),
    max_uses    integer     NOT NULL CHECK (max_uses BETWEEN 1 AND 1000000),
    uses        integer     NOT NULL DEFAULT 0,
    valid_from  timestamptz,
    valid_until timestamptz,
    active      boolean     NOT NULL DEFAULT true,
    created_at  timestamptz NOT NULL DEFAULT now(),
    UNIQUE (event_id, code_digest),
    UNIQUE (event_id, id),
    CONSTRAINT access_codes_within_max_uses CHECK (uses BETWEEN 0 AND max_uses),
    CONSTRAINT access_codes_window CHECK (valid_until IS NULL OR valid_from IS NULL OR valid_until > valid_from)
);

CREATE TABLE access_code_types (
    access_code_id bigint NOT NULL,
    ticket_type_id bigint NOT NULL,
    event_id       bigint NOT NULL,
    PRIMARY KEY (access_code_id, ticket_type_id),
    FOREIGN KEY (event_id, access_code_id) REFERENCES access_codes (event_id, id),
    FOREIGN KEY (event_id, ticket_type_id) REFERENCES ticket_types (event_id, id)
);

-- A booking is an order: its lines say which types, its total what it costs. 'confirmed'
-- is a free or paid order; the other states wait for the payment step.
ALTER TABLE bookings
    ADD COLUMN total_minor bigint NOT NULL DEFAULT 0 CHECK (total_minor >= 0),
    ADD COLUMN currency char(3) NOT NULL DEFAULT 'EUR',
    ADD COLUMN access_code_id bigint REFERENCES access_codes (id),
    DROP CONSTRAINT bookings_status_check,
    ADD CONSTRAINT bookings_status_check
        CHECK (status IN ('pending_payment', 'confirmed', 'expired', 'cancelled', 'refunded'));

CREATE TABLE booking_lines (
    id                 bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    booking_id         bigint  NOT NULL REFERENCES bookings (id),
    ticket_type_id     bigint  NOT NULL REFERENCES ticket_types (id),
    quantity           integer NOT NULL CHECK (quantity >= 0),
    cancelled_quantity integer NOT NULL DEFAULT 0 CHECK (cancelled_quantity >= 0),
    unit_price_minor   bigint  NOT NULL CHECK (unit_price_minor >= 0),
    UNIQUE (booking_id, ticket_type_id)
);
CREATE INDEX booking_lines_type_idx ON booking_lines (ticket_type_id);

ALTER TABLE holds ADD COLUMN access_code_id bigint REFERENCES access_codes (id);

CREATE TABLE hold_lines (
    hold_id        bigint  NOT NULL REFERENCES holds (id),
    ticket_type_id bigint  NOT NULL REFERENCES ticket_types (id),
    quantity       integer NOT NULL CHECK (quantity > 0),
    -- The type's price when the hold was made: what confirming a live hold charges.
    unit_price_minor bigint NOT NULL CHECK (unit_price_minor >= 0),
    PRIMARY KEY (hold_id, ticket_type_id)
);
CREATE INDEX hold_lines_type_idx ON hold_lines (ticket_type_id);

-- What one customer has of one type (booked plus actively held, expired holds too until
-- reclaimed), like customer_tickets per event: a grant sets limit_at_claim to the type's
-- limit in force (2147483647 when it has none), so the CHECK aborts a grant past it.
CREATE TABLE customer_type_tickets (
    ticket_type_id bigint  NOT NULL REFERENCES ticket_types (id),
    user_id        bigint  NOT NULL REFERENCES users (id),
    tickets        integer NOT NULL CHECK (tickets >= 0),
    limit_at_claim integer NOT NULL,
    PRIMARY KEY (ticket_type_id, user_id),
    CONSTRAINT customer_type_tickets_within_limit CHECK (tickets <= limit_at_claim)
) WITH (fillfactor = 70);

-- Every existing event becomes one default type in one event quota, with the same counts.
INSERT INTO ticket_types (event_id, name, is_default, created_at)
SELECT id, 'General admission', true, created_at FROM events;

INSERT INTO quotas (event_id, name, size, shards, is_event, created_at)
SELECT id, 'Event capacity', total_tickets, shards, true, created_at FROM events;

INSERT INTO quota_types (quota_id, ticket_type_id, event_id)
SELECT q.id, t.id, q.event_id FROM quotas q JOIN ticket_types t ON t.event_id = q.event_id;

INSERT INTO quota_stock (quota_id, shard, available_tickets, gate_seq)
SELECT q.id, s.shard, s.available_tickets, s.gate_seq
  FROM event_stock s JOIN quotas q ON q.event_id = s.event_id AND q.is_event;

INSERT INTO booking_lines (booking_id, ticket_type_id, quantity, cancelled_quantity, unit_price_minor)
SELECT b.id, t.id, b.quantity, b.cancelled_quantity, 0
  FROM bookings b JOIN ticket_types t ON t.event_id = b.event_id AND t.is_default;

INSERT INTO hold_lines (hold_id, ticket_type_id, quantity, unit_price_minor)
SELECT h.id, t.id, h.quantity, 0
  FROM holds h JOIN ticket_types t ON t.event_id = h.event_id AND t.is_default;

INSERT INTO customer_type_tickets (ticket_type_id, user_id, tickets, limit_at_claim)
SELECT t.id, c.user_id, c.tickets, 2147483647
  FROM customer_tickets c JOIN ticket_types t ON t.event_id = c.event_id AND t.is_default;

-- The quota's rows are the only count now; events.shards moved to the quota.
DROP TABLE event_stock;
ALTER TABLE events DROP COLUMN shards;
