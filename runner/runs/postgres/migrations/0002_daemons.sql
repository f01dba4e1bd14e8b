-- signoff's store on PostgreSQL, version 2: what several daemons on one database share besides the runs.

-- When a waiting run is next due (its deadline or reminder), copied from its snapshot, so any daemon
-- finds the waits a dead daemon was timing.
ALTER TABLE runs ADD COLUMN wake_at timestamptz;
CREATE INDEX runs_active ON runs (status, wake_at) WHERE status IN ('queued', 'running', 'waiting');

-- Callbacks accepted (committed before the 202) and not yet recorded by their run; the first one for a
-- step wins. A row with no entry closes the step: its wait ended without an answer.
CREATE TABLE inbox (
    run_id      text NOT NULL,
    step        text NOT NULL,
    entry       json,
    accepted_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, step)
);

-- Wake-ups, sent by the committing transaction, so nobody is woken before the row is visible.
-- The payload is a run id, far below NOTIFY's 8000-byte limit; bodies never travel this way.
CREATE FUNCTION signoff_inbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.entry IS NOT NULL THEN
        PERFORM pg_notify('signoff_inbox', NEW.run_id);
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER inbox_notify AFTER INSERT ON inbox FOR EACH ROW EXECUTE FUNCTION signoff_inbox_notify();

CREATE FUNCTION signoff_events_notify() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('signoff_events', NEW.id);
    RETURN NULL;
END $$;
CREATE TRIGGER events_notify AFTER UPDATE OF event_count ON runs
    FOR EACH ROW WHEN (NEW.event_count <> OLD.event_count) EXECUTE FUNCTION signoff_events_notify();

-- Things done once across all daemons (a reminder, a kill of a detached job): the first to insert the key
-- does it; a claim whose holder died lapses at `until`.
CREATE TABLE claims (
    key    text PRIMARY KEY,
    holder text NOT NULL,
    until  timestamptz
);

-- The last schedule slot claimed per flow trigger (`flow#index`), naming the run it creates.
CREATE TABLE schedule_claims (
    key      text PRIMARY KEY,
    slot     timestamptz NOT NULL,
    run_id   text,
    creating boolean NOT NULL DEFAULT true
);

-- Release state (verdicts, seen tags, pins, yanks, ...), one JSON document per name, and its history.
CREATE TABLE release_state (
    name  text PRIMARY KEY,
    value json NOT NULL
);
CREATE TABLE release_history (
    id    bigserial PRIMARY KEY,
    flow  text,
    entry json NOT NULL
);

-- Settings the daemons share: the link secret when the config names none.
CREATE TABLE settings (
    name  text PRIMARY KEY,
    value text NOT NULL
);

-- The daemons serving this database, as each last said it was alive.
CREATE TABLE daemons (
    holder     text PRIMARY KEY,
    started_at timestamptz NOT NULL DEFAULT now(),
    seen_at    timestamptz NOT NULL DEFAULT now()
);
