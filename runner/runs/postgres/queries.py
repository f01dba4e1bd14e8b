"""Every SQL statement of the PostgreSQL store, by name (the schema itself is in migrations/).

Parameters are named (`%(run)s`); each statement is one round trip. A run's
writes are fenced by its lease epoch: a writer whose lease another took
changes nothing (the statement matches no row).
"""

# ---- the schema version ----------------------------------------------------------------

MIGRATION_LOCK = "SELECT pg_advisory_xact_lock(%(key)s)"
CREATE_SCHEMA_VERSION = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""
SCHEMA_VERSION_EXISTS = "SELECT to_regclass('schema_version') IS NOT NULL"
SCHEMA_VERSION = "SELECT coalesce(max(version), 0) FROM schema_version"
RECORD_MIGRATION = "INSERT INTO schema_version (version, name) VALUES (%(version)s, %(name)s)"

# ---- runs ------------------------------------------------------------------------------

INSERT_RUN = """
INSERT INTO runs (id, flow_source) VALUES (%(run)s, %(source)s)
ON CONFLICT (id) DO NOTHING"""
# a run whose id was chosen first: a row a crash left without any event is reused
CLAIM_RUN = """
INSERT INTO runs (id, flow_source) VALUES (%(run)s, %(source)s)
ON CONFLICT (id) DO UPDATE SET flow_source = excluded.flow_source WHERE runs.event_count = 0"""
RUN_EXISTS = "SELECT event_count > 0 FROM runs WHERE id = %(run)s"
FLOW_SOURCE = "SELECT flow_source FROM runs WHERE id = %(run)s"
SNAPSHOT = "SELECT snapshot::text FROM runs WHERE id = %(run)s"
EVENTS_AFTER = "SELECT line FROM events WHERE run_id = %(run)s AND seq > %(after)s ORDER BY seq"

# Newest first; rows without a snapshot yet pass unfiltered (the caller folds their events and filters).
LIST_RUNS = """
SELECT id, snapshot::text FROM runs
WHERE event_count > 0
  AND (%(before)s::text IS NULL OR id < %(before)s)
  AND (snapshot IS NULL OR (
        (%(flow)s::text IS NULL OR flow = %(flow)s)
    AND (%(status)s::text IS NULL OR status = %(status)s)
    AND (%(draft)s::boolean IS NULL OR draft = %(draft)s)
    AND (NOT %(active_only)s OR status = ANY(%(active)s))))
ORDER BY id DESC"""

SCAN = "SELECT id, snapshot::text, log_bytes FROM runs ORDER BY id"
DISCARD_UNBORN = """
DELETE FROM runs
WHERE id = %(run)s AND event_count = 0 AND (lease_until IS NULL OR lease_until < now())"""

# ---- the writer's lease and its fenced writes ---------------------------------------------

TAKE_LEASE = """
UPDATE runs SET lease_epoch = lease_epoch + 1, lease_holder = %(holder)s,
                lease_until = now() + %(lease)s * interval '1 second'
WHERE id = %(run)s AND (lease_until IS NULL OR lease_until < now())
RETURNING lease_epoch, event_count, last_sha256, log_bytes"""
LEASE_HOLDER = "SELECT lease_holder, lease_until FROM runs WHERE id = %(run)s"
RENEW_LEASE = """
UPDATE runs SET lease_until = now() + %(lease)s * interval '1 second'
WHERE id = %(run)s AND lease_epoch = %(epoch)s"""
RELEASE_LEASE = """
UPDATE runs SET lease_until = NULL, lease_holder = NULL
WHERE id = %(run)s AND lease_epoch = %(epoch)s"""

# The batch lands only if this writer still holds the lease and the log is where it left it.
APPEND_EVENTS = """
WITH fenced AS (
    UPDATE runs SET event_count = %(count)s, last_sha256 = %(last)s, log_bytes = log_bytes + %(bytes)s,
                    lease_until = now() + %(lease)s * interval '1 second'
    WHERE id = %(run)s AND lease_epoch = %(epoch)s AND event_count = %(first)s
    RETURNING id)
INSERT INTO events (run_id, seq, line)
SELECT fenced.id, batch.seq, batch.line
FROM fenced, unnest(%(seqs)s::integer[], %(lines)s::bytea[]) AS batch (seq, line)"""
WRITE_SNAPSHOT = """
UPDATE runs SET snapshot = %(snapshot)s::json, flow = %(flow)s, status = %(status)s, draft = %(draft)s
WHERE id = %(run)s AND lease_epoch = %(epoch)s"""

# ---- the callback index, kills -------------------------------------------------------------

INDEX_CALLBACK = """
INSERT INTO callbacks (token_sha256, run_id, step) VALUES (%(digest)s, %(run)s, %(step)s)
ON CONFLICT (token_sha256) DO NOTHING"""
FIND_CALLBACK = "SELECT run_id, step FROM callbacks WHERE token_sha256 = %(digest)s"
NOTE_KILLS = "INSERT INTO kills (run_id) VALUES (%(run)s) ON CONFLICT (run_id) DO NOTHING"
RUNS_WITH_KILLS = "SELECT run_id FROM kills ORDER BY run_id"
KILLS_SETTLED = "DELETE FROM kills WHERE run_id = %(run)s"

# ---- resources -------------------------------------------------------------------------------

INSERT_RESOURCE = """
INSERT INTO resources (sha256, size, media_type, name, run_id, step, created_at, chunks)
VALUES (%(sha)s, %(size)s, %(media_type)s, %(name)s, %(run)s, %(step)s, %(created_at)s, %(chunks)s)
ON CONFLICT (sha256) DO NOTHING"""
INSERT_CHUNK = "INSERT INTO resource_chunks (sha256, n, data) VALUES (%(sha)s, %(n)s, %(data)s)"
NOTE_RESOURCE_RUN = """
INSERT INTO resource_runs (sha256, run_id)
SELECT %(sha)s, %(run)s FROM resources WHERE sha256 = %(sha)s AND run_id IS DISTINCT FROM %(run)s
ON CONFLICT (sha256, run_id) DO NOTHING"""
RESOURCE = """
SELECT sha256, size, media_type, name, run_id, step, created_at, chunks FROM resources WHERE sha256 = %(sha)s"""
RESOURCE_RUNS = "SELECT run_id FROM resource_runs WHERE sha256 = %(sha)s ORDER BY added"
CHUNK = "SELECT data FROM resource_chunks WHERE sha256 = %(sha)s AND n = %(n)s"

# ---- importing a file store (runner.runs.postgres.importer) ------------------------------------

# A run from files arrives whole: its row as the file store had it, no lease; a run already there is kept.
IMPORT_RUN = """
INSERT INTO runs (id, flow_source, snapshot, flow, status, draft, event_count, last_sha256, log_bytes)
VALUES (%(run)s, %(source)s, %(snapshot)s::json, %(flow)s, %(status)s, %(draft)s, %(count)s, %(last)s, %(bytes)s)
ON CONFLICT (id) DO NOTHING"""
IMPORT_EVENTS = """
INSERT INTO events (run_id, seq, line)
SELECT %(run)s, batch.seq, batch.line FROM unnest(%(seqs)s::integer[], %(lines)s::bytea[]) AS batch (seq, line)"""
# A run already in the database: how many events it has, and the sha256 of its first `count` lines, each
# with its newline (as those bytes are in events.jsonl).
RUN_LOG_DIGEST = """
SELECT r.event_count,
       (SELECT encode(sha256(coalesce(string_agg(e.line || '\\x0a'::bytea, ''::bytea ORDER BY e.seq), ''::bytea)), 'hex')
        FROM events e WHERE e.run_id = r.id AND e.seq < %(count)s)
FROM runs r WHERE r.id = %(run)s"""
# An import that did not verify is taken back, only while nobody has written the run since.
UNDO_IMPORT = "DELETE FROM runs WHERE id = %(run)s AND lease_epoch = 0 AND event_count = %(count)s"

# ---- the daemon lock ---------------------------------------------------------------------------

TRY_DAEMON_LOCK = "SELECT pg_try_advisory_lock(%(key)s)"
