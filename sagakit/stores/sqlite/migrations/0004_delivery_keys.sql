-- sagakit schema version 4 (SQLite): idempotent deliveries, and children found by parent.
--
-- A delivery may carry a key chosen by its sender before the first attempt: a retry with the
-- same key finds the event stored and writes nothing.
ALTER TABLE saga_events ADD COLUMN delivery_key TEXT;
CREATE UNIQUE INDEX saga_events_delivery_key ON saga_events (saga_id, delivery_key)
    WHERE delivery_key IS NOT NULL;
CREATE INDEX saga_instances_parent ON saga_instances (parent_id) WHERE parent_id IS NOT NULL;
