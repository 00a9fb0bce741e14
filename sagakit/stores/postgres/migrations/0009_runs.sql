-- sagakit schema version 9 (PostgreSQL): continue-as-new (a saga that goes on as a fresh run
-- of itself, under the same id, with a new input).
--
-- Every statement is idempotent (IF NOT EXISTS), so a run that was interrupted is simply run
-- again. Expand only: code of schema version 8 runs unchanged beside it (the column has a
-- constant default, added without rewriting the table, and it never reads the new tables).
--
-- The run a saga is in: 1 for a saga that never continued, N+1 once run N continued.
ALTER TABLE saga_instances ADD COLUMN IF NOT EXISTS run integer NOT NULL DEFAULT 1;

-- The journals of a saga's earlier runs, kept for operators (sagakit show --run N): moved
-- here from saga_journal, in the transaction that continues the saga, and deleted with it
-- (ON DELETE CASCADE).
CREATE TABLE IF NOT EXISTS saga_journal_runs (
    saga_id      text NOT NULL REFERENCES saga_instances (saga_id) ON DELETE CASCADE,
    run          integer NOT NULL,
    seq          integer NOT NULL,
    kind         text NOT NULL,
    name         text NOT NULL,
    status       text NOT NULL,
    attempts     integer NOT NULL,
    output       text,
    compensation text,
    error        text,
    started_at   double precision NOT NULL,
    finished_at  double precision NOT NULL,
    PRIMARY KEY (saga_id, run, seq)
);

-- One row per earlier run, written in the same transaction: the input and version it ran with
-- (version NULL: unversioned), its entries and times, so that listing a saga's runs reads no
-- journal (engine.admin.runs, the dashboard).
CREATE TABLE IF NOT EXISTS saga_runs (
    saga_id    text NOT NULL REFERENCES saga_instances (saga_id) ON DELETE CASCADE,
    run        integer NOT NULL,
    input      text NOT NULL,
    version    text,
    entries    integer NOT NULL,
    started_at double precision,
    ended_at   double precision NOT NULL,
    PRIMARY KEY (saga_id, run)
);
