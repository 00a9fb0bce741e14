-- sagakit schema version 2 (SQLite): waits, events, published state, virtual objects.
--
-- lease_expires_at is now "when a worker may take the saga": its owner's lease end while it
-- runs, its wake-up time while it is SUSPENDED (1e18: only an event wakes it).
ALTER TABLE saga_instances ADD COLUMN wait_token TEXT;
ALTER TABLE saga_instances ADD COLUMN event_count INTEGER NOT NULL DEFAULT 0;
ALTER TABLE saga_instances ADD COLUMN object_key TEXT;
ALTER TABLE saga_instances ADD COLUMN arrival INTEGER;

CREATE INDEX saga_instances_object ON saga_instances (object_key, arrival)
    WHERE object_key IS NOT NULL;

CREATE TABLE saga_events (
    saga_id    TEXT NOT NULL REFERENCES saga_instances (saga_id) ON DELETE CASCADE,
    seq        INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    name       TEXT NOT NULL,
    payload    TEXT NOT NULL,
    created_at REAL NOT NULL,
    PRIMARY KEY (saga_id, seq)
) WITHOUT ROWID;

CREATE TABLE saga_state (
    scope      TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (scope, key)
) WITHOUT ROWID;
