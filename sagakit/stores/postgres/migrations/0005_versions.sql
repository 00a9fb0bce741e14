-- sagakit schema version 5 (PostgreSQL): workflow versions, and the workers that serve them.
--
-- A saga records the version of the definition that started it ('' for an unversioned one):
-- a worker claims only the (name, version) pairs it registered. A column with a constant
-- default is added without rewriting the table (PostgreSQL 11+), and code of schema version 4
-- still inserts (as unversioned) while this schema is in place. No index is added: the claim
-- still finds its rows through saga_instances_claimable and filters them by (name, version).
ALTER TABLE saga_instances ADD COLUMN version text NOT NULL DEFAULT '';

-- One heartbeat per live worker: the (name, version) pairs it serves, as a JSON array of
-- [name, version] pairs, refreshed every third of its lease and deleted when it closes.
-- A worker is live while last_seen (the server's clock) is younger than 3 of its leases; a
-- saga that has not ended and whose pair no live worker serves is stranded.
CREATE TABLE saga_workers (
    worker_id     text PRIMARY KEY,
    served        jsonb NOT NULL,
    lease_seconds double precision NOT NULL,
    last_seen     double precision NOT NULL
);
