-- Retention (run_retention_days, `agent-manager runs prune`) finds old runs by finish time.
CREATE INDEX IF NOT EXISTS runs_finished ON runs(finished_at);
