-- Each run remembers the rowid of its full-text entry (runs_fts), so finishing a run, adding its
-- stderr or pruning it finds that entry by rowid. It used to be found by runs_fts.run_id, an
-- UNINDEXED column: every run's finish scanned the whole search index (its text included), on
-- the event loop, a cost that grew with the history (about 75 ms per run at 10,000 runs).
ALTER TABLE runs ADD COLUMN search_rowid INTEGER;
CREATE TEMP TABLE search_rowids AS SELECT rowid AS search_rowid, run_id FROM runs_fts;
CREATE INDEX temp.search_rowids_run ON search_rowids(run_id);
UPDATE runs SET search_rowid = (SELECT search_rowid FROM temp.search_rowids WHERE run_id = runs.id);
DROP TABLE temp.search_rowids;
