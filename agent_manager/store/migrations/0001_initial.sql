-- Agents, runs with their event log, conversations with messages, and full-text search.
CREATE TABLE agents (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL UNIQUE,
    kind        TEXT NOT NULL,
    command     TEXT NOT NULL,
    args        TEXT NOT NULL DEFAULT '[]',
    env         TEXT NOT NULL DEFAULT '{}',
    working_dir TEXT,
    model       TEXT,
    backend     TEXT,
    trusted     INTEGER NOT NULL DEFAULT 1,
    timeout_s   REAL NOT NULL DEFAULT 600,
    network     INTEGER NOT NULL DEFAULT 0,
    owner       TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE conversations (
    id          TEXT PRIMARY KEY,
    title       TEXT NOT NULL DEFAULT '',
    agent_id    TEXT REFERENCES agents(id) ON DELETE SET NULL,
    sessions    TEXT NOT NULL DEFAULT '{}',
    owner       TEXT,
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL
);

CREATE TABLE runs (
    id              TEXT PRIMARY KEY,
    agent_id        TEXT NOT NULL,
    agent_name      TEXT NOT NULL,
    prompt          TEXT NOT NULL,
    status          TEXT NOT NULL,
    requested_backend TEXT,
    backend         TEXT,
    route_reason    TEXT,
    exit_code       INTEGER,
    output          TEXT,
    error           TEXT,
    usage           TEXT,
    conversation_id TEXT REFERENCES conversations(id) ON DELETE SET NULL,
    session_id      TEXT,
    sandbox_id      TEXT,
    owner           TEXT,
    created_at      TEXT NOT NULL,
    started_at      TEXT,
    finished_at     TEXT
);
CREATE INDEX runs_created ON runs(created_at DESC);
CREATE INDEX runs_agent ON runs(agent_id, created_at DESC);
CREATE INDEX runs_status ON runs(status);

CREATE TABLE run_events (
    run_id     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    type       TEXT NOT NULL,
    data       TEXT NOT NULL,
    created_at TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
) WITHOUT ROWID;

CREATE TABLE messages (
    id              INTEGER PRIMARY KEY AUTOINCREMENT,
    conversation_id TEXT NOT NULL REFERENCES conversations(id) ON DELETE CASCADE,
    role            TEXT NOT NULL,
    content         TEXT NOT NULL,
    agent_id        TEXT,
    run_id          TEXT,
    created_at      TEXT NOT NULL
);
CREATE INDEX messages_conversation ON messages(conversation_id, id);

CREATE VIRTUAL TABLE runs_fts USING fts5(run_id UNINDEXED, prompt, output, tokenize = 'unicode61');
CREATE VIRTUAL TABLE messages_fts USING fts5(conversation_id UNINDEXED, content, tokenize = 'unicode61');
