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

-- What retention deleted, summed, so the /metrics run totals (counted from the runs table at
-- start) never go backwards (docs/metrics.md). bucket_ms: the upper bound of the duration bucket
-- the runs fell in, in milliseconds; -1 for runs without a duration, 9223372036854775807 for +Inf.
CREATE TABLE pruned_runs (
    backend     TEXT NOT NULL,
    status      TEXT NOT NULL,
    bucket_ms   INTEGER NOT NULL,
    runs        INTEGER NOT NULL,
    duration_ms INTEGER NOT NULL,
    PRIMARY KEY (backend, status, bucket_ms)
);
