-- Orchestrations (a plan being run), the state of each of their steps, and their event log.
CREATE TABLE orchestrations (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL,
    status       TEXT NOT NULL,
    plan         TEXT NOT NULL,
    max_parallel INTEGER NOT NULL,
    workspace    TEXT NOT NULL,
    error        TEXT,
    owner        TEXT,
    created_at   TEXT NOT NULL,
    started_at   TEXT,
    finished_at  TEXT
);
CREATE INDEX orchestrations_created ON orchestrations(created_at DESC);
CREATE INDEX orchestrations_status ON orchestrations(status);

CREATE TABLE orchestration_steps (
    orchestration_id TEXT NOT NULL REFERENCES orchestrations(id) ON DELETE CASCADE,
    step_id      TEXT NOT NULL,
    position     INTEGER NOT NULL,
    status       TEXT NOT NULL,
    run_id       TEXT,
    backend      TEXT,
    attempts     INTEGER NOT NULL DEFAULT 0,
    queued_at    TEXT,
    started_at   TEXT,
    finished_at  TEXT,
    output       TEXT,
    error        TEXT,
    PRIMARY KEY (orchestration_id, step_id)
);

CREATE TABLE orchestration_events (
    orchestration_id TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    type       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (orchestration_id, seq)
) WITHOUT ROWID;
