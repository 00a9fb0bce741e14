-- sagakit schema version 7 (SQLite): flow control (queues, delayed starts, schedules).
--
-- Expand only: code of schema version 6 runs unchanged beside it. It never sees a queued saga
-- (QUEUED is a status it does not claim) and inserts sagas with no queue.
--
-- A queued saga (engine.enqueue) waits as QUEUED until its queue's limits admit it; it holds
-- one of the queue's slots while it is RUNNING or COMPENSATING (not while it waits, SUSPENDED
-- or PARKED); dequeued_at is when it first left the queue, what the rate limit counts.
ALTER TABLE saga_instances ADD COLUMN queue TEXT;
ALTER TABLE saga_instances ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE saga_instances ADD COLUMN partition_key TEXT NOT NULL DEFAULT '';
ALTER TABLE saga_instances ADD COLUMN dedup_id TEXT;
ALTER TABLE saga_instances ADD COLUMN dequeued_at REAL;

-- the queue's next sagas: by priority, then in arrival order
CREATE INDEX saga_instances_queued ON saga_instances (queue, partition_key, priority, created_at)
    WHERE status = 'QUEUED';
-- a queue's started sagas that are due again (a wait ended, a worker died): its claim looks at
-- them first, without walking every due saga of other queues or of none
CREATE INDEX saga_instances_queue_due ON saga_instances (queue, lease_expires_at)
    WHERE queue IS NOT NULL AND status IN ('PENDING', 'SUSPENDED', 'RUNNING', 'COMPENSATING');
-- the sagas holding a queue's slots, and the starts its rate limit counts
CREATE INDEX saga_instances_queue_slots ON saga_instances (queue, partition_key, owner)
    WHERE queue IS NOT NULL AND status IN ('RUNNING', 'COMPENSATING');
CREATE INDEX saga_instances_queue_starts ON saga_instances (queue, partition_key, dequeued_at)
    WHERE dequeued_at IS NOT NULL;
-- one saga per deduplication id and queue until it ends
CREATE UNIQUE INDEX saga_instances_dedup ON saga_instances (queue, dedup_id)
    WHERE dedup_id IS NOT NULL
      AND status NOT IN ('COMPLETED', 'COMPENSATED', 'FAILED', 'CANCELLED');

-- A queue's limits: those declared in code (engine.register(Queue(...)); the last registration
-- wins), and an operator's (sagakit queue set), a JSON object that wins over them key by key.
-- Every worker reads them in the transaction that dequeues, so a change holds at once.
CREATE TABLE saga_queues (
    name               TEXT PRIMARY KEY,
    concurrency        INTEGER,
    worker_concurrency INTEGER,
    rate_limit         INTEGER,
    rate_per           REAL,
    priority           INTEGER NOT NULL DEFAULT 0,
    partitioned        INTEGER NOT NULL DEFAULT 0,
    override           TEXT,
    updated_at         REAL NOT NULL
) WITHOUT ROWID;

-- A cron schedule (engine.schedule): each tick starts one saga, whose id names the tick. The
-- definition is the last one declared in code; paused is an operator's. fire_from is the
-- earliest time a tick may still fire (earlier ones were fired or passed over): a worker fires
-- a tick by moving it forward only from the value it read, in the transaction that creates
-- the tick's saga, so a tick fires once however many workers look. last_tick is the latest
-- tick fired.
CREATE TABLE saga_schedules (
    name       TEXT PRIMARY KEY,
    cron       TEXT NOT NULL,
    workflow   TEXT NOT NULL,
    version    TEXT NOT NULL DEFAULT '',
    input      TEXT NOT NULL,
    timezone   TEXT NOT NULL,
    catch_up   TEXT NOT NULL,
    queue      TEXT,
    paused     INTEGER NOT NULL DEFAULT 0,
    last_tick  REAL,
    fire_from  REAL NOT NULL,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
) WITHOUT ROWID;
