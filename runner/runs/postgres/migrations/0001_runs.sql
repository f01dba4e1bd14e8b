-- signoff's store on PostgreSQL, version 1: runs and their events, the callback index, the runs with
-- kills still to carry out, and content-addressed resources in chunks.

-- One row per run. `snapshot` is the fold of its first `event_count` events (run.json in the file store),
-- kept as json, not jsonb: jsonb refuses \u0000 in strings. `flow`, `status` and `draft` are copied from it
-- for listing. The writer of a run holds its lease: `lease_epoch` grows by one each time a writer takes
-- it, and every write of the run's events or snapshot is fenced by it.
CREATE TABLE runs (
    id           text PRIMARY KEY,
    flow_source  text NOT NULL,
    snapshot     json,
    flow         text,
    status       text,
    draft        boolean,
    event_count  integer NOT NULL DEFAULT 0,
    last_sha256  text NOT NULL DEFAULT '0000000000000000000000000000000000000000000000000000000000000000',
    log_bytes    bigint NOT NULL DEFAULT 0,
    lease_epoch  bigint NOT NULL DEFAULT 0,
    lease_holder text,
    lease_until  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX runs_by_flow ON runs (flow, id DESC);
CREATE INDEX runs_by_status ON runs (status, id DESC);

-- A run's history: each line exactly as the file store writes it (without its newline), chained by sha256.
CREATE TABLE events (
    run_id text NOT NULL REFERENCES runs (id) ON DELETE CASCADE,
    seq    integer NOT NULL,
    line   bytea NOT NULL,
    PRIMARY KEY (run_id, seq)
);

-- callback token sha256 -> (run, step); the first entry for a token wins.
CREATE TABLE callbacks (
    token_sha256 text PRIMARY KEY,
    run_id       text NOT NULL,
    step         text NOT NULL
);

-- Runs with kills of remote jobs still to carry out.
CREATE TABLE kills (
    run_id text PRIMARY KEY
);

-- Content-addressed resources: the metadata row and its chunks are written in one transaction.
CREATE TABLE resources (
    sha256     text PRIMARY KEY,
    size       bigint NOT NULL,
    media_type text NOT NULL,
    name       text,
    run_id     text,
    step       text,
    created_at text,
    chunks     integer NOT NULL
);
CREATE TABLE resource_chunks (
    sha256 text NOT NULL REFERENCES resources (sha256) ON DELETE CASCADE,
    n      integer NOT NULL,
    data   bytea NOT NULL,
    PRIMARY KEY (sha256, n)
);
-- Other runs that stored the same bytes, in order.
CREATE TABLE resource_runs (
    sha256 text NOT NULL REFERENCES resources (sha256) ON DELETE CASCADE,
    run_id text NOT NULL,
    added  bigserial,
    PRIMARY KEY (sha256, run_id)
);
