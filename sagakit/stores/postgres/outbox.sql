-- The PostgreSQL store's outbox, inbox and relay lease (sagakit/stores/postgres/outbox.py).

-- name: fence_saga
-- the saga's row, while the writer still holds its fence (locked until the commit)
UPDATE saga_instances SET updated_at = extract(epoch FROM clock_timestamp())
WHERE saga_id = $1 AND fence = $2
RETURNING 1

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

-- name: insert_outbox
-- a message whose key is there already (a retried write) is not written again
INSERT INTO saga_outbox
    (message_id, destination, kind, name, payload, reply_to, correlation_id, headers, saga_id,
     created_at, send_key)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, extract(epoch FROM clock_timestamp()), $10)
ON CONFLICT (send_key) DO NOTHING

-- name: notify_outbox
-- each schema's own channel (PostgresStore's outbox_channel)
SELECT pg_notify(CASE WHEN current_schema() = 'public' THEN 'sagakit_outbox'
                      ELSE 'sagakit_outbox_' || current_schema() END, '')

-- name: unpublished
SELECT position, message_id, destination, kind, name, payload, reply_to, correlation_id,
       headers, saga_id, created_at, published_at, attempts, last_error, send_key
FROM saga_outbox WHERE published_at IS NULL ORDER BY position LIMIT $1

-- name: mark_published
UPDATE saga_outbox SET published_at = extract(epoch FROM clock_timestamp()),
                       attempts = attempts + 1
WHERE position = ANY($1::bigint[]) AND published_at IS NULL

-- name: mark_publish_failed
UPDATE saga_outbox SET attempts = attempts + 1, last_error = $2 WHERE position = $1

-- name: outbox_backlog
SELECT count(*) FROM saga_outbox WHERE published_at IS NULL

-- name: saga_messages
SELECT position, message_id, destination, kind, name, payload, reply_to, correlation_id,
       headers, saga_id, created_at, published_at, attempts, last_error, send_key
FROM saga_outbox WHERE saga_id = $1 ORDER BY position

-- name: find_inbox
SELECT participant, message_id, name, status, reply, processed_at
FROM saga_inbox WHERE participant = $1 AND message_id = $2

-- name: insert_inbox
-- a second delivery of the message at once waits here for the first one's transaction, then
-- inserts nothing
INSERT INTO saga_inbox (participant, message_id, name, status, reply, processed_at)
VALUES ($1, $2, $3, $4, $5, $6)
ON CONFLICT (participant, message_id) DO NOTHING
RETURNING 1

-- name: update_inbox
UPDATE saga_inbox SET status = $3, reply = $4, processed_at = $5
WHERE participant = $1 AND message_id = $2

-- name: prune_outbox
-- rows another transaction holds are left for the next batch
DELETE FROM saga_outbox WHERE position IN (
    SELECT position FROM saga_outbox WHERE published_at < $1
    ORDER BY position LIMIT $2 FOR UPDATE SKIP LOCKED)

-- name: prune_inbox
DELETE FROM saga_inbox WHERE (participant, message_id) IN (
    SELECT participant, message_id FROM saga_inbox WHERE processed_at < $1
    LIMIT $2 FOR UPDATE SKIP LOCKED)

-- name: take_relay_lease
INSERT INTO saga_relay (name, owner, lease_expires_at)
VALUES ($1, $2, extract(epoch FROM clock_timestamp()) + $3)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,
                                 lease_expires_at = excluded.lease_expires_at
WHERE saga_relay.owner = excluded.owner
   OR saga_relay.lease_expires_at < extract(epoch FROM clock_timestamp())
RETURNING owner
