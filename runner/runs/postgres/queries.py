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
UPDATE runs SET snapshot = %(snapshot)s::json, flow = %(flow)s, status = %(status)s, draft = %(draft)s,
                wake_at = %(wake_at)s
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

# ---- several daemons on one database (runner.runs.postgres.shared, .inbox) -------------------------

REGISTER_DAEMON = """
INSERT INTO daemons (holder) VALUES (%(holder)s)
ON CONFLICT (holder) DO UPDATE SET started_at = now(), seen_at = now()"""
DAEMON_ALIVE = "UPDATE daemons SET seen_at = now() WHERE holder = %(holder)s"
DAEMON_GONE = "DELETE FROM daemons WHERE holder = %(holder)s"
# the writers this host's processes were (`host:pid`), as the daemons, claims and leases name them
HOST_HOLDERS = """
SELECT holder FROM daemons WHERE holder LIKE %(prefix)s
UNION SELECT holder FROM claims WHERE holder LIKE %(prefix)s AND until IS NOT NULL
UNION SELECT lease_holder FROM runs WHERE lease_holder LIKE %(prefix)s AND lease_until > now()"""
FORGET_DAEMONS = "DELETE FROM daemons WHERE holder = ANY(%(holders)s)"
FORGET_CLAIMS = "DELETE FROM claims WHERE holder = ANY(%(holders)s) AND until IS NOT NULL"
FORGET_LEASES = """
UPDATE runs SET lease_until = NULL, lease_holder = NULL
WHERE lease_holder = ANY(%(holders)s) AND lease_until > now()"""
LIVE_DAEMONS = """
SELECT holder, started_at, seen_at FROM daemons WHERE seen_at > now() - %(within)s * interval '1 second'
ORDER BY holder"""

# Active runs nobody holds that need a writer: queued or running ones (a dead writer's, or not yet
# started), waits that are due, and waits with a callback accepted. Rows another daemon's sweep is
# looking at now are skipped; the lease then decides who advances each.
ORPHANED_RUNS = """
SELECT id FROM runs r
WHERE status IN ('queued', 'running', 'waiting') AND (lease_until IS NULL OR lease_until < now())
  AND (status IN ('queued', 'running') OR wake_at <= now()
       OR EXISTS (SELECT 1 FROM inbox m WHERE m.run_id = r.id AND m.entry IS NOT NULL))
ORDER BY id LIMIT %(limit)s
FOR UPDATE SKIP LOCKED"""

# the first to insert a key does the thing; a claim past its `until` may be taken again
TAKE_CLAIM = """
INSERT INTO claims (key, holder, until) VALUES (%(key)s, %(holder)s, now() + %(lapse)s * interval '1 second')
ON CONFLICT (key) DO UPDATE SET holder = excluded.holder, until = excluded.until
WHERE claims.until IS NOT NULL AND claims.until < now()"""
# one of a flow's `concurrency` slots, held by a run (not a daemon) until that run is no longer active
TAKE_FLOW_SLOT = """
INSERT INTO claims (key, holder, until) VALUES (%(key)s, %(run)s, NULL)
ON CONFLICT (key) DO UPDATE SET holder = excluded.holder
WHERE claims.holder = excluded.holder
   OR NOT EXISTS (SELECT 1 FROM runs WHERE id = claims.holder AND status IN ('queued', 'running', 'waiting'))"""
SETTLE_CLAIM = "UPDATE claims SET until = NULL WHERE key = %(key)s AND holder = %(holder)s"

SCHEDULE_CLAIMS = "SELECT key, slot, run_id, creating FROM schedule_claims"
SCHEDULE_CLAIM = "SELECT slot FROM schedule_claims WHERE key = %(key)s"
CLAIM_SLOT = """
INSERT INTO schedule_claims (key, slot, run_id, creating) VALUES (%(key)s, %(slot)s, %(run)s, true)
ON CONFLICT (key) DO UPDATE SET slot = excluded.slot, run_id = excluded.run_id, creating = true
WHERE schedule_claims.slot < excluded.slot"""
SLOT_CREATED = "UPDATE schedule_claims SET creating = false WHERE key = %(key)s AND creating"

RELEASE_LOCK = "SELECT pg_advisory_xact_lock(%(key)s)"
RELEASE_STATE = "SELECT value::text FROM release_state WHERE name = %(name)s"
SAVE_RELEASE_STATE = """
INSERT INTO release_state (name, value) VALUES (%(name)s, %(value)s::json)
ON CONFLICT (name) DO UPDATE SET value = excluded.value"""
APPEND_RELEASE_HISTORY = "INSERT INTO release_history (flow, entry) VALUES (%(flow)s, %(entry)s::json)"
RELEASE_HISTORY = """
SELECT entry::text FROM release_history WHERE %(flow)s::text IS NULL OR flow = %(flow)s ORDER BY id"""

SETTING = "SELECT value FROM settings WHERE name = %(name)s"
KEEP_SETTING = "INSERT INTO settings (name, value) VALUES (%(name)s, %(value)s) ON CONFLICT (name) DO NOTHING"

# ---- the inbox: accepted callbacks not yet recorded; the first per step wins ------------------------

INBOX_ACCEPT = """
INSERT INTO inbox (run_id, step, entry)
SELECT batch.run, batch.step, batch.entry::json
FROM unnest(%(runs)s::text[], %(steps)s::text[], %(entries)s::text[]) AS batch (run, step, entry)
ON CONFLICT (run_id, step) DO NOTHING
RETURNING run_id, step"""
INBOX_ENTRY = "SELECT entry::text, true FROM inbox WHERE run_id = %(run)s AND step = %(step)s"
INBOX_CLOSE = """
INSERT INTO inbox (run_id, step, entry) VALUES (%(run)s, %(step)s, NULL)
ON CONFLICT (run_id, step) DO NOTHING"""
INBOX_CONSUMED = "DELETE FROM inbox WHERE run_id = %(run)s AND step = %(step)s"
INBOX_COUNT = "SELECT count(*) FROM inbox WHERE entry IS NOT NULL"
