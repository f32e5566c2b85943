-- Clusters and workers, each with desired (target) and observed state. Times are
-- milliseconds since the epoch; token and tls_key hold encrypted text (see crypto.py).
CREATE TABLE clusters (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    backend TEXT NOT NULL,
    options TEXT NOT NULL,
    config TEXT NOT NULL,
    token TEXT NOT NULL,
    tls_cert TEXT NOT NULL,
    tls_key TEXT NOT NULL,
    target SMALLINT NOT NULL,
    observed SMALLINT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    scheduler_address TEXT NOT NULL DEFAULT '',
    dashboard_address TEXT NOT NULL DEFAULT '',
    api_address TEXT NOT NULL DEFAULT '',
    count INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT '',
    start_time BIGINT NOT NULL,
    stop_time BIGINT,
    last_heartbeat BIGINT,
    revision BIGINT NOT NULL
);
CREATE INDEX clusters_owner ON clusters (owner, start_time);
CREATE INDEX clusters_unfinished ON clusters (start_time) WHERE stop_time IS NULL;

CREATE TABLE workers (
    cluster TEXT NOT NULL REFERENCES clusters (name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    target SMALLINT NOT NULL,
    observed SMALLINT NOT NULL,
    close_expected BOOLEAN NOT NULL DEFAULT FALSE,
    state TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    start_time BIGINT NOT NULL,
    stop_time BIGINT,
    PRIMARY KEY (cluster, name)
);
CREATE INDEX workers_unfinished ON workers (cluster) WHERE stop_time IS NULL;
