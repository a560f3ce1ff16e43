-- Indexes for big histories: a user's run and orchestration lists stay index scans (not a
-- scan of every row) however many runs other users have.
CREATE INDEX IF NOT EXISTS runs_owner ON runs(owner, created_at DESC);
CREATE INDEX IF NOT EXISTS orchestrations_owner ON orchestrations(owner, created_at DESC);
