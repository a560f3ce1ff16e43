-- A run's answer (its final output, up to output_cap_bytes: a megabyte by default) moves out of
-- the runs row into its own table. In the row it spilled into overflow pages, and every column
-- stored after it (created_at, owner, workspace_id...) was reached only by walking those pages:
-- a page of fifty runs read every answer on every dashboard refresh. A run row keeps what a list
-- shows: the answer's first 500 characters and its length.
CREATE TABLE run_answers (
    run_id  TEXT PRIMARY KEY,
    output  TEXT NOT NULL
);
INSERT INTO run_answers (run_id, output) SELECT id, output FROM runs WHERE output IS NOT NULL;
ALTER TABLE runs ADD COLUMN output_preview TEXT;
ALTER TABLE runs ADD COLUMN output_chars INTEGER;
-- am_text_prefix/am_text_length (store/database.py), not substr/length: those stop at a NUL.
UPDATE runs SET output_preview = am_text_prefix(output, 500), output_chars = am_text_length(output)
    WHERE output IS NOT NULL;
ALTER TABLE runs DROP COLUMN output;
