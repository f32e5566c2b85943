-- Accounting for quotas: what each cluster reserved over time (core-seconds and
-- byte-seconds so far, up to accrued_until, at the rate accrued_cores/accrued_memory
-- in effect since), and what purged clusters had accrued, per user.
-- Mirrors migrations/sqlite/0004_quotas.sql.
ALTER TABLE clusters ADD COLUMN core_seconds DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE clusters ADD COLUMN memory_seconds DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE clusters ADD COLUMN accrued_until BIGINT;
ALTER TABLE clusters ADD COLUMN accrued_cores DOUBLE PRECISION NOT NULL DEFAULT 0;
ALTER TABLE clusters ADD COLUMN accrued_memory DOUBLE PRECISION NOT NULL DEFAULT 0;
CREATE INDEX clusters_owner_unfinished ON clusters (owner) WHERE stop_time IS NULL;
CREATE TABLE user_usage (
    owner TEXT PRIMARY KEY,
    core_seconds DOUBLE PRECISION NOT NULL DEFAULT 0,
    memory_seconds DOUBLE PRECISION NOT NULL DEFAULT 0
);
