-- Workers in a row that failed to start, kept with the cluster so that a registry that
-- restarts (or another replica taking over) counts on from where the last one was.
ALTER TABLE clusters ADD COLUMN worker_start_failures INTEGER NOT NULL DEFAULT 0;
