-- sagakit schema version 3 (PostgreSQL): a child saga knows its parent, which it tells its
-- outcome.
ALTER TABLE saga_instances ADD COLUMN parent_id text;
