-- Projects (git repositories agents work on) and workspaces (a branch + worktree per run,
-- conversation or orchestration step). Runs, conversations and orchestrations point at theirs.
CREATE TABLE projects (
    id           TEXT PRIMARY KEY,
    name         TEXT NOT NULL UNIQUE,
    path         TEXT,
    git_url      TEXT,
    repo         TEXT NOT NULL,
    default_base TEXT NOT NULL,
    created_by   TEXT,
    created_at   TEXT NOT NULL
);

CREATE TABLE workspaces (
    id            TEXT PRIMARY KEY,
    project_id    TEXT NOT NULL REFERENCES projects(id) ON DELETE CASCADE,
    kind          TEXT NOT NULL,
    owner_ref     TEXT NOT NULL,
    owner         TEXT,
    branch        TEXT NOT NULL,
    base          TEXT NOT NULL,
    base_commit   TEXT NOT NULL,
    head_commit   TEXT NOT NULL,
    path          TEXT NOT NULL,
    state         TEXT NOT NULL DEFAULT 'open',
    files_changed INTEGER NOT NULL DEFAULT 0,
    insertions    INTEGER NOT NULL DEFAULT 0,
    deletions     INTEGER NOT NULL DEFAULT 0,
    merged_commit TEXT,
    note          TEXT,
    created_at    TEXT NOT NULL,
    updated_at    TEXT NOT NULL
);
CREATE INDEX workspaces_project ON workspaces(project_id, state);
CREATE UNIQUE INDEX workspaces_owner ON workspaces(kind, owner_ref);

ALTER TABLE runs ADD COLUMN workspace_id TEXT;
ALTER TABLE conversations ADD COLUMN workspace_id TEXT;
ALTER TABLE orchestrations ADD COLUMN workspace_id TEXT;
