-- sagakit schema version 6 (SQLite): the index retention (prune) finds ended sagas by, so that
-- a prune reads only the ended sagas old enough instead of every row. Expand only: code of
-- schema version 5 runs unchanged beside it.
CREATE INDEX IF NOT EXISTS saga_instances_ended ON saga_instances (status, updated_at)
    WHERE status IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED');
