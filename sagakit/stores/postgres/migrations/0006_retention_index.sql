-- sagakit: no-transaction
-- sagakit schema version 6 (PostgreSQL): the index retention (prune) finds ended sagas by.
--
-- Built CONCURRENTLY, so that writers keep writing while it is built on a large table; that
-- cannot run inside a transaction, hence the marker on the first line (the migration runner
-- runs this script on its own, still under the schema's advisory lock). One statement, and
-- IF NOT EXISTS: a run interrupted before the version row was written is simply run again.
-- Expand only: code of schema version 5 runs unchanged beside it.
CREATE INDEX CONCURRENTLY IF NOT EXISTS saga_instances_ended ON saga_instances (updated_at)
    WHERE status IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED')
