-- sagakit schema version 8 (PostgreSQL): the outbox and the inbox (sagas across services), and
-- the table of the PostgreSQL-only transport.
--
-- Every statement is idempotent (IF NOT EXISTS), so a run that was interrupted is simply run
-- again. Expand only: code of schema version 7 runs unchanged beside it (it never reads these
-- tables; a saga of its own never sends a command).
--
-- The outbox: a message to another service (a remote step's command, its compensation
-- command, a participant's reply) is a row here, written in the same transaction as the
-- journal entry (or the inbox row) it belongs to; the relay publishes the rows in position
-- order, per destination, and marks them published. Publishing is at least once: a relay that
-- dies between the publish and the mark publishes the row again, and the consumer's inbox
-- drops the repeat. A remote step's retry writes a second row with the same message_id.
CREATE TABLE IF NOT EXISTS saga_outbox (
    position       bigserial PRIMARY KEY,
    message_id     text NOT NULL,
    destination    text NOT NULL,
    kind           text NOT NULL,
    name           text NOT NULL,
    payload        text NOT NULL,
    reply_to       text,
    correlation_id text,
    headers        text NOT NULL DEFAULT '{}',
    -- the saga that sent it (NULL: a participant's reply)
    saga_id        text,
    created_at     double precision NOT NULL,
    published_at   double precision,
    attempts       integer NOT NULL DEFAULT 0,
    last_error     text,
    -- chosen by the writer before its first attempt: a write retried after a lost
    -- acknowledgement inserts nothing more
    send_key       text
);
-- what the relay publishes next
CREATE INDEX IF NOT EXISTS saga_outbox_unpublished
    ON saga_outbox (position) WHERE published_at IS NULL;
CREATE UNIQUE INDEX IF NOT EXISTS saga_outbox_send_key ON saga_outbox (send_key);
-- a saga's messages (sagakit show)
CREATE INDEX IF NOT EXISTS saga_outbox_saga
    ON saga_outbox (saga_id, position) WHERE saga_id IS NOT NULL;

-- The inbox: each message a participant processed, with the reply it gave, written in the
-- same transaction as the reply's outbox row (and, for a transactional handler, its writes):
-- a redelivered message finds its row and gets the stored reply without running the handler.
-- Two deliveries of one message at once: the second insert waits for the first transaction
-- and then finds its row.
CREATE TABLE IF NOT EXISTS saga_inbox (
    participant  text NOT NULL,
    message_id   text NOT NULL,
    name         text NOT NULL,
    -- 'ok' or 'error'
    status       text NOT NULL,
    reply        text NOT NULL,
    processed_at double precision NOT NULL,
    PRIMARY KEY (participant, message_id)
);

-- The relay's lease: one relay per database publishes at a time (the order of each
-- destination's messages holds); another takes over when its lease expires.
CREATE TABLE IF NOT EXISTS saga_relay (
    name             text PRIMARY KEY,
    owner            text NOT NULL,
    lease_expires_at double precision NOT NULL
);

-- The PostgreSQL-only transport (sagakit.transports.postgres): its queues, one row per message
-- not yet acknowledged. A consumer takes the oldest available row of its destination with
-- FOR UPDATE SKIP LOCKED, runs the handler holding the lock, and deletes the row (ack); a
-- failed delivery counts and makes the row available again later; the last one moves it to
-- "<destination>.dead". A consumer that dies releases its lock: the row is delivered again.
CREATE TABLE IF NOT EXISTS saga_transport_messages (
    position       bigserial PRIMARY KEY,
    message_id     text NOT NULL,
    destination    text NOT NULL,
    kind           text NOT NULL,
    name           text NOT NULL,
    payload        text NOT NULL,
    reply_to       text,
    correlation_id text,
    headers        text NOT NULL DEFAULT '{}',
    deliveries     integer NOT NULL DEFAULT 0,
    available_at   double precision NOT NULL DEFAULT 0,
    created_at     double precision NOT NULL
);
CREATE INDEX IF NOT EXISTS saga_transport_messages_next
    ON saga_transport_messages (destination, position);
