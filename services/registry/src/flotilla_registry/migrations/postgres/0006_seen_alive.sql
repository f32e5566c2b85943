-- When (ms) the cluster's launcher last saw its scheduler process alive while the
-- scheduler's heartbeats were late (a busy event loop, a task holding it): the heartbeat
-- deadline counts from there, on whichever replica checks it.
-- Mirrors migrations/sqlite/0006_seen_alive.sql.
ALTER TABLE clusters ADD COLUMN seen_alive BIGINT;
