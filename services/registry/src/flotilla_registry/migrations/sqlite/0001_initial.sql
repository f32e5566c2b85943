-- Clusters and workers, each with desired (target) and observed state.
CREATE TABLE clusters (
    name TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    backend TEXT NOT NULL,
    options TEXT NOT NULL,
    config TEXT NOT NULL,
    token TEXT NOT NULL,
    tls_cert TEXT NOT NULL,
    tls_key TEXT NOT NULL,
    target INTEGER NOT NULL,
    observed INTEGER NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    scheduler_address TEXT NOT NULL DEFAULT '',
    dashboard_address TEXT NOT NULL DEFAULT '',
    api_address TEXT NOT NULL DEFAULT '',
    count INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT '',
    start_time INTEGER NOT NULL,
    stop_time INTEGER,
    last_heartbeat INTEGER,
    revision INTEGER NOT NULL
);
CREATE INDEX clusters_owner ON clusters (owner, start_time);
CREATE INDEX clusters_unfinished ON clusters (stop_time) WHERE stop_time IS NULL;

CREATE TABLE workers (
    cluster TEXT NOT NULL REFERENCES clusters (name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    target INTEGER NOT NULL,
    observed INTEGER NOT NULL,
    close_expected INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL DEFAULT '',
    reason TEXT NOT NULL DEFAULT '',
    start_time INTEGER NOT NULL,
    stop_time INTEGER,
    PRIMARY KEY (cluster, name)
);
