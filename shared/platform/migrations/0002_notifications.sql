-- Notifications: delivery keys (effects exactly once), fan-out progress, dead letters.

-- One row per notification (outbox row) and user, written in the same transaction as
-- the send: a redelivered task finds the key and does not send again. No foreign keys,
-- so old outbox rows can be pruned without touching delivery history.
CREATE TABLE notification_deliveries (
    outbox_id    bigint      NOT NULL,
    user_id      bigint      NOT NULL,
    kind         text        NOT NULL,
    channel      text        NOT NULL,
    recipient    text        NOT NULL,
    delivered_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (outbox_id, user_id)
);

-- A fan-out (event update, event cancelled) is planned once into user-id ranges; each
-- range is one sub-task. The sub-task that completes the last range logs the total.
CREATE TABLE notification_fanouts (
    outbox_id    bigint      PRIMARY KEY,
    kind         text        NOT NULL,
    event_id     bigint      NOT NULL,
    chunks_total integer     NOT NULL CHECK (chunks_total >= 0),
    chunks_done  integer     NOT NULL DEFAULT 0 CHECK (chunks_done BETWEEN 0 AND chunks_total),
    notified     integer,
    created_at   timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz
);

CREATE TABLE notification_chunks (
    outbox_id     bigint      NOT NULL REFERENCES notification_fanouts (outbox_id) ON DELETE CASCADE,
    chunk_no      integer     NOT NULL,
    first_user_id bigint      NOT NULL,
    last_user_id  bigint      NOT NULL,
    done_at       timestamptz,
    PRIMARY KEY (outbox_id, chunk_no)
);

-- Redis has no dead-letter queue: a task that failed all its attempts lands here,
-- with what is needed to publish it again (`python -m shared.deadletters replay`).
CREATE TABLE notification_dead_letters (
    id          bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task        text        NOT NULL,
    kwargs      jsonb       NOT NULL,
    task_id     text,
    attempts    integer     NOT NULL,
    error       text        NOT NULL,
    failed_at   timestamptz NOT NULL DEFAULT now(),
    replayed_at timestamptz
);
CREATE INDEX notification_dead_letters_pending_idx
    ON notification_dead_letters (id) WHERE replayed_at IS NULL;

-- Fan-out pages through an event's booked users by user id (keyset pagination).
CREATE INDEX bookings_event_user_idx ON bookings (event_id, user_id);
