-- sagakit schema version 1 (PostgreSQL). Times are epoch seconds (double precision) taken from
-- the server's clock, so that workers on machines with skewed clocks agree on lease expiry.
CREATE TABLE saga_instances (
    saga_id          text PRIMARY KEY,
    name             text NOT NULL,
    status           text NOT NULL,
    input            text NOT NULL,
    output           text,
    error            text,
    owner            text,
    fence            bigint NOT NULL DEFAULT 1,
    lease_expires_at double precision NOT NULL DEFAULT 0,
    created_at       double precision NOT NULL,
    updated_at       double precision NOT NULL
);

CREATE INDEX saga_instances_claimable ON saga_instances (lease_expires_at)
    WHERE status IN ('PENDING', 'RUNNING', 'COMPENSATING');
CREATE INDEX saga_instances_owner ON saga_instances (owner) WHERE owner IS NOT NULL;
CREATE INDEX saga_instances_created ON saga_instances (created_at);
CREATE INDEX saga_instances_status ON saga_instances (status);

CREATE TABLE saga_journal (
    saga_id      text NOT NULL REFERENCES saga_instances (saga_id) ON DELETE CASCADE,
    seq          integer NOT NULL,
    kind         text NOT NULL,
    name         text NOT NULL,
    status       text NOT NULL,
    attempts     integer NOT NULL,
    output       text,
    compensation text,
    error        text,
    started_at   double precision NOT NULL,
    finished_at  double precision NOT NULL,
    PRIMARY KEY (saga_id, seq)
);
