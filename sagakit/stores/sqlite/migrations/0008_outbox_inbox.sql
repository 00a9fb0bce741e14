-- sagakit schema version 8 (SQLite): the outbox and the inbox (sagas across services).
--
-- Expand only: code of schema version 7 runs unchanged beside it (it never reads these
-- tables; a saga of its own never sends a command).
--
-- The outbox: a message to another service (a remote step's command, its compensation
-- command, a participant's reply) is a row here, written in the same transaction as the
-- journal entry (or the inbox row) it belongs to; the relay publishes the rows in position
-- order, per destination, and marks them published. Publishing is at least once: a relay that
-- dies between the publish and the mark publishes the row again, and the consumer's inbox
-- drops the repeat. A remote step's retry writes a second row with the same message_id.
CREATE TABLE saga_outbox (
    position       INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id     TEXT NOT NULL,
    destination    TEXT NOT NULL,
    kind           TEXT NOT NULL,
    name           TEXT NOT NULL,
    payload        TEXT NOT NULL,
    reply_to       TEXT,
    correlation_id TEXT,
    headers        TEXT NOT NULL DEFAULT '{}',
    -- the saga that sent it (None: a participant's reply)
    saga_id        TEXT,
    created_at     REAL NOT NULL,
    published_at   REAL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    -- chosen by the writer before its first attempt: a write retried after a lost
    -- acknowledgement inserts nothing more
    send_key       TEXT
);
-- what the relay publishes next
CREATE INDEX saga_outbox_unpublished ON saga_outbox (position) WHERE published_at IS NULL;
CREATE UNIQUE INDEX saga_outbox_send_key ON saga_outbox (send_key);
-- a saga's messages (sagakit show)
CREATE INDEX saga_outbox_saga ON saga_outbox (saga_id, position) WHERE saga_id IS NOT NULL;

-- The inbox: each message a participant processed, with the reply it gave, written in the
-- same transaction as the reply's outbox row (and, for a transactional handler, its writes):
-- a redelivered message finds its row and gets the stored reply without running the handler.
CREATE TABLE saga_inbox (
    participant  TEXT NOT NULL,
    message_id   TEXT NOT NULL,
    name         TEXT NOT NULL,
    -- 'ok' or 'error'
    status       TEXT NOT NULL,
    reply        TEXT NOT NULL,
    processed_at REAL NOT NULL,
    PRIMARY KEY (participant, message_id)
);

-- The relay's lease: one relay per database publishes at a time (the order of each
-- destination's messages holds); another takes over when its lease expires.
CREATE TABLE saga_relay (
    name             TEXT PRIMARY KEY,
    owner            TEXT NOT NULL,
    lease_expires_at REAL NOT NULL
);
