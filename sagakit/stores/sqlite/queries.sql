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
     object_key, arrival, parent_id, version, queue, priority, partition_key, dedup_id)
VALUES
    (:saga_id, :name, :status, :input, :owner, 1, :lease_expires_at, :now, :now,
     :object_key,
     CASE WHEN :object_key IS NULL THEN NULL
          ELSE (SELECT coalesce(max(arrival), 0) + 1 FROM saga_instances
                WHERE object_key = :object_key) END,
     :parent_id, coalesce(:version, ''), :queue, :priority, coalesce(:partition_key, ''),
     :dedup_id)
ON CONFLICT (saga_id) DO NOTHING

-- name: dedup_holder
-- the saga of the queue holding a deduplication id (one that has not ended)
SELECT saga_id FROM saga_instances
WHERE queue = :queue AND dedup_id = :dedup_id
  AND status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED')

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
       nullif(version, ''), queue, priority, nullif(partition_key, ''), dedup_id, run
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
-- (an event an earlier run took, kept at a negative seq for its delivery key, counts no more)
SELECT payload FROM saga_events
WHERE saga_id = :saga_id AND kind = :kind AND name = :name AND seq > 0
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
-- due sagas (lease over, or wake-up time reached), but of an object key only the first; not
-- queued ones (the queue's claim takes them, as their queue's limits allow)
SELECT s.saga_id, s.owner IS NOT NULL FROM saga_instances s
WHERE s.status IN ('PENDING', 'RUNNING', 'COMPENSATING', 'SUSPENDED')
  AND s.lease_expires_at < :now
  AND s.queue IS NULL
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
    status = CASE WHEN status IN ('PENDING', 'SUSPENDED', 'QUEUED') THEN 'RUNNING' ELSE status END,
    dequeued_at = CASE WHEN status = 'QUEUED' THEN :now ELSE dequeued_at END,
    lease_expires_at = :until,
    updated_at = :now
WHERE saga_id IN (SELECT value FROM json_each(:saga_ids))
RETURNING saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
          created_at, updated_at, wait_token, event_count, object_key, parent_id,
       nullif(version, ''), queue, priority, nullif(partition_key, ''), dedup_id, run

-- name: release
UPDATE saga_instances SET owner = NULL, lease_expires_at = 0
WHERE owner = :owner AND saga_id IN (SELECT value FROM json_each(:saga_ids))

-- name: list_sagas
-- newest first; :after_created/:after_id continue a page after that saga
SELECT saga_id, name, status, input, output, error, owner, fence, lease_expires_at,
       created_at, updated_at, wait_token, event_count, object_key, parent_id,
       nullif(version, ''), queue, priority, nullif(partition_key, ''), dedup_id, run
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
       nullif(version, ''), queue, priority, nullif(partition_key, ''), dedup_id, run
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
       nullif(version, ''), queue, priority, nullif(partition_key, ''), dedup_id, run
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

-- name: declare_queue
INSERT INTO saga_queues
    (name, concurrency, worker_concurrency, rate_limit, rate_per, priority, partitioned,
     updated_at)
VALUES
    (:name, :concurrency, :worker_concurrency, :rate_limit, :rate_per, :priority, :partitioned,
     :now)
ON CONFLICT (name) DO UPDATE SET
    concurrency = excluded.concurrency,
    worker_concurrency = excluded.worker_concurrency,
    rate_limit = excluded.rate_limit,
    rate_per = excluded.rate_per,
    priority = excluded.priority,
    partitioned = excluded.partitioned,
    updated_at = excluded.updated_at

-- name: set_queue_override
UPDATE saga_queues SET override = :override, updated_at = :now WHERE name = :name

-- name: get_queues
SELECT name, concurrency, worker_concurrency, rate_limit, rate_per, priority, partitioned,
       override
FROM saga_queues ORDER BY name

-- name: get_queue
SELECT name, concurrency, worker_concurrency, rate_limit, rate_per, priority, partitioned,
       override
FROM saga_queues WHERE name = :name

-- name: queue_counts
-- per queue: waiting (and of them delayed), holding slots, the oldest waiting
SELECT queue,
       sum(status = 'QUEUED'),
       sum(status = 'QUEUED' AND lease_expires_at > :now),
       sum(status IN ('RUNNING', 'COMPENSATING') AND lease_expires_at >= :now),
       min(CASE WHEN status = 'QUEUED' THEN created_at END)
FROM saga_instances
WHERE queue IS NOT NULL AND status IN ('QUEUED', 'RUNNING', 'COMPENSATING')
GROUP BY queue

-- name: queue_recent_count
SELECT count(*) FROM saga_instances WHERE queue = :queue AND dequeued_at > :since

-- name: queued_next
-- a queue that is not partitioned: its next sagas by priority, then arrival (the index order)
SELECT saga_id, partition_key, status, priority, created_at, lease_expires_at, 0
FROM saga_instances s
WHERE s.queue = :queue AND s.partition_key = '' AND s.status = 'QUEUED'
  AND s.lease_expires_at < :now
  AND EXISTS (SELECT 1 FROM json_each(:names) w
              WHERE json_extract(w.value, '$[0]') = s.name
                AND (json_extract(w.value, '$[1]') IS NULL OR json_extract(w.value, '$[1]') = s.version))
ORDER BY s.priority, s.created_at, s.saga_id
LIMIT :limit

-- name: queued_next_by_partition
-- a partitioned queue: the next sagas of each partition
SELECT saga_id, partition_key, status, priority, created_at, lease_expires_at, 0 FROM (
    SELECT s.saga_id, s.partition_key, s.status, s.priority, s.created_at, s.lease_expires_at,
           row_number() OVER (PARTITION BY s.partition_key
                              ORDER BY s.priority, s.created_at, s.saga_id) AS place
    FROM saga_instances s
    WHERE s.queue = :queue AND s.status = 'QUEUED' AND s.lease_expires_at < :now
      AND EXISTS (SELECT 1 FROM json_each(:names) w
                  WHERE json_extract(w.value, '$[0]') = s.name
                    AND (json_extract(w.value, '$[1]') IS NULL OR json_extract(w.value, '$[1]') = s.version)))
WHERE place <= :limit

-- name: queued_due_again
-- started sagas of a queue that are due again (after a wait, or whose worker died): they need
-- a slot to go on
SELECT s.saga_id, s.partition_key, s.status, s.priority, s.created_at, s.lease_expires_at,
       s.owner IS NOT NULL
FROM saga_instances s
WHERE s.status IN ('PENDING', 'SUSPENDED', 'RUNNING', 'COMPENSATING')
  AND s.lease_expires_at < :now
  AND s.queue = :queue
  AND EXISTS (SELECT 1 FROM json_each(:names) w
              WHERE json_extract(w.value, '$[0]') = s.name
                AND (json_extract(w.value, '$[1]') IS NULL OR json_extract(w.value, '$[1]') = s.version))
ORDER BY s.lease_expires_at
LIMIT :limit

-- name: queue_slots
-- a slot is held while the saga runs under a live lease: one whose worker died gives it back
-- when its lease expires, and takes one again, as its queue allows, when a worker takes it over
SELECT partition_key, count(*), sum(owner = :owner) FROM saga_instances
WHERE queue = :queue AND status IN ('RUNNING', 'COMPENSATING') AND lease_expires_at >= :now
GROUP BY partition_key

-- name: partition_starts
SELECT dequeued_at FROM saga_instances
WHERE queue = :queue AND partition_key = :partition_key AND dequeued_at > :since

-- name: partition_last_start
SELECT max(dequeued_at) FROM saga_instances
WHERE queue = :queue AND partition_key = :partition_key AND dequeued_at IS NOT NULL

-- name: queue_position
SELECT count(*) + 1 FROM saga_instances o, saga_instances s
WHERE s.saga_id = :saga_id AND s.status = 'QUEUED'
  AND o.queue = s.queue AND o.partition_key = s.partition_key AND o.status = 'QUEUED'
  AND (o.priority, o.created_at, o.saga_id) < (s.priority, s.created_at, s.saga_id)

-- name: is_queued
SELECT 1 FROM saga_instances WHERE saga_id = :saga_id AND status = 'QUEUED'

-- name: declare_schedule
-- a new cron or time zone counts its ticks from now on; the same definition writes nothing
INSERT INTO saga_schedules
    (name, cron, workflow, version, input, timezone, catch_up, queue, paused, last_tick,
     fire_from, created_at, updated_at)
VALUES
    (:name, :cron, :workflow, :version, :input, :timezone, :catch_up, :queue, 0, NULL,
     :now, :now, :now)
ON CONFLICT (name) DO UPDATE SET
    fire_from = CASE WHEN cron = excluded.cron AND timezone = excluded.timezone THEN fire_from
                     ELSE excluded.fire_from END,
    cron = excluded.cron,
    workflow = excluded.workflow,
    version = excluded.version,
    input = excluded.input,
    timezone = excluded.timezone,
    catch_up = excluded.catch_up,
    queue = excluded.queue,
    updated_at = excluded.updated_at
WHERE (cron, workflow, version, input, timezone, catch_up, coalesce(queue, ''))
   IS NOT (excluded.cron, excluded.workflow, excluded.version, excluded.input,
           excluded.timezone, excluded.catch_up, coalesce(excluded.queue, ''))

-- name: due_schedules
SELECT name, cron, workflow, version, input, timezone, catch_up, queue, paused, last_tick,
       fire_from, created_at, updated_at
FROM saga_schedules
WHERE name IN (SELECT value FROM json_each(:names)) AND paused = 0 AND fire_from <= :now
ORDER BY name

-- name: move_schedule
-- only from the fire_from the worker read: a tick another worker fired first moves nothing
UPDATE saga_schedules
SET fire_from = :fire_from, last_tick = coalesce(:tick, last_tick), updated_at = :now
WHERE name = :name AND paused = 0 AND fire_from = :expect

-- name: list_schedules
SELECT name, cron, workflow, version, input, timezone, catch_up, queue, paused, last_tick,
       fire_from, created_at, updated_at
FROM saga_schedules ORDER BY name

-- name: get_schedule
SELECT name, cron, workflow, version, input, timezone, catch_up, queue, paused, last_tick,
       fire_from, created_at, updated_at
FROM saga_schedules WHERE name = :name

-- name: pause_schedule
-- resuming passes over the ticks that fell while the schedule was paused
UPDATE saga_schedules
SET fire_from = CASE WHEN paused = 1 AND :paused = 0 THEN max(fire_from, :now)
                     ELSE fire_from END,
    paused = :paused,
    updated_at = :now
WHERE name = :name

-- name: continue_saga
-- continue-as-new (stores/sqlite/runs.py): fenced on the fence and run the old run holds; the
-- new fence refuses any late write of the old run
UPDATE saga_instances
SET input = :input, version = coalesce(:version, ''), fence = fence + 1, run = run + 1,
    updated_at = :now
WHERE saga_id = :saga_id AND fence = :fence AND run = :run

-- name: saga_fence_run
SELECT fence, run FROM saga_instances WHERE saga_id = :saga_id

-- name: run_input
-- the input and version the continuing run ran with, read before continue_saga replaces them
SELECT input, nullif(version, '') FROM saga_instances
WHERE saga_id = :saga_id AND fence = :fence AND run = :run

-- name: insert_run
-- the continuing run's row, from its journal before archive_journal moves it (one row even
-- with no entries: count 0, no start)
INSERT INTO saga_runs (saga_id, run, input, version, entries, started_at, ended_at)
SELECT :saga_id, :run, :old_input, :old_version, count(*), min(started_at), :now
FROM saga_journal WHERE saga_id = :saga_id AND seq >= 0

-- name: archive_journal
INSERT INTO saga_journal_runs
    (saga_id, run, seq, kind, name, status, attempts, output, compensation, error,
     started_at, finished_at)
SELECT saga_id, :run, seq, kind, name, status, attempts, output, compensation, error,
       started_at, finished_at
FROM saga_journal WHERE saga_id = :saga_id

-- name: retire_events
-- the events a run took: kept at a negative seq, which no wait reads, so that a delivery
-- retried with the same key still finds them; event_count keeps counting
UPDATE saga_events SET seq = -seq
WHERE saga_id = :saga_id AND seq IN (SELECT value FROM json_each(:seqs)) AND seq > 0

-- name: get_run_journal
SELECT saga_id, seq, kind, name, status, attempts, output, compensation, error,
       started_at, finished_at
FROM saga_journal_runs WHERE saga_id = :saga_id AND run = :run ORDER BY seq

-- name: get_runs
-- a page of a saga's earlier runs, newest first, along the primary key (no bound: the most an
-- INTEGER holds)
SELECT run, input, version, entries, started_at, ended_at FROM saga_runs
WHERE saga_id = :saga_id AND run < coalesce(:before, 9223372036854775807)
ORDER BY run DESC LIMIT :limit
