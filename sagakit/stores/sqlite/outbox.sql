-- The SQLite store's outbox, inbox and relay lease (sagakit/stores/sqlite/outbox.py).

-- name: insert_outbox
-- a message whose key is there already (a retried write) is not written again
INSERT INTO saga_outbox
    (message_id, destination, kind, name, payload, reply_to, correlation_id, headers, saga_id,
     created_at, send_key)
VALUES (:message_id, :destination, :kind, :name, :payload, :reply_to, :correlation_id,
        :headers, :saga_id, :now, :send_key)
ON CONFLICT (send_key) DO NOTHING

-- name: unpublished
SELECT position, message_id, destination, kind, name, payload, reply_to, correlation_id,
       headers, saga_id, created_at, published_at, attempts, last_error, send_key
FROM saga_outbox WHERE published_at IS NULL ORDER BY position LIMIT :limit

-- name: mark_published
UPDATE saga_outbox SET published_at = :now, attempts = attempts + 1
WHERE position = :position AND published_at IS NULL

-- name: mark_publish_failed
UPDATE saga_outbox SET attempts = attempts + 1, last_error = :error WHERE position = :position

-- name: outbox_backlog
SELECT count(*) FROM saga_outbox WHERE published_at IS NULL

-- name: saga_messages
SELECT position, message_id, destination, kind, name, payload, reply_to, correlation_id,
       headers, saga_id, created_at, published_at, attempts, last_error, send_key
FROM saga_outbox WHERE saga_id = :saga_id ORDER BY position

-- name: find_inbox
SELECT participant, message_id, name, status, reply, processed_at
FROM saga_inbox WHERE participant = :participant AND message_id = :message_id

-- name: insert_inbox
INSERT INTO saga_inbox (participant, message_id, name, status, reply, processed_at)
VALUES (:participant, :message_id, :name, :status, :reply, :processed_at)
ON CONFLICT (participant, message_id) DO NOTHING

-- name: prune_outbox
-- published rows are the oldest ones: the scan in position order finds them first
DELETE FROM saga_outbox WHERE position IN (
    SELECT position FROM saga_outbox
    WHERE published_at IS NOT NULL AND published_at < :before
    ORDER BY position LIMIT :limit)

-- name: prune_inbox
DELETE FROM saga_inbox WHERE rowid IN (
    SELECT rowid FROM saga_inbox WHERE processed_at < :before ORDER BY rowid LIMIT :limit)

-- name: take_relay_lease
INSERT INTO saga_relay (name, owner, lease_expires_at) VALUES (:name, :owner, :until)
ON CONFLICT (name) DO UPDATE SET owner = excluded.owner,
                                 lease_expires_at = excluded.lease_expires_at
WHERE saga_relay.owner = excluded.owner OR saga_relay.lease_expires_at < :now

-- name: relay_owner
SELECT owner FROM saga_relay WHERE name = :name
