-- sagakit schema version 2 (PostgreSQL): waits, events, published state, virtual objects.
--
-- lease_expires_at is now "when a worker may take the saga": its owner's lease end while it
-- runs, its wake-up time while it is SUSPENDED (1e18: only an event wakes it).
ALTER TABLE saga_instances ADD COLUMN wait_token text;
ALTER TABLE saga_instances ADD COLUMN event_count bigint NOT NULL DEFAULT 0;
ALTER TABLE saga_instances ADD COLUMN object_key text;
ALTER TABLE saga_instances ADD COLUMN arrival bigint;

DROP INDEX saga_instances_claimable;
CREATE INDEX saga_instances_claimable ON saga_instances (lease_expires_at)
    WHERE status IN ('PENDING', 'RUNNING', 'COMPENSATING', 'SUSPENDED');
CREATE INDEX saga_instances_object ON saga_instances (object_key, arrival)
    WHERE object_key IS NOT NULL;
CREATE SEQUENCE saga_arrival;

CREATE TABLE saga_events (
    saga_id    text NOT NULL REFERENCES saga_instances (saga_id) ON DELETE CASCADE,
    seq        bigint NOT NULL,
    kind       text NOT NULL,
    name       text NOT NULL,
    payload    text NOT NULL,
    created_at double precision NOT NULL,
    PRIMARY KEY (saga_id, seq)
);

CREATE TABLE saga_state (
    scope      text NOT NULL,
    key        text NOT NULL,
    value      text NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (scope, key)
);
