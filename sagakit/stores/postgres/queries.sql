-- Every statement the PostgreSQL store runs. Parameters are positional ($1), as asyncpg wants.
-- Batched statements take one array per column and unnest them: one round trip, one commit.

-- name: try_lock_schema
-- a session lock, not a transaction's: scripts that run outside a transaction (CREATE INDEX
-- CONCURRENTLY) are serialised by it too. Tried, never waited for (see _lock_schema).
-- Two int4 keys, sagakit's class and the schema's (schema.schema_lock_key): PostgreSQL keeps
-- them apart from the single bigint keys applications use, and each sagakit schema of a
-- database has its own lock
SELECT pg_try_advisory_lock(7261001, $1::integer)

-- name: unlock_schema
SELECT pg_advisory_unlock(7261001, $1::integer)

-- name: create_schema
-- $schema is replaced by the quoted schema name (an identifier cannot be a parameter)
CREATE SCHEMA IF NOT EXISTS $schema

-- name: tables_in_public
-- an earlier release's deployment: its tables in public, and no schema of sagakit's own ($1)
SELECT to_regclass('public.saga_schema_version') IS NOT NULL
   AND NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)

-- name: schema_version_table
CREATE TABLE IF NOT EXISTS saga_schema_version (version integer NOT NULL)

-- name: schema_version_exists
-- whether sagakit's version table is there, asked without creating it (readers never write)
SELECT to_regclass('saga_schema_version') IS NOT NULL

-- name: index_is_invalid
-- an index of sagakit's schema that an interrupted CREATE INDEX CONCURRENTLY left behind
SELECT NOT indisvalid FROM pg_index WHERE indexrelid = to_regclass($1)

-- name: drop_index
-- $index is replaced by the quoted name of an index of our own scripts (identifiers cannot be
-- parameters)
DROP INDEX CONCURRENTLY IF EXISTS $index

-- name: schema_version
SELECT coalesce(max(version), 0) FROM saga_schema_version

-- name: set_schema_version
INSERT INTO saga_schema_version (version) VALUES ($1)

-- name: create_sagas
-- the sagas inserted; an id already taken is missing from the answer (see get_sagas)
WITH clock AS (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS now
)
INSERT INTO saga_instances
    (saga_id, name, status, input, owner, fence, lease_expires_at, created_at, updated_at,
     parent_id, version)
SELECT n.saga_id, n.name,
       CASE WHEN n.owner IS NULL THEN 'PENDING' ELSE 'RUNNING' END,
       n.input, n.owner, 1,
       CASE WHEN n.owner IS NULL THEN 0 ELSE clock.now + n.lease_seconds END,
       clock.now, clock.now, n.parent_id, n.version
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::text[],
            $7::text[])
        AS n(saga_id, name, input, owner, lease_seconds, parent_id, version),
     clock
ON CONFLICT (saga_id) DO NOTHING
RETURNING saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
          created_at, updated_at, wait_token, event_count, object_key, parent_id,
       nullif(version, ''), queue, priority, nullif(partition_key, ''), dedup_id, run

-- name: get_sagas
SELECT saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
       created_at, updated_at, wait_token, event_count, object_key, parent_id,
       nullif(version, ''), queue, priority, nullif(partition_key, ''), dedup_id, run
FROM saga_instances WHERE saga_id = ANY($1::text[])

-- name: append
-- $1-$9 one row per saga: the fence to check, the events seen (guard), the status change;
-- $10-$20 the journal entries; $21-$24 the state writes (value NULL: clear)
WITH upd AS (
    SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::text[], $5::text[],
                         $6::text[], $7::float8[], $8::bool[], $9::text[])
        AS u(saga_id, fence, guard, status, output, error, wake_at, set_token, token)
), ok AS (
    UPDATE saga_instances s
    SET status = coalesce(u.status, s.status),
        output = coalesce(u.output, s.output),
        error = coalesce(u.error, s.error),
        owner = CASE WHEN u.status IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED',
                                       'SUSPENDED', 'PARKED')
                     THEN NULL ELSE s.owner END,
        lease_expires_at = CASE WHEN u.status IN ('COMPLETED', 'COMPENSATED', 'FAILED',
                                                  'CANCELLED') THEN 0
                                WHEN u.status = 'SUSPENDED' THEN u.wake_at
                                WHEN u.status = 'PARKED' THEN 1e18
                                ELSE s.lease_expires_at END,
        wait_token = CASE WHEN u.status IN ('COMPLETED', 'COMPENSATED', 'FAILED',
                                            'CANCELLED', 'PARKED') THEN NULL
                          WHEN u.set_token THEN u.token
                          ELSE s.wait_token END,
        updated_at = extract(epoch FROM clock_timestamp())
    FROM upd u
    WHERE s.saga_id = u.saga_id AND s.fence = u.fence
      AND (u.guard IS NULL OR s.event_count = u.guard)
    RETURNING s.saga_id, s.queue
), entries AS (
    INSERT INTO saga_journal
        (saga_id, seq, kind, name, status, attempts, output, compensation, error,
         started_at, finished_at)
    SELECT e.* FROM unnest($10::text[], $11::int4[], $12::text[], $13::text[], $14::text[],
                           $15::int4[], $16::text[], $17::text[], $18::text[],
                           $19::float8[], $20::float8[])
        AS e(saga_id, seq, kind, name, status, attempts, output, compensation, error,
             started_at, finished_at)
    WHERE e.saga_id IN (SELECT saga_id FROM ok)
    ON CONFLICT (saga_id, seq) DO UPDATE SET
        kind = excluded.kind, name = excluded.name, status = excluded.status,
        attempts = excluded.attempts, output = excluded.output,
        compensation = excluded.compensation, error = excluded.error,
        started_at = excluded.started_at, finished_at = excluded.finished_at
), writes AS (
    SELECT * FROM unnest($21::text[], $22::text[], $23::text[], $24::text[])
        AS w(saga_id, scope, key, value)
    WHERE w.saga_id IN (SELECT saga_id FROM ok)
), state_set AS (
    INSERT INTO saga_state (scope, key, value, updated_at)
    SELECT w.scope, w.key, w.value, extract(epoch FROM clock_timestamp())
    FROM writes w WHERE w.value IS NOT NULL
    ON CONFLICT (scope, key) DO UPDATE SET
        value = excluded.value, updated_at = excluded.updated_at
), state_clear AS (
    DELETE FROM saga_state d USING writes w
    WHERE w.value IS NULL AND d.scope = w.scope AND d.key = w.key
)
SELECT saga_id, queue FROM ok

-- name: append_one
-- append of one saga, at most one journal entry and no state writes (a saga alone, or a
-- quiet moment): the same as append with scalars, cheaper to run than unnesting arrays
-- (0.65 against 0.85 ms a commit here). Its status rules are append's: change them together.
WITH ok AS (
    UPDATE saga_instances s
    SET status = coalesce($4::text, s.status),
        output = coalesce($5::text, s.output),
        error = coalesce($6::text, s.error),
        owner = CASE WHEN $4::text IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED',
                                       'SUSPENDED', 'PARKED')
                     THEN NULL ELSE s.owner END,
        lease_expires_at = CASE WHEN $4::text IN ('COMPLETED', 'COMPENSATED', 'FAILED',
                                                  'CANCELLED') THEN 0
                                WHEN $4::text = 'SUSPENDED' THEN $7::float8
                                WHEN $4::text = 'PARKED' THEN 1e18
                                ELSE s.lease_expires_at END,
        wait_token = CASE WHEN $4::text IN ('COMPLETED', 'COMPENSATED', 'FAILED',
                                            'CANCELLED', 'PARKED') THEN NULL
                          WHEN $8::bool THEN $9::text
                          ELSE s.wait_token END,
        updated_at = extract(epoch FROM clock_timestamp())
    WHERE s.saga_id = $1 AND s.fence = $2
      AND ($3::int8 IS NULL OR s.event_count = $3::int8)
    RETURNING s.saga_id, s.queue
), entries AS (
    INSERT INTO saga_journal
        (saga_id, seq, kind, name, status, attempts, output, compensation, error,
         started_at, finished_at)
    SELECT ok.saga_id, $10::int4, $11::text, $12::text, $13::text, $14::int4, $15::text,
           $16::text, $17::text, $18::float8, $19::float8
    FROM ok WHERE $10::int4 IS NOT NULL
    ON CONFLICT (saga_id, seq) DO UPDATE SET
        kind = excluded.kind, name = excluded.name, status = excluded.status,
        attempts = excluded.attempts, output = excluded.output,
        compensation = excluded.compensation, error = excluded.error,
        started_at = excluded.started_at, finished_at = excluded.finished_at
)
SELECT saga_id, queue FROM ok

-- name: saga_fence
SELECT fence FROM saga_instances WHERE saga_id = $1

-- name: lock_object
-- two int4 keys (see try_lock_schema); in public, the key earlier releases used, so that their
-- workers and ours exclude each other during a rolling upgrade; elsewhere the schema is part
-- of it, so that two sagakit schemas' objects of one key do not wait for each other
SELECT pg_advisory_xact_lock(
    7261002,
    hashtext(CASE WHEN current_schema() = 'public' THEN $1 ELSE current_schema() || '/' || $1 END))

-- name: create_object_saga
-- under the object's lock: it runs now (owned) only if no earlier saga of its key is unfinished
WITH busy AS (
    SELECT EXISTS (SELECT 1 FROM saga_instances p
                   WHERE p.object_key = $6
                     AND p.status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED'))
        AS busy
), clock AS (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS now
)
INSERT INTO saga_instances
    (saga_id, name, status, input, owner, fence, lease_expires_at, created_at, updated_at,
     object_key, arrival, parent_id, version)
SELECT $1, $2,
       CASE WHEN $4::text IS NULL OR busy THEN 'PENDING' ELSE 'RUNNING' END,
       $3, CASE WHEN busy THEN NULL ELSE $4::text END, 1,
       CASE WHEN $4::text IS NULL OR busy THEN 0 ELSE clock.now + $5 END,
       clock.now, clock.now, $6, nextval('saga_arrival'), $7, $8
FROM busy, clock
ON CONFLICT (saga_id) DO NOTHING
RETURNING saga_id

-- name: lock_saga
SELECT 1 FROM saga_instances WHERE saga_id = $1 FOR UPDATE

-- name: deliver
-- one statement: look at the saga (locked), refuse (unknown, ended, stale token, duplicate) or
-- number the event, store it, make a SUSPENDED saga due and wake the workers
-- $5 a wait token (consumed: withdrawn in the same statement), $6 unique, $7 a delivery key
-- (an event stored with it already: nothing is written, the first outcome stands)
WITH saga AS (
    SELECT status, wait_token FROM saga_instances WHERE saga_id = $1 FOR UPDATE
), keyed AS (
    SELECT 1 FROM saga_events
    WHERE $7::text IS NOT NULL AND saga_id = $1 AND delivery_key = $7::text
), dup AS (
    SELECT payload FROM saga_events
    WHERE $6 AND saga_id = $1 AND kind = $2 AND name = $3 AND seq > 0
    ORDER BY seq LIMIT 1
), counted AS (
    UPDATE saga_instances
    SET event_count = event_count + 1,
        lease_expires_at = CASE WHEN status = 'SUSPENDED' THEN 0 ELSE lease_expires_at END,
        wait_token = CASE WHEN $5::text IS NULL THEN wait_token END
    WHERE saga_id = $1
      AND status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED')
      AND ($5::text IS NULL OR wait_token IS NOT DISTINCT FROM $5::text)
      AND NOT EXISTS (SELECT 1 FROM dup)
      AND NOT EXISTS (SELECT 1 FROM keyed)
    RETURNING event_count, status
), stored AS (
    INSERT INTO saga_events (saga_id, seq, kind, name, payload, created_at, delivery_key)
    SELECT $1, counted.event_count, $2, $3, $4, extract(epoch FROM clock_timestamp()), $7::text
    FROM counted
), woken AS (
    -- the schema's channel (see notify_work)
    SELECT pg_notify(CASE WHEN current_schema() = 'public' THEN 'sagakit_work'
                          ELSE 'sagakit_work_' || current_schema() END, '')
    FROM counted WHERE counted.status = 'SUSPENDED'
)
SELECT (SELECT status FROM saga) AS status,
       EXISTS (SELECT 1 FROM keyed) AS redelivered,
       (SELECT payload FROM dup) AS duplicate,
       (SELECT event_count FROM counted) AS seq,
       (SELECT count(*) FROM woken) AS woken

-- name: get_events
SELECT saga_id, seq, kind, name, payload, created_at FROM saga_events
WHERE saga_id = $1 AND seq > $2 ORDER BY seq

-- name: get_events_of
SELECT saga_id, seq, kind, name, payload, created_at FROM saga_events
WHERE saga_id = ANY($1::text[]) AND seq > 0 ORDER BY saga_id, seq

-- name: get_state
SELECT key, value FROM saga_state WHERE scope = $1

-- name: get_saga
SELECT saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
       created_at, updated_at, wait_token, event_count, object_key, parent_id,
       nullif(version, ''), queue, priority, nullif(partition_key, ''), dedup_id, run
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
WHERE saga_id = ANY($3::text[]) AND owner = $1
  AND status IN ('PENDING', 'RUNNING', 'COMPENSATING', 'SUSPENDED')

-- name: claim
WITH clock AS (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS now
), picked AS (
    SELECT s.saga_id, s.owner AS previous_owner FROM saga_instances s, clock
    WHERE s.status IN ('PENDING', 'RUNNING', 'COMPENSATING', 'SUSPENDED')
      AND s.lease_expires_at < clock.now
      -- not queued ones (the queue's claim takes them, as their queue's limits allow)
      AND s.queue IS NULL
      AND s.name = ANY($2::text[])
      AND ($5::text[] IS NULL OR EXISTS (
            SELECT 1 FROM unnest($2::text[], $5::text[]) AS w(name, version)
            WHERE w.name = s.name AND (w.version IS NULL OR w.version = s.version)))
      AND (s.object_key IS NULL OR NOT EXISTS (
            SELECT 1 FROM saga_instances p
            WHERE p.object_key = s.object_key AND p.arrival < s.arrival
              AND p.status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED')))
    ORDER BY s.lease_expires_at
    LIMIT $4
    FOR UPDATE OF s SKIP LOCKED
)
UPDATE saga_instances s
SET owner = $1,
    fence = s.fence + 1,
    status = CASE WHEN s.status IN ('PENDING', 'SUSPENDED') THEN 'RUNNING' ELSE s.status END,
    lease_expires_at = clock.now + $3,
    updated_at = clock.now
FROM picked, clock
WHERE s.saga_id = picked.saga_id
RETURNING s.saga_id, s.name, s.status, s.input, s.output, s.error, s.owner, s.fence,
          s.lease_expires_at, s.created_at, s.updated_at, s.wait_token, s.event_count,
          s.object_key, s.parent_id, nullif(s.version, ''), s.queue, s.priority, nullif(s.partition_key, ''), s.dedup_id, s.run,
          picked.previous_owner IS NOT NULL AS taken_over

-- name: release
UPDATE saga_instances SET owner = NULL, lease_expires_at = 0
WHERE owner = $1 AND saga_id = ANY($2::text[])

-- name: notify_work
-- each schema's own channel (PostgresStore.channel), so that two sagakit schemas of one
-- database do not wake each other; public keeps the channel of earlier releases
SELECT pg_notify(CASE WHEN current_schema() = 'public' THEN 'sagakit_work'
                          ELSE 'sagakit_work_' || current_schema() END, '')

-- name: list_sagas
-- newest first; $5/$6 continue a page after the saga with that created_at and saga_id
SELECT saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
       created_at, updated_at, wait_token, event_count, object_key, parent_id,
       nullif(version, ''), queue, priority, nullif(partition_key, ''), dedup_id, run
FROM saga_instances
WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR name = $2)
  AND ($3::float8 IS NULL OR created_at >= $3) AND ($4::float8 IS NULL OR created_at < $4)
  AND ($5::float8 IS NULL OR created_at < $5 OR (created_at = $5 AND saga_id < $6::text))
ORDER BY created_at DESC, saga_id DESC
LIMIT $7

-- name: list_children
-- list_sagas of one saga's children ($8): a plain condition, so that every plan of it uses
-- the index on parent_id
SELECT saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
       created_at, updated_at, wait_token, event_count, object_key, parent_id,
       nullif(version, ''), queue, priority, nullif(partition_key, ''), dedup_id, run
FROM saga_instances
WHERE parent_id = $8
  AND ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR name = $2)
  AND ($3::float8 IS NULL OR created_at >= $3) AND ($4::float8 IS NULL OR created_at < $4)
  AND ($5::float8 IS NULL OR created_at < $5 OR (created_at = $5 AND saga_id < $6::text))
ORDER BY created_at DESC, saga_id DESC
LIMIT $7

-- name: count_by_status
SELECT status, count(*) FROM saga_instances GROUP BY status

-- name: administer
-- an operator's change, only if the saga is still as the operator saw it
UPDATE saga_instances
SET status = $2, output = $3, error = $4, owner = NULL, fence = fence + 1,
    lease_expires_at = $5, wait_token = $6, updated_at = extract(epoch FROM clock_timestamp())
WHERE saga_id = $1 AND status = $7 AND fence = $8
RETURNING saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
          created_at, updated_at, wait_token, event_count, object_key, parent_id,
       nullif(version, ''), queue, priority, nullif(partition_key, ''), dedup_id, run

-- name: delete_entries
DELETE FROM saga_journal WHERE saga_id = $1 AND seq = ANY($2::int4[])

-- name: upsert_entry
INSERT INTO saga_journal
    (saga_id, seq, kind, name, status, attempts, output, compensation, error,
     started_at, finished_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)
ON CONFLICT (saga_id, seq) DO UPDATE SET
    kind = excluded.kind, name = excluded.name, status = excluded.status,
    attempts = excluded.attempts, output = excluded.output,
    compensation = excluded.compensation, error = excluded.error,
    started_at = excluded.started_at, finished_at = excluded.finished_at

-- name: audit_entries
SELECT saga_id, seq, kind, name, status, attempts, output, compensation, error,
       started_at, finished_at
FROM saga_journal WHERE saga_id = $1 AND seq < 0

-- name: next_audit_seq
-- audit entries count down from -1, below every entry of the saga function
SELECT least(0, coalesce(min(seq), 0)) - 1 FROM saga_journal WHERE saga_id = $1

-- name: delete_saga
-- an ended saga only; its journal and events go with it (ON DELETE CASCADE)
DELETE FROM saga_instances
WHERE saga_id = $1 AND status IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED')
RETURNING saga_id

-- name: delete_saga_state
DELETE FROM saga_state WHERE scope = $1

-- name: prune
-- retention: up to $3 ended sagas of $1 last changed before $2, but none whose parent or one
-- of whose children has not ended; deleted with their journals and events (ON DELETE
-- CASCADE) and their published state (scope $4 || saga_id). A saga another transaction
-- holds is skipped, never waited for: writers never queue behind a prune
WITH picked AS (
    SELECT s.saga_id FROM saga_instances s
    WHERE s.status IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED')
      AND s.status = ANY($1::text[])
      AND s.updated_at < $2
      AND NOT EXISTS (
            SELECT 1 FROM saga_instances p WHERE p.saga_id = s.parent_id
              AND p.status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED'))
      AND NOT EXISTS (
            SELECT 1 FROM saga_instances c WHERE c.parent_id = s.saga_id
              AND c.status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED'))
    LIMIT $3
    FOR UPDATE OF s SKIP LOCKED
), gone AS (
    DELETE FROM saga_instances s USING picked WHERE s.saga_id = picked.saga_id
    RETURNING s.saga_id
), state_gone AS (
    DELETE FROM saga_state st USING gone WHERE st.scope = $4::text || gone.saga_id
)
SELECT saga_id FROM gone

-- name: count_prunable
-- how many sagas prune finds, over all its calls
SELECT count(*) FROM saga_instances s
WHERE s.status IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED')
  AND s.status = ANY($1::text[])
  AND s.updated_at < $2
  AND NOT EXISTS (
        SELECT 1 FROM saga_instances p WHERE p.saga_id = s.parent_id
          AND p.status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED'))
  AND NOT EXISTS (
        SELECT 1 FROM saga_instances c WHERE c.parent_id = s.saga_id
          AND c.status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED'))

-- name: insert_fork
-- a fork (engine.admin.fork): PENDING for any worker, having received the events copied;
-- $4 the source, $5 the last event copied, $6 the version. No row back: the id was taken
INSERT INTO saga_instances
    (saga_id, name, status, input, owner, fence, lease_expires_at, created_at, updated_at,
     event_count, version)
SELECT $1, $2, 'PENDING', $3, NULL, 1, 0, now.t, now.t,
       (SELECT count(*) FROM saga_events WHERE saga_id = $4 AND seq <= $5),
       coalesce($6::text, '')
FROM (SELECT extract(epoch FROM clock_timestamp())::float8 AS t) AS now
ON CONFLICT (saga_id) DO NOTHING
RETURNING saga_id

-- name: copy_events
-- the events a fork's kept waits took, numbered as in the source (with no delivery key)
INSERT INTO saga_events (saga_id, seq, kind, name, payload, created_at)
SELECT $1, seq, kind, name, payload, created_at FROM saga_events
WHERE saga_id = $2 AND seq <= $3

-- name: set_state
INSERT INTO saga_state (scope, key, value, updated_at)
VALUES ($1, $2, $3, extract(epoch FROM clock_timestamp()))
ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at

-- name: heartbeat
-- $2 a JSON array of [name, version] pairs (version '' for unversioned)
INSERT INTO saga_workers (worker_id, served, lease_seconds, last_seen)
VALUES ($1, $2::jsonb, $3, extract(epoch FROM clock_timestamp()))
ON CONFLICT (worker_id) DO UPDATE SET
    served = excluded.served, lease_seconds = excluded.lease_seconds,
    last_seen = excluded.last_seen

-- name: forget_worker
DELETE FROM saga_workers WHERE worker_id = $1

-- name: list_stranded
-- sagas not ended whose (name, version) no live worker (seen within $1 of its leases) serves
SELECT saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
       created_at, updated_at, wait_token, event_count, object_key, parent_id,
       nullif(version, ''), queue, priority, nullif(partition_key, ''), dedup_id, run
FROM saga_instances s
WHERE s.status IN ('PENDING', 'RUNNING', 'SUSPENDED', 'PARKED', 'COMPENSATING')
  AND NOT EXISTS (
        SELECT 1 FROM saga_workers w, jsonb_array_elements(w.served) v
        WHERE w.last_seen + $1 * w.lease_seconds >= extract(epoch FROM clock_timestamp())
          AND v ->> 0 = s.name AND v ->> 1 = s.version)
ORDER BY created_at DESC, saga_id DESC
LIMIT $2

-- name: count_stranded
SELECT count(*) FROM saga_instances s
WHERE s.status IN ('PENDING', 'RUNNING', 'SUSPENDED', 'PARKED', 'COMPENSATING')
  AND NOT EXISTS (
        SELECT 1 FROM saga_workers w, jsonb_array_elements(w.served) v
        WHERE w.last_seen + $1 * w.lease_seconds >= extract(epoch FROM clock_timestamp())
          AND v ->> 0 = s.name AND v ->> 1 = s.version)

-- name: create_queued_saga
-- a saga that waits: QUEUED in its queue, or PENDING until its delayed start. Any conflict
-- (its id, or its queue's deduplication id held by a saga that has not ended) inserts nothing
WITH clock AS (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS now
)
INSERT INTO saga_instances
    (saga_id, name, status, input, owner, fence, lease_expires_at, created_at, updated_at,
     parent_id, version, queue, priority, partition_key, dedup_id)
SELECT $1, $2, CASE WHEN $6::text IS NULL THEN 'PENDING' ELSE 'QUEUED' END, $3, NULL, 1,
       coalesce($5::float8, 0), clock.now, clock.now, $4, $7, $6, $8, coalesce($9::text, ''),
       $10
FROM clock
ON CONFLICT DO NOTHING
RETURNING saga_id

-- name: create_waiting_sagas
-- create_queued_saga for a batch (one statement, one commit); each row's created_at is a
-- microsecond after the one before it, so that the batch keeps its arrival order in the queue
WITH clock AS (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS now
)
INSERT INTO saga_instances
    (saga_id, name, status, input, owner, fence, lease_expires_at, created_at, updated_at,
     parent_id, version, queue, priority, partition_key, dedup_id)
SELECT n.saga_id, n.name, CASE WHEN n.queue IS NULL THEN 'PENDING' ELSE 'QUEUED' END, n.input,
       NULL, 1, coalesce(n.not_before, 0), clock.now + (n.place - 1) * 1e-6,
       clock.now + (n.place - 1) * 1e-6, n.parent_id, n.version, n.queue, n.priority,
       coalesce(n.partition_key, ''), n.dedup_id
FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::float8[], $6::text[],
            $7::text[], $8::int4[], $9::text[], $10::text[]) WITH ORDINALITY
        AS n(saga_id, name, input, parent_id, not_before, queue, version, priority,
             partition_key, dedup_id, place),
     clock
ORDER BY n.place
ON CONFLICT DO NOTHING
RETURNING saga_id

-- name: dedup_holder
-- the saga of the queue holding a deduplication id (one that has not ended)
SELECT saga_id FROM saga_instances
WHERE queue = $1 AND dedup_id = $2
  AND status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED')

-- name: declare_queue
INSERT INTO saga_queues
    (name, concurrency, worker_concurrency, rate_limit, rate_per, priority, partitioned,
     updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, extract(epoch FROM clock_timestamp()))
ON CONFLICT (name) DO UPDATE SET
    concurrency = excluded.concurrency,
    worker_concurrency = excluded.worker_concurrency,
    rate_limit = excluded.rate_limit,
    rate_per = excluded.rate_per,
    priority = excluded.priority,
    partitioned = excluded.partitioned,
    updated_at = excluded.updated_at
-- the declared limits did not change: no write (every worker declares on start)
WHERE (saga_queues.concurrency, saga_queues.worker_concurrency, saga_queues.rate_limit,
       saga_queues.rate_per, saga_queues.priority, saga_queues.partitioned)
      IS DISTINCT FROM
      (excluded.concurrency, excluded.worker_concurrency, excluded.rate_limit,
       excluded.rate_per, excluded.priority, excluded.partitioned)

-- name: set_queue_override
-- merged key by key (a JSON null lifts that limit); $2 NULL drops the whole override
UPDATE saga_queues
SET override = CASE WHEN $2::jsonb IS NULL THEN NULL
                    ELSE coalesce(override, '{}'::jsonb) || $2::jsonb END,
    updated_at = extract(epoch FROM clock_timestamp())
WHERE name = $1
RETURNING name

-- name: get_queues
SELECT name, concurrency, worker_concurrency, rate_limit, rate_per, priority, partitioned,
       override::text
FROM saga_queues ORDER BY name

-- name: lock_queue
-- dequeues of one queue are serialised: the counts read after this cannot be changed by
-- another worker's dequeue before this transaction commits; the limits are read fresh
SELECT name, concurrency, worker_concurrency, rate_limit, rate_per, priority, partitioned,
       override::text
FROM saga_queues WHERE name = $1 FOR UPDATE

-- name: queue_counts
-- per queue: waiting (and of them delayed), holding slots, the oldest waiting
SELECT queue,
       count(*) FILTER (WHERE status = 'QUEUED'),
       count(*) FILTER (WHERE status = 'QUEUED'
                          AND lease_expires_at > extract(epoch FROM clock_timestamp())),
       count(*) FILTER (WHERE status IN ('RUNNING', 'COMPENSATING')
                          AND lease_expires_at >= extract(epoch FROM clock_timestamp())),
       min(created_at) FILTER (WHERE status = 'QUEUED')
FROM saga_instances
WHERE queue IS NOT NULL AND status IN ('QUEUED', 'RUNNING', 'COMPENSATING')
GROUP BY queue

-- name: queue_recent_count
SELECT count(*) FROM saga_instances
WHERE queue = $1 AND dequeued_at > extract(epoch FROM clock_timestamp()) - $2::float8

-- name: queued_next
-- a queue that is not partitioned: its next sagas by priority, then arrival (the index order)
-- $1 the queue, $2/$3 the served (name, version) pairs, $4 the most to read, $5 the store's
-- clock (a parameter, so that the lease condition bounds the index scan)
SELECT saga_id, partition_key, status, priority, created_at, lease_expires_at, false
FROM saga_instances s
WHERE s.queue = $1 AND s.partition_key = '' AND s.status = 'QUEUED'
  AND s.lease_expires_at < $5::float8
  AND s.name = ANY($2::text[])
      AND ($3::text[] IS NULL OR EXISTS (
            SELECT 1 FROM unnest($2::text[], $3::text[]) AS w(name, version)
            WHERE w.name = s.name AND (w.version IS NULL OR w.version = s.version)))
ORDER BY s.priority, s.created_at, s.saga_id
LIMIT $4

-- name: queued_next_by_partition
-- a partitioned queue: the next sagas of each partition
SELECT saga_id, partition_key, status, priority, created_at, lease_expires_at, false FROM (
    SELECT s.saga_id, s.partition_key, s.status, s.priority, s.created_at, s.lease_expires_at,
           row_number() OVER (PARTITION BY s.partition_key
                              ORDER BY s.priority, s.created_at, s.saga_id) AS place
    FROM saga_instances s
    WHERE s.queue = $1 AND s.status = 'QUEUED'
      AND s.lease_expires_at < $5::float8
      AND s.name = ANY($2::text[])
      AND ($3::text[] IS NULL OR EXISTS (
            SELECT 1 FROM unnest($2::text[], $3::text[]) AS w(name, version)
            WHERE w.name = s.name AND (w.version IS NULL OR w.version = s.version)))) ranked
WHERE place <= $4

-- name: queued_due_again
-- started sagas of a queue that are due again (after a wait, or whose worker died): they need
-- a slot to go on
SELECT saga_id, partition_key, status, priority, created_at, lease_expires_at,
       owner IS NOT NULL
FROM saga_instances s
WHERE s.status IN ('PENDING', 'SUSPENDED', 'RUNNING', 'COMPENSATING')
  AND s.lease_expires_at < $5::float8
  AND s.queue = $1
  AND s.name = ANY($2::text[])
      AND ($3::text[] IS NULL OR EXISTS (
            SELECT 1 FROM unnest($2::text[], $3::text[]) AS w(name, version)
            WHERE w.name = s.name AND (w.version IS NULL OR w.version = s.version)))
ORDER BY s.lease_expires_at
LIMIT $4

-- name: queue_slots
-- a slot is held while the saga runs under a live lease: one whose worker died gives it back
-- when its lease expires, and takes one again, as its queue allows, when a worker takes it over
SELECT partition_key, count(*), count(*) FILTER (WHERE owner = $2) FROM saga_instances
WHERE queue = $1 AND status IN ('RUNNING', 'COMPENSATING')
  AND lease_expires_at >= extract(epoch FROM clock_timestamp())
GROUP BY partition_key

-- name: partition_starts
-- $3 the window's start (the claim's clock less the rate's period): a parameter, not an
-- expression of clock_timestamp() (volatile), so that it bounds the index scan instead of
-- filtering every start the queue ever made
SELECT dequeued_at FROM saga_instances
WHERE queue = $1 AND partition_key = $2
  AND dequeued_at > $3::float8

-- name: partition_last_start
SELECT max(dequeued_at) FROM saga_instances
WHERE queue = $1 AND partition_key = $2 AND dequeued_at IS NOT NULL

-- name: store_clock
SELECT extract(epoch FROM clock_timestamp())::float8

-- name: claim_queued
-- take the chosen queued sagas, each still waiting (an operator may have cancelled one since)
WITH clock AS (
    SELECT extract(epoch FROM clock_timestamp())::float8 AS now
)
UPDATE saga_instances s
SET owner = $1,
    fence = s.fence + 1,
    status = CASE WHEN s.status IN ('QUEUED', 'PENDING', 'SUSPENDED') THEN 'RUNNING'
                  ELSE s.status END,
    dequeued_at = CASE WHEN s.status = 'QUEUED' THEN clock.now ELSE s.dequeued_at END,
    lease_expires_at = clock.now + $3,
    updated_at = clock.now
FROM clock
WHERE s.saga_id = ANY($2::text[])
  AND s.status IN ('QUEUED', 'PENDING', 'SUSPENDED', 'RUNNING', 'COMPENSATING')
  AND s.lease_expires_at < clock.now
RETURNING s.saga_id, s.name, s.status, s.input, s.output, s.error, s.owner, s.fence,
          s.lease_expires_at, s.created_at, s.updated_at, s.wait_token, s.event_count,
          s.object_key, s.parent_id, nullif(s.version, ''), s.queue, s.priority,
          nullif(s.partition_key, ''), s.dedup_id, s.run

-- name: queue_position
SELECT count(*) + 1 FROM saga_instances o, saga_instances s
WHERE s.saga_id = $1 AND s.status = 'QUEUED'
  AND o.queue = s.queue AND o.partition_key = s.partition_key AND o.status = 'QUEUED'
  AND (o.priority, o.created_at, o.saga_id) < (s.priority, s.created_at, s.saga_id)

-- name: is_queued
SELECT 1 FROM saga_instances WHERE saga_id = $1 AND status = 'QUEUED'

-- name: declare_schedule
-- a new cron or time zone counts its ticks from now on; the same definition writes nothing
INSERT INTO saga_schedules AS s
    (name, cron, workflow, version, input, timezone, catch_up, queue, paused, last_tick,
     fire_from, created_at, updated_at)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, false, NULL, $9, $9, $9)
ON CONFLICT (name) DO UPDATE SET
    fire_from = CASE WHEN s.cron = excluded.cron AND s.timezone = excluded.timezone
                     THEN s.fire_from ELSE excluded.fire_from END,
    cron = excluded.cron,
    workflow = excluded.workflow,
    version = excluded.version,
    input = excluded.input,
    timezone = excluded.timezone,
    catch_up = excluded.catch_up,
    queue = excluded.queue,
    updated_at = excluded.updated_at
WHERE (s.cron, s.workflow, s.version, s.input, s.timezone, s.catch_up, s.queue)
    IS DISTINCT FROM (excluded.cron, excluded.workflow, excluded.version, excluded.input,
                      excluded.timezone, excluded.catch_up, excluded.queue)

-- name: due_schedules
SELECT name, cron, workflow, version, input, timezone, catch_up, queue, paused, last_tick,
       fire_from, created_at, updated_at
FROM saga_schedules
WHERE name = ANY($1::text[]) AND NOT paused AND fire_from <= $2
ORDER BY name

-- name: move_schedule
-- only from the fire_from the worker read: a worker that fired the tick first holds the row
-- until it commits, and this one then finds fire_from moved and updates nothing
UPDATE saga_schedules
SET fire_from = $3, last_tick = coalesce($4, last_tick),
    updated_at = extract(epoch FROM clock_timestamp())
WHERE name = $1 AND NOT paused AND fire_from = $2
RETURNING name

-- name: list_schedules
SELECT name, cron, workflow, version, input, timezone, catch_up, queue, paused, last_tick,
       fire_from, created_at, updated_at
FROM saga_schedules ORDER BY name

-- name: pause_schedule
-- resuming passes over the ticks that fell while the schedule was paused
UPDATE saga_schedules
SET fire_from = CASE WHEN paused AND NOT $2 THEN greatest(fire_from, $3) ELSE fire_from END,
    paused = $2,
    updated_at = $3
WHERE name = $1
RETURNING name, cron, workflow, version, input, timezone, catch_up, queue, paused, last_tick,
          fire_from, created_at, updated_at

-- name: lock_saga_row
-- a transactional step whose COMMIT got no answer: wait until the transaction that may still
-- hold the saga's row (its fenced append locked it) has ended, either way
SELECT fence FROM saga_instances WHERE saga_id = $1 FOR UPDATE

-- name: entry_outcome
-- then, in a statement of its own (a snapshot taken after that wait), what it left
SELECT status, attempts, finished_at FROM saga_journal WHERE saga_id = $1 AND seq = $2

-- name: transaction_settings
-- a transactional step's transaction: the server ends it if it idles longer than a statement
-- may take (its client may be gone: see PostgresStore._connect); the step's own SQL sees the
-- user's search_path ($2), not sagakit's schema
SELECT set_config('idle_in_transaction_session_timeout', $1, true),
       set_config('search_path', $2, true)

-- name: transaction_schema
-- back to sagakit's schema for the journal entry that commits with the step's writes
SELECT set_config('search_path', $1, true)

-- name: continue_saga
-- continue-as-new (stores/postgres/runs.py): fenced on the fence and run the old run holds;
-- the new fence refuses any late write of the old run
UPDATE saga_instances
SET input = $4, version = coalesce($5::text, ''), fence = fence + 1, run = run + 1,
    updated_at = extract(epoch FROM clock_timestamp())::float8
WHERE saga_id = $1 AND fence = $2 AND run = $3
RETURNING saga_id

-- name: saga_fence_run
SELECT fence, run FROM saga_instances WHERE saga_id = $1

-- name: run_input
-- the input and version the continuing run ran with, read (and the row locked) before
-- continue_saga replaces them
SELECT input, nullif(version, '') FROM saga_instances
WHERE saga_id = $1 AND fence = $2 AND run = $3
FOR UPDATE

-- name: insert_run
-- the continuing run's row, from its journal before archive_journal moves it (one row even
-- with no entries: count 0, no start)
INSERT INTO saga_runs (saga_id, run, input, version, entries, started_at, ended_at)
SELECT $1::text, $2::integer, $3::text, $4::text, count(*), min(started_at),
       extract(epoch FROM clock_timestamp())::float8
FROM saga_journal WHERE saga_id = $1 AND seq >= 0

-- name: archive_journal
INSERT INTO saga_journal_runs
    (saga_id, run, seq, kind, name, status, attempts, output, compensation, error,
     started_at, finished_at)
SELECT saga_id, $2, seq, kind, name, status, attempts, output, compensation, error,
       started_at, finished_at
FROM saga_journal WHERE saga_id = $1

-- name: clear_journal
DELETE FROM saga_journal WHERE saga_id = $1

-- name: retire_events
-- the events a run took: kept at a negative seq, which no wait reads, so that a delivery
-- retried with the same key still finds them; event_count keeps counting
UPDATE saga_events SET seq = -seq
WHERE saga_id = $1 AND seq = ANY($2::int8[]) AND seq > 0

-- name: get_run_journal
SELECT saga_id, seq, kind, name, status, attempts, output, compensation, error,
       started_at, finished_at
FROM saga_journal_runs WHERE saga_id = $1 AND run = $2 ORDER BY seq

-- name: get_runs
-- a page of a saga's earlier runs, newest first, along the primary key (no bound: the most an
-- integer holds)
SELECT run, input, version, entries, started_at, ended_at FROM saga_runs
WHERE saga_id = $1 AND run < coalesce($2::integer, 2147483647)
ORDER BY run DESC LIMIT $3
