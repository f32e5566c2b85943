-- Logs kept with a cluster's record, and the on-demand logs request of active clusters.
-- Mirrors migrations/sqlite/0002_lifecycle.sql.
ALTER TABLE clusters ADD COLUMN logs_request BIGINT NOT NULL DEFAULT 0;
ALTER TABLE clusters ADD COLUMN logs_answered BIGINT NOT NULL DEFAULT 0;

-- The retention purge deletes finished clusters by stop time.
CREATE INDEX clusters_finished ON clusters (stop_time) WHERE stop_time IS NOT NULL;

-- The output tail of each process of a cluster (deleted with the cluster).
CREATE TABLE cluster_logs (
    cluster TEXT NOT NULL REFERENCES clusters (name) ON DELETE CASCADE,
    process TEXT NOT NULL,
    output TEXT NOT NULL,
    updated_time BIGINT NOT NULL,
    PRIMARY KEY (cluster, process)
);
