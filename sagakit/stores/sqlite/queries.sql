-- Every statement the SQLite store runs. Parameters are named (:name).

-- name: schema_version_table
CREATE TABLE IF NOT EXISTS saga_schema_version (version INTEGER NOT NULL)

-- name: schema_version
SELECT max(version) FROM saga_schema_version

-- name: set_schema_version
INSERT INTO saga_schema_version (version) VALUES (:version)

-- name: insert_saga
INSERT INTO saga_instances
    (saga_id, name, status, input, owner, fence, lease_expires_at, created_at, updated_at)
VALUES
    (:saga_id, :name, :status, :input, :owner, 1, :lease_expires_at, :now, :now)
ON CONFLICT (saga_id) DO NOTHING

-- name: get_saga
SELECT saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
       created_at, updated_at
FROM saga_instances WHERE saga_id = :saga_id

-- name: touch_saga
UPDATE saga_instances SET updated_at = :now
WHERE saga_id = :saga_id AND fence = :fence

-- name: update_saga_status
UPDATE saga_instances
SET status = :status,
    output = coalesce(:output, output),
    error = coalesce(:error, error),
    owner = CASE WHEN :terminal THEN NULL ELSE owner END,
    lease_expires_at = CASE WHEN :terminal THEN 0 ELSE lease_expires_at END,
    updated_at = :now
WHERE saga_id = :saga_id AND fence = :fence

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
WHERE owner = :owner AND status IN ('PENDING', 'RUNNING', 'COMPENSATING', 'SUSPENDED')

-- name: claim_candidates
SELECT saga_id, owner IS NOT NULL FROM saga_instances
WHERE status IN ('PENDING', 'RUNNING', 'COMPENSATING')
  AND lease_expires_at < :now
  AND name IN (SELECT value FROM json_each(:names))
ORDER BY lease_expires_at
LIMIT :limit

-- name: claim
UPDATE saga_instances
SET owner = :owner,
    fence = fence + 1,
    status = CASE WHEN status = 'PENDING' THEN 'RUNNING' ELSE status END,
    lease_expires_at = :until,
    updated_at = :now
WHERE saga_id IN (SELECT value FROM json_each(:saga_ids))
RETURNING saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
          created_at, updated_at

-- name: release
UPDATE saga_instances SET owner = NULL, lease_expires_at = 0
WHERE owner = :owner AND saga_id IN (SELECT value FROM json_each(:saga_ids))

-- name: list_sagas
SELECT saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
       created_at, updated_at
FROM saga_instances
WHERE (:status IS NULL OR status = :status) AND (:name IS NULL OR name = :name)
ORDER BY created_at DESC, saga_id DESC
LIMIT :limit
