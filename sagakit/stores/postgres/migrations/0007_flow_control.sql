-- sagakit: no-transaction
-- sagakit schema version 7 (PostgreSQL): flow control (queues, delayed starts, schedules).
--
-- Run outside a transaction, statement by statement, so that the indexes on saga_instances
-- are built CONCURRENTLY (writers keep writing). Every statement is idempotent: a run that was
-- interrupted is simply run again (an index a failed CONCURRENTLY build left INVALID is
-- dropped and built again by the migration runner). Expand only: code of schema version 6
-- runs unchanged beside it; it never claims a QUEUED saga and inserts sagas with no queue.
--
-- A queued saga (engine.enqueue) waits as QUEUED until its queue's limits admit it; it holds
-- one of the queue's slots while it is RUNNING or COMPENSATING (not while it waits, SUSPENDED
-- or PARKED); dequeued_at is when it first left the queue, what the rate limit counts.
ALTER TABLE saga_instances ADD COLUMN IF NOT EXISTS queue text;
ALTER TABLE saga_instances ADD COLUMN IF NOT EXISTS priority integer NOT NULL DEFAULT 0;
ALTER TABLE saga_instances ADD COLUMN IF NOT EXISTS partition_key text NOT NULL DEFAULT '';
ALTER TABLE saga_instances ADD COLUMN IF NOT EXISTS dedup_id text;
ALTER TABLE saga_instances ADD COLUMN IF NOT EXISTS dequeued_at double precision;

-- the queue's next sagas: by priority, then in arrival order
CREATE INDEX CONCURRENTLY IF NOT EXISTS saga_instances_queued
    ON saga_instances (queue, partition_key, priority, created_at) WHERE status = 'QUEUED';
-- a queue's started sagas that are due again (a wait ended, a worker died): its claim looks at
-- them first, without walking every due saga of other queues or of none
CREATE INDEX CONCURRENTLY IF NOT EXISTS saga_instances_queue_due
    ON saga_instances (queue, lease_expires_at)
    WHERE queue IS NOT NULL AND status IN ('PENDING', 'SUSPENDED', 'RUNNING', 'COMPENSATING');
-- the sagas holding a queue's slots, and the starts its rate limit counts
CREATE INDEX CONCURRENTLY IF NOT EXISTS saga_instances_queue_slots
    ON saga_instances (queue, partition_key, owner)
    WHERE queue IS NOT NULL AND status IN ('RUNNING', 'COMPENSATING');
CREATE INDEX CONCURRENTLY IF NOT EXISTS saga_instances_queue_starts
    ON saga_instances (queue, partition_key, dequeued_at) WHERE dequeued_at IS NOT NULL;
-- one saga per deduplication id and queue until it ends
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS saga_instances_dedup
    ON saga_instances (queue, dedup_id)
    WHERE dedup_id IS NOT NULL
      AND status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED');

-- A queue's limits: those declared in code (engine.register(Queue(...)); the last registration
-- wins), and an operator's (sagakit queue set), a JSON object that wins over them key by key.
-- Every worker reads them in the transaction that dequeues (locking the row: dequeues of one
-- queue are serialised), so a change holds at once.
CREATE TABLE IF NOT EXISTS saga_queues (
    name               text PRIMARY KEY,
    concurrency        integer,
    worker_concurrency integer,
    rate_limit         integer,
    rate_per           double precision,
    priority           boolean NOT NULL DEFAULT false,
    partitioned        boolean NOT NULL DEFAULT false,
    override           jsonb,
    updated_at         double precision NOT NULL
);

-- A cron schedule (engine.schedule): each tick starts one saga, whose id names the tick. The
-- definition is the last one declared in code; paused is an operator's. fire_from is the
-- earliest time a tick may still fire (earlier ones were fired or passed over): a worker fires
-- a tick by moving it forward only from the value it read, in the transaction that creates
-- the tick's saga, so a tick fires once however many workers look. last_tick is the latest
-- tick fired.
CREATE TABLE IF NOT EXISTS saga_schedules (
    name       text PRIMARY KEY,
    cron       text NOT NULL,
    workflow   text NOT NULL,
    version    text NOT NULL DEFAULT '',
    input      text NOT NULL,
    timezone   text NOT NULL,
    catch_up   text NOT NULL,
    queue      text,
    paused     boolean NOT NULL DEFAULT false,
    last_tick  double precision,
    fire_from  double precision NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
);
