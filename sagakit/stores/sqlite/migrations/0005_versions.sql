-- sagakit schema version 5 (SQLite): workflow versions, and the workers that serve them.
--
-- A saga records the version of the definition that started it ('' for an unversioned one):
-- a worker claims only the (name, version) pairs it registered. The column has a default, so
-- code of schema version 4 still inserts (as unversioned) while this schema is in place.
ALTER TABLE saga_instances ADD COLUMN version TEXT NOT NULL DEFAULT '';

-- One heartbeat per live worker: the (name, version) pairs it serves, as a JSON array of
-- [name, version] pairs, refreshed every third of its lease and deleted when it closes.
-- A worker is live while last_seen is younger than 3 of its leases; a saga that has not
-- ended and whose pair no live worker serves is stranded (sagakit list --stranded).
CREATE TABLE saga_workers (
    worker_id     TEXT PRIMARY KEY,
    served        TEXT NOT NULL,
    lease_seconds REAL NOT NULL,
    last_seen     REAL NOT NULL
) WITHOUT ROWID;
