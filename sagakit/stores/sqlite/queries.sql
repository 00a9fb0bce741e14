-- Every statement the SQLite store runs. Parameters are named (:name).

-- name: schema_version_table
CREATE TABLE IF NOT EXISTS saga_schema_version (version INTEGER NOT NULL)

-- name: schema_version_exists
-- whether the file has sagakit's version table, asked without creating it (readers never write)
SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'saga_schema_version'

-- name: schema_version
SELECT max(version) FROM saga_schema_version

-- name: set_schema_version
INSERT INTO saga_schema_version (version) VALUES (:version)

-- name: insert_saga
INSERT INTO saga_instances
    (saga_id, name, status, input, owner, fence, lease_expires_at, created_at, updated_at,
     object_key, arrival, parent_id, version)
VALUES
    (:saga_id, :name, :status, :input, :owner, 1, :lease_expires_at, :now, :now,
     :object_key,
     CASE WHEN :object_key IS NULL THEN NULL
          ELSE (SELECT coalesce(max(arrival), 0) + 1 FROM saga_instances
                WHERE object_key = :object_key) END,
     :parent_id, coalesce(:version, ''))
ON CONFLICT (saga_id) DO NOTHING

-- name: object_busy
-- an unfinished saga of the same object key arrived before this one
SELECT EXISTS (
    SELECT 1 FROM saga_instances p
    WHERE p.object_key = :object_key AND p.arrival < :arrival
      AND p.status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED'))

-- name: arrival
SELECT arrival FROM saga_instances WHERE saga_id = :saga_id

-- name: own_saga
UPDATE saga_instances SET status = 'RUNNING', owner = :owner, lease_expires_at = :until
WHERE saga_id = :saga_id

-- name: get_saga
SELECT saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
       created_at, updated_at, wait_token, event_count, object_key, parent_id,
       nullif(version, '')
FROM saga_instances WHERE saga_id = :saga_id

-- name: touch_saga
UPDATE saga_instances SET updated_at = :now
WHERE saga_id = :saga_id AND fence = :fence AND (:guard IS NULL OR event_count = :guard)

-- name: update_saga_status
-- a terminal status, SUSPENDED or PARKED releases the saga; SUSPENDED until :wake_at,
-- PARKED until an operator acts
UPDATE saga_instances
SET status = coalesce(:status, status),
    output = coalesce(:output, output),
    error = coalesce(:error, error),
    owner = CASE WHEN :terminal OR :suspended OR :parked THEN NULL ELSE owner END,
    lease_expires_at = CASE WHEN :terminal THEN 0
                            WHEN :suspended THEN :wake_at
                            WHEN :parked THEN 1e18
                            ELSE lease_expires_at END,
    wait_token = CASE WHEN :terminal OR :clear_wait OR :parked THEN NULL
                      WHEN :suspended THEN :wait_token
                      ELSE wait_token END,
    updated_at = :now
WHERE saga_id = :saga_id AND fence = :fence
  AND (:guard IS NULL OR event_count = :guard)

-- name: saga_fence
SELECT fence FROM saga_instances WHERE saga_id = :saga_id

-- name: set_state
INSERT INTO saga_state (scope, key, value, updated_at) VALUES (:scope, :key, :value, :now)
ON CONFLICT (scope, key) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at

-- name: clear_state
DELETE FROM saga_state WHERE scope = :scope AND key = :key

-- name: get_state
SELECT key, value FROM saga_state WHERE scope = :scope

-- name: saga_for_event
SELECT status, wait_token, event_count FROM saga_instances WHERE saga_id = :saga_id

-- name: find_event
SELECT payload FROM saga_events WHERE saga_id = :saga_id AND kind = :kind AND name = :name
ORDER BY seq LIMIT 1

-- name: find_delivery
SELECT 1 FROM saga_events WHERE saga_id = :saga_id AND delivery_key = :key

-- name: insert_event
INSERT INTO saga_events (saga_id, seq, kind, name, payload, created_at, delivery_key)
VALUES (:saga_id, :seq, :kind, :name, :payload, :now, :key)

-- name: count_event
-- a SUSPENDED saga becomes due at once; a delivery for the wait token consumes it
UPDATE saga_instances
SET event_count = :seq,
    lease_expires_at = CASE WHEN status = 'SUSPENDED' THEN 0 ELSE lease_expires_at END,
    wait_token = CASE WHEN :consume_token THEN NULL ELSE wait_token END
WHERE saga_id = :saga_id

-- name: get_events
SELECT saga_id, seq, kind, name, payload, created_at FROM saga_events
WHERE saga_id = :saga_id AND seq > :after ORDER BY seq

-- name: upsert_entry
INSERT INTO saga_journal
    (saga_id, seq, kind, name, status, attempts, output, compensation, error,
     started_at, finished_at)
VALUES
    (:saga_id, :seq, :kind, :name, :status, :attempts, :output, :compensation, :error,
     :started_at, :finished_at)
ON CONFLICT (saga_id, seq) DO UPDATE SET
    kind = excluded.kind, name = excluded.name, status = excluded.status,
    attempts = excluded.attempts, output = excluded.output,
    compensation = excluded.compensation, error = excluded.error,
    started_at = excluded.started_at, finished_at = excluded.finished_at

-- name: get_journal
SELECT saga_id, seq, kind, name, status, attempts, output, compensation, error,
       started_at, finished_at
FROM saga_journal WHERE saga_id = :saga_id ORDER BY seq

-- name: renew_leases
UPDATE saga_instances SET lease_expires_at = :until
WHERE owner = :owner AND saga_id IN (SELECT value FROM json_each(:saga_ids))
  AND status IN ('PENDING', 'RUNNING', 'COMPENSATING', 'SUSPENDED')

-- name: claim_candidates
-- due sagas (lease over, or wake-up time reached), but of an object key only the first
SELECT s.saga_id, s.owner IS NOT NULL FROM saga_instances s
WHERE s.status IN ('PENDING', 'RUNNING', 'COMPENSATING', 'SUSPENDED')
  AND s.lease_expires_at < :now
  AND EXISTS (SELECT 1 FROM json_each(:names) w
              WHERE json_extract(w.value, '$[0]') = s.name
                AND (json_extract(w.value, '$[1]') IS NULL OR json_extract(w.value, '$[1]') = s.version))
  AND (s.object_key IS NULL OR NOT EXISTS (
        SELECT 1 FROM saga_instances p
        WHERE p.object_key = s.object_key AND p.arrival < s.arrival
          AND p.status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED')))
ORDER BY s.lease_expires_at
LIMIT :limit

-- name: claim
UPDATE saga_instances
SET owner = :owner,
    fence = fence + 1,
    status = CASE WHEN status IN ('PENDING', 'SUSPENDED') THEN 'RUNNING' ELSE status END,
    lease_expires_at = :until,
    updated_at = :now
WHERE saga_id IN (SELECT value FROM json_each(:saga_ids))
RETURNING saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
          created_at, updated_at, wait_token, event_count, object_key, parent_id,
       nullif(version, '')

-- name: release
UPDATE saga_instances SET owner = NULL, lease_expires_at = 0
WHERE owner = :owner AND saga_id IN (SELECT value FROM json_each(:saga_ids))

-- name: list_sagas
-- newest first; :after_created/:after_id continue a page after that saga
SELECT saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
       created_at, updated_at, wait_token, event_count, object_key, parent_id,
       nullif(version, '')
FROM saga_instances
WHERE (:status IS NULL OR status = :status) AND (:name IS NULL OR name = :name)
  AND (:created_after IS NULL OR created_at >= :created_after)
  AND (:created_before IS NULL OR created_at < :created_before)
  AND (:after_created IS NULL OR created_at < :after_created
       OR (created_at = :after_created AND saga_id < :after_id))
ORDER BY created_at DESC, saga_id DESC
LIMIT :limit

-- name: list_children
-- list_sagas of one saga's children: a plain condition, so that it uses the index on parent_id
SELECT saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
       created_at, updated_at, wait_token, event_count, object_key, parent_id,
       nullif(version, '')
FROM saga_instances
WHERE parent_id = :parent_id
  AND (:status IS NULL OR status = :status) AND (:name IS NULL OR name = :name)
  AND (:created_after IS NULL OR created_at >= :created_after)
  AND (:created_before IS NULL OR created_at < :created_before)
  AND (:after_created IS NULL OR created_at < :after_created
       OR (created_at = :after_created AND saga_id < :after_id))
ORDER BY created_at DESC, saga_id DESC
LIMIT :limit

-- name: count_by_status
SELECT status, count(*) FROM saga_instances GROUP BY status

-- name: administer
-- an operator's change, only if the saga is still as the operator saw it
UPDATE saga_instances
SET status = :status, output = :output, error = :error, owner = NULL, fence = fence + 1,
    lease_expires_at = :due_at, wait_token = :wait_token, updated_at = :now
WHERE saga_id = :saga_id AND status = :expect_status AND fence = :expect_fence

-- name: delete_entry
DELETE FROM saga_journal WHERE saga_id = :saga_id AND seq = :seq

-- name: audit_entries
SELECT saga_id, seq, kind, name, status, attempts, output, compensation, error,
       started_at, finished_at
FROM saga_journal WHERE saga_id = :saga_id AND seq < 0

-- name: next_audit_seq
-- audit entries count down from -1, below every entry of the saga function
SELECT min(0, coalesce(min(seq), 0)) - 1 FROM saga_journal WHERE saga_id = :saga_id

-- name: delete_saga
-- an ended saga only (its journal and events are deleted after it, in the same transaction)
DELETE FROM saga_instances
WHERE saga_id = :saga_id AND status IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED')

-- name: delete_saga_journal
DELETE FROM saga_journal WHERE saga_id = :saga_id

-- name: delete_saga_events
DELETE FROM saga_events WHERE saga_id = :saga_id

-- name: delete_saga_state
DELETE FROM saga_state WHERE scope = :scope

-- name: prunable
-- retention's candidates, read beside the writer: ended sagas of :statuses last changed
-- before :ended_before, but none whose parent or one of whose children has not ended
SELECT s.saga_id FROM saga_instances s
WHERE s.status IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED')
  AND s.status IN (SELECT value FROM json_each(:statuses))
  AND s.updated_at < :ended_before
  AND NOT EXISTS (
        SELECT 1 FROM saga_instances p WHERE p.saga_id = s.parent_id
          AND p.status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED'))
  AND NOT EXISTS (
        SELECT 1 FROM saga_instances c WHERE c.parent_id = s.saga_id
          AND c.status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED'))
LIMIT :limit

-- name: count_prunable
-- how many sagas prunable finds, without a limit
SELECT count(*) FROM saga_instances s
WHERE s.status IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED')
  AND s.status IN (SELECT value FROM json_each(:statuses))
  AND s.updated_at < :ended_before
  AND NOT EXISTS (
        SELECT 1 FROM saga_instances p WHERE p.saga_id = s.parent_id
          AND p.status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED'))
  AND NOT EXISTS (
        SELECT 1 FROM saga_instances c WHERE c.parent_id = s.saga_id
          AND c.status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED'))

-- name: prune_sagas
-- those of prunable's candidates that are still prunable in the writer's transaction, each
-- found by its key (the unary + keeps the planner off the status index: this runs on the
-- event loop and must never scan); their journals and events go with them (ON DELETE CASCADE)
DELETE FROM saga_instances
WHERE saga_id IN (SELECT value FROM json_each(:saga_ids))
  AND +status IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED')
  AND +status IN (SELECT value FROM json_each(:statuses))
  AND updated_at < :ended_before
  AND NOT EXISTS (
        SELECT 1 FROM saga_instances p WHERE p.saga_id = saga_instances.parent_id
          AND p.status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED'))
  AND NOT EXISTS (
        SELECT 1 FROM saga_instances c WHERE c.parent_id = saga_instances.saga_id
          AND c.status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED'))
RETURNING saga_id

-- name: prune_journals
DELETE FROM saga_journal WHERE saga_id IN (SELECT value FROM json_each(:saga_ids))

-- name: prune_events
DELETE FROM saga_events WHERE saga_id IN (SELECT value FROM json_each(:saga_ids))

-- name: prune_state
DELETE FROM saga_state WHERE scope IN (SELECT value FROM json_each(:scopes))

-- name: insert_fork
-- a fork (engine.admin.fork): PENDING for any worker, having received the events copied
INSERT INTO saga_instances
    (saga_id, name, status, input, owner, fence, lease_expires_at, created_at, updated_at,
     event_count, version)
VALUES
    (:saga_id, :name, 'PENDING', :input, NULL, 1, 0, :now, :now,
     (SELECT count(*) FROM saga_events WHERE saga_id = :source_id AND seq <= :upto),
     coalesce(:version, ''))

-- name: copy_events
-- the events a fork's kept waits took, numbered as in the source (with no delivery key)
INSERT INTO saga_events (saga_id, seq, kind, name, payload, created_at)
SELECT :saga_id, seq, kind, name, payload, created_at FROM saga_events
WHERE saga_id = :source_id AND seq <= :upto

-- name: heartbeat
-- :served is a JSON array of [name, version] pairs (version '' for unversioned)
INSERT INTO saga_workers (worker_id, served, lease_seconds, last_seen)
VALUES (:worker_id, :served, :lease_seconds, :now)
ON CONFLICT (worker_id) DO UPDATE SET
    served = excluded.served, lease_seconds = excluded.lease_seconds,
    last_seen = excluded.last_seen

-- name: forget_worker
DELETE FROM saga_workers WHERE worker_id = :worker_id

-- name: list_stranded
-- sagas not ended whose (name, version) no live worker (seen within 3 of its leases) serves
SELECT saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
       created_at, updated_at, wait_token, event_count, object_key, parent_id,
       nullif(version, '')
FROM saga_instances s
WHERE s.status IN ('PENDING', 'RUNNING', 'SUSPENDED', 'PARKED', 'COMPENSATING')
  AND NOT EXISTS (
        SELECT 1 FROM saga_workers w, json_each(w.served) v
        WHERE w.last_seen + :live_leases * w.lease_seconds >= :now
          AND json_extract(v.value, '$[0]') = s.name AND json_extract(v.value, '$[1]') = s.version)
ORDER BY created_at DESC, saga_id DESC
LIMIT :limit

-- name: count_stranded
SELECT count(*) FROM saga_instances s
WHERE s.status IN ('PENDING', 'RUNNING', 'SUSPENDED', 'PARKED', 'COMPENSATING')
  AND NOT EXISTS (
        SELECT 1 FROM saga_workers w, json_each(w.served) v
        WHERE w.last_seen + :live_leases * w.lease_seconds >= :now
          AND json_extract(v.value, '$[0]') = s.name AND json_extract(v.value, '$[1]') = s.version)
