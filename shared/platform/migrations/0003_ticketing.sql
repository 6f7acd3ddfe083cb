-- Quantities per event, seat holds with expiry, partial cancellation, idempotency keys.

ALTER TABLE events
    ADD COLUMN max_tickets_per_booking integer CHECK (max_tickets_per_booking BETWEEN 1 AND 1000000);

-- A hold takes tickets out of available_tickets when created. It stops counting at
-- expires_at by itself: readers add the quantity of active-but-expired holds back, and
-- the next claim that needs them (or the periodic tidy) marks them expired and returns them.
CREATE TABLE holds (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id        bigint      NOT NULL REFERENCES events (id),
    user_id         bigint      NOT NULL REFERENCES users (id),
    quantity        integer     NOT NULL CHECK (quantity > 0),
    status          text        NOT NULL DEFAULT 'active'
                                CHECK (status IN ('active', 'confirmed', 'released', 'expired')),
    expires_at      timestamptz NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    closed_at       timestamptz
);
CREATE INDEX holds_active_idx ON holds (event_id, expires_at) WHERE status = 'active';
CREATE INDEX holds_active_expiry_idx ON holds (expires_at) WHERE status = 'active';
CREATE INDEX holds_user_idx ON holds (user_id, id DESC);

-- quantity is what the booking holds now; cancelled_quantity what it gave back.
ALTER TABLE bookings
    ADD COLUMN cancelled_quantity integer NOT NULL DEFAULT 0 CHECK (cancelled_quantity >= 0),
    ADD COLUMN hold_id bigint UNIQUE REFERENCES holds (id),
    DROP CONSTRAINT bookings_quantity_check,
    ADD CONSTRAINT bookings_quantity_check CHECK (quantity >= 0),
    ADD CONSTRAINT bookings_confirmed_has_tickets CHECK (status = 'cancelled' OR quantity > 0);

-- A client's retry of a booking-creating POST replays the first answer.
CREATE TABLE idempotency_keys (
    user_id         bigint      NOT NULL,
    key             text        NOT NULL,
    fingerprint     text        NOT NULL,
    owner           uuid        NOT NULL,
    state           text        NOT NULL CHECK (state IN ('in_progress', 'done')),
    response_status integer,
    response_body   jsonb,
    created_at      timestamptz NOT NULL DEFAULT now(),
    locked_until    timestamptz NOT NULL,
    expires_at      timestamptz NOT NULL,
    PRIMARY KEY (user_id, key)
);
CREATE INDEX idempotency_keys_expiry_idx ON idempotency_keys (expires_at);
