-- sagakit schema version 9 (SQLite): continue-as-new (a saga that goes on as a fresh run of
-- itself, under the same id, with a new input).
--
-- Expand only: code of schema version 8 runs unchanged beside it (the column has a default,
-- and it never reads the new tables; a saga of its own never continues as new).
--
-- The run a saga is in: 1 for a saga that never continued, N+1 once run N continued.
ALTER TABLE saga_instances ADD COLUMN run INTEGER NOT NULL DEFAULT 1;

-- The journals of a saga's earlier runs, kept for operators (sagakit show --run N): moved
-- here from saga_journal, in the transaction that continues the saga, and deleted with it.
CREATE TABLE saga_journal_runs (
    saga_id      TEXT NOT NULL REFERENCES saga_instances (saga_id) ON DELETE CASCADE,
    run          INTEGER NOT NULL,
    seq          INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    name         TEXT NOT NULL,
    status       TEXT NOT NULL,
    attempts     INTEGER NOT NULL,
    output       TEXT,
    compensation TEXT,
    error        TEXT,
    started_at   REAL NOT NULL,
    finished_at  REAL NOT NULL,
    PRIMARY KEY (saga_id, run, seq)
) WITHOUT ROWID;

-- One row per earlier run, written in the same transaction: the input and version it ran with
-- (version NULL: unversioned), its entries and times, so that listing a saga's runs reads no
-- journal (engine.admin.runs, the dashboard).
CREATE TABLE saga_runs (
    saga_id    TEXT NOT NULL REFERENCES saga_instances (saga_id) ON DELETE CASCADE,
    run        INTEGER NOT NULL,
    input      TEXT NOT NULL,
    version    TEXT,
    entries    INTEGER NOT NULL,
    started_at REAL,
    ended_at   REAL NOT NULL,
    PRIMARY KEY (saga_id, run)
) WITHOUT ROWID;
