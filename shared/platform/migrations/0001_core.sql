-- Users, events, bookings and the notification outbox.

CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email         text        NOT NULL CHECK (length(email) BETWEEN 3 AND 320),
    name          text        CHECK (length(name) <= 200),
    password_hash text        NOT NULL,
    role          text        NOT NULL CHECK (role IN ('organizer', 'customer')),
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- Emails are unique whatever their case.
CREATE UNIQUE INDEX users_email_lower_key ON users (lower(email));

CREATE TABLE events (
    id                bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    organizer_id      bigint      NOT NULL REFERENCES users (id),
    title             text        NOT NULL CHECK (length(title) BETWEEN 1 AND 200),
    venue             text        CHECK (length(venue) <= 200),
    start_time        timestamptz,
    end_time          timestamptz,
    total_tickets     integer     NOT NULL CHECK (total_tickets >= 0),
    available_tickets integer     NOT NULL CHECK (available_tickets >= 0),
    status            text        NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'cancelled')),
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT events_available_within_total CHECK (available_tickets <= total_tickets),
    CONSTRAINT events_end_after_start CHECK (end_time IS NULL OR start_time IS NULL OR end_time >= start_time)
);
CREATE INDEX events_organizer_idx ON events (organizer_id, id DESC);
CREATE INDEX events_start_time_idx ON events (start_time, id);

CREATE TABLE bookings (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     bigint      NOT NULL REFERENCES events (id),
    user_id      bigint      NOT NULL REFERENCES users (id),
    quantity     integer     NOT NULL CHECK (quantity > 0),
    status       text        NOT NULL DEFAULT 'confirmed' CHECK (status IN ('confirmed', 'cancelled')),
    created_at   timestamptz NOT NULL DEFAULT now(),
    cancelled_at timestamptz
);
-- "My bookings", newest first.
CREATE INDEX bookings_user_idx ON bookings (user_id, id DESC);
-- Fan-out to an event's booked users by keyset pagination.
CREATE INDEX bookings_event_idx ON bookings (event_id, id);

-- Notifications requested in the same transaction as the change that causes them;
-- published to the broker after commit, or later by the relay.
CREATE TABLE outbox (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task         text        NOT NULL,
    payload      jsonb       NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    attempts     integer     NOT NULL DEFAULT 0,
    last_error   text
);
CREATE INDEX outbox_unpublished_idx ON outbox (id) WHERE published_at IS NULL;
