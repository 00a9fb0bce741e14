-- The PostgreSQL-only transport's statements (sagakit/transports/postgres.py); its table is
-- made by the store's migration 0008.

-- name: has_table
SELECT to_regclass('saga_transport_messages') IS NOT NULL

-- name: publish
-- the row, and a wake-up of the destination's consumers (delivered at the commit)
WITH inserted AS (
    INSERT INTO saga_transport_messages
        (message_id, destination, kind, name, payload, reply_to, correlation_id, headers,
         created_at)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, extract(epoch FROM clock_timestamp()))
    RETURNING destination
)
SELECT pg_notify($9, destination) FROM inserted

-- name: take
-- the destination's oldest message that is available and that no other consumer holds
SELECT position, message_id, destination, kind, name, payload, reply_to, correlation_id,
       headers, deliveries
FROM saga_transport_messages
WHERE destination = $1 AND available_at <= extract(epoch FROM clock_timestamp())
ORDER BY position
LIMIT 1
FOR UPDATE SKIP LOCKED

-- name: ack
DELETE FROM saga_transport_messages WHERE position = $1

-- name: retry_later
UPDATE saga_transport_messages
SET deliveries = deliveries + 1, available_at = extract(epoch FROM clock_timestamp()) + $2
WHERE position = $1

-- name: dead_letter
-- an ordinary message of the dead-letter destination, numbered after every other
UPDATE saga_transport_messages
SET destination = $2, headers = $3, deliveries = 0, available_at = 0,
    position = nextval(pg_get_serial_sequence('saga_transport_messages', 'position'))
WHERE position = $1

-- name: pending
SELECT position, message_id, destination, kind, name, payload, reply_to, correlation_id,
       headers, deliveries
FROM saga_transport_messages WHERE destination = $1 ORDER BY position
