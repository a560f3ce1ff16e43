-- Saved plans: a plan kept under a name to run again (one name per owner; NULL owner = admin).
CREATE TABLE saved_plans (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    plan       TEXT NOT NULL,
    owner      TEXT,
    created_at TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
CREATE UNIQUE INDEX saved_plans_owner_name ON saved_plans(COALESCE(owner, ''), name);
