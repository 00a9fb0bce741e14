-- sagakit schema version 3 (SQLite): a child saga knows its parent, which it tells its outcome.
ALTER TABLE saga_instances ADD COLUMN parent_id TEXT;
