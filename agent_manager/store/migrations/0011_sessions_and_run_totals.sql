-- Browser sessions kept on the server (web/auth.py), so logging out or rotating a token ends
-- them. The cookie holds a random id; only its SHA-256 is stored here, so a copy of the database
-- holds no usable cookie. user_id NULL is the admin of the admin token. ``credential`` is a hash
-- of the token that logged in: a session whose token has since changed is dead.
CREATE TABLE sessions (
    id_hash     TEXT PRIMARY KEY,
    user_id     TEXT,
    credential  TEXT NOT NULL,
    created_at  TEXT NOT NULL,
    last_seen   TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);
CREATE INDEX sessions_user ON sessions(user_id);
CREATE INDEX sessions_expiry ON sessions(expires_at);

-- Every run ever finished here, summed by backend, status and duration bucket: the /metrics
-- counters (docs/metrics.md) start from this at each start, and neither a restart nor retention
-- (which deletes runs, not these sums) makes them go back. Each finish adds itself in the
-- transaction that records it (store/run_totals.py). bucket_ms: the upper bound of the
-- duration bucket in milliseconds (the bounds are run_totals.BUCKETS_MS); -1 for runs without a
-- duration, 9223372036854775807 for +Inf. duration_ms: the sum of those runs' durations.
CREATE TABLE run_totals (
    backend     TEXT NOT NULL,
    status      TEXT NOT NULL,
    bucket_ms   INTEGER NOT NULL,
    runs        INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (backend, status, bucket_ms)
);
-- The runs finished before this migration.
INSERT INTO run_totals (backend, status, bucket_ms, runs, duration_ms)
SELECT backend, status,
       CASE WHEN d IS NULL THEN -1 WHEN d <= 100 THEN 100 WHEN d <= 500 THEN 500 WHEN d <= 1000 THEN 1000
            WHEN d <= 5000 THEN 5000 WHEN d <= 10000 THEN 10000 WHEN d <= 30000 THEN 30000
            WHEN d <= 60000 THEN 60000 WHEN d <= 300000 THEN 300000 WHEN d <= 900000 THEN 900000
            WHEN d <= 3600000 THEN 3600000 ELSE 9223372036854775807 END AS bucket_ms,
       COUNT(*), COALESCE(SUM(d), 0)
FROM (SELECT COALESCE(backend, 'none') AS backend, status,
             MAX(0, CAST(ROUND((julianday(finished_at) - julianday(started_at)) * 86400000.0) AS INTEGER)) AS d
      FROM runs WHERE status IN ('cancelled', 'failed', 'interrupted', 'succeeded', 'timed_out'))
GROUP BY 1, 2, 3;
