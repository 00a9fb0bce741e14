-- sagakit schema version 1 (SQLite).
CREATE TABLE saga_instances (
    saga_id          TEXT PRIMARY KEY,
    name             TEXT NOT NULL,
    status           TEXT NOT NULL,
    input            TEXT NOT NULL,
    output           TEXT,
    error            TEXT,
    owner            TEXT,
    fence            INTEGER NOT NULL DEFAULT 1,
    lease_expires_at REAL NOT NULL DEFAULT 0,
    created_at       REAL NOT NULL,
    updated_at       REAL NOT NULL
);

CREATE INDEX saga_instances_claimable ON saga_instances (status, lease_expires_at);
CREATE INDEX saga_instances_owner ON saga_instances (owner) WHERE owner IS NOT NULL;
CREATE INDEX saga_instances_created ON saga_instances (created_at);

CREATE TABLE saga_journal (
    saga_id      TEXT NOT NULL REFERENCES saga_instances (saga_id) ON DELETE CASCADE,
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
    PRIMARY KEY (saga_id, seq)
) WITHOUT ROWID;
