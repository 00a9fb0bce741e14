-- Every statement the PostgreSQL store runs. Parameters are positional ($1), as asyncpg wants.
-- Batched statements take one array per column and unnest them: one round trip, one commit.

-- name: lock_schema
SELECT pg_advisory_xact_lock(7261001)

-- name: schema_version_table
CREATE TABLE IF NOT EXISTS saga_schema_version (version integer NOT NULL)

-- name: schema_version
SELECT coalesce(max(version), 0) FROM saga_schema_version

-- name: set_schema_version
INSERT INTO saga_schema_version (version) VALUES ($1)

-- name: create_sagas
WITH new AS (
    SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[])
        AS n(saga_id, name, input, owner, lease_seconds)
), clock AS (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS now
), inserted AS (
    INSERT INTO saga_instances
        (saga_id, name, status, input, owner, fence, lease_expires_at, created_at, updated_at)
    SELECT n.saga_id, n.name,
           CASE WHEN n.owner IS NULL THEN 'PENDING' ELSE 'RUNNING' END,
           n.input, n.owner, 1,
           CASE WHEN n.owner IS NULL THEN 0 ELSE clock.now + n.lease_seconds END,
           clock.now, clock.now
    FROM new n, clock
    ON CONFLICT (saga_id) DO NOTHING
    RETURNING saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
              created_at, updated_at
)
SELECT true AS created, * FROM inserted
UNION ALL
SELECT false AS created, s.saga_id, s.name, s.status, s.input, s.output, s.error, s.owner,
       s.fence, s.lease_expires_at, s.created_at, s.updated_at
FROM saga_instances s JOIN new n USING (saga_id)

-- name: append
WITH upd AS (
    SELECT * FROM unnest($1::text[], $2::int8[], $3::text[], $4::text[], $5::text[])
        AS u(saga_id, fence, status, output, error)
), ok AS (
    UPDATE saga_instances s
    SET status = coalesce(u.status, s.status),
        output = coalesce(u.output, s.output),
        error = coalesce(u.error, s.error),
        owner = CASE WHEN u.status IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED')
                     THEN NULL ELSE s.owner END,
        lease_expires_at = CASE WHEN u.status IN ('COMPLETED', 'COMPENSATED', 'FAILED',
                                                  'CANCELLED')
                                THEN 0 ELSE s.lease_expires_at END,
        updated_at = extract(epoch FROM clock_timestamp())
    FROM upd u
    WHERE s.saga_id = u.saga_id AND s.fence = u.fence
    RETURNING s.saga_id
), entries AS (
    INSERT INTO saga_journal
        (saga_id, seq, kind, name, status, attempts, output, compensation, error,
         started_at, finished_at)
    SELECT e.* FROM unnest($6::text[], $7::int4[], $8::text[], $9::text[], $10::text[],
                           $11::int4[], $12::text[], $13::text[], $14::text[],
                           $15::float8[], $16::float8[])
        AS e(saga_id, seq, kind, name, status, attempts, output, compensation, error,
             started_at, finished_at)
    WHERE e.saga_id IN (SELECT saga_id FROM ok)
    ON CONFLICT (saga_id, seq) DO UPDATE SET
        kind = excluded.kind, name = excluded.name, status = excluded.status,
        attempts = excluded.attempts, output = excluded.output,
        compensation = excluded.compensation, error = excluded.error,
        started_at = excluded.started_at, finished_at = excluded.finished_at
)
SELECT saga_id FROM ok

-- name: get_saga
SELECT saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
       created_at, updated_at
FROM saga_instances WHERE saga_id = $1

-- name: get_journal
SELECT saga_id, seq, kind, name, status, attempts, output, compensation, error,
       started_at, finished_at
FROM saga_journal WHERE saga_id = $1 ORDER BY seq

-- name: get_journals
SELECT saga_id, seq, kind, name, status, attempts, output, compensation, error,
       started_at, finished_at
FROM saga_journal WHERE saga_id = ANY($1::text[]) ORDER BY saga_id, seq

-- name: renew_leases
UPDATE saga_instances
SET lease_expires_at = extract(epoch FROM clock_timestamp()) + $2
WHERE owner = $1 AND status IN ('PENDING', 'RUNNING', 'COMPENSATING', 'SUSPENDED')

-- name: claim
WITH clock AS (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS now
), picked AS (
    SELECT s.saga_id, s.owner AS previous_owner FROM saga_instances s, clock
    WHERE s.status IN ('PENDING', 'RUNNING', 'COMPENSATING')
      AND s.lease_expires_at < clock.now
      AND s.name = ANY($2::text[])
    ORDER BY s.lease_expires_at
    LIMIT $4
    FOR UPDATE OF s SKIP LOCKED
)
UPDATE saga_instances s
SET owner = $1,
    fence = s.fence + 1,
    status = CASE WHEN s.status = 'PENDING' THEN 'RUNNING' ELSE s.status END,
    lease_expires_at = clock.now + $3,
    updated_at = clock.now
FROM picked, clock
WHERE s.saga_id = picked.saga_id
RETURNING s.saga_id, s.name, s.status, s.input, s.output, s.error, s.owner, s.fence,
          s.lease_expires_at, s.created_at, s.updated_at,
          picked.previous_owner IS NOT NULL AS taken_over

-- name: release
UPDATE saga_instances SET owner = NULL, lease_expires_at = 0
WHERE owner = $1 AND saga_id = ANY($2::text[])

-- name: notify_work
SELECT pg_notify('sagakit_work', '')

-- name: list_sagas
SELECT saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
       created_at, updated_at
FROM saga_instances
WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR name = $2)
ORDER BY created_at DESC, saga_id DESC
LIMIT $3
