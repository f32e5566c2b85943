-- The Dask clients a cluster's scheduler reports in its heartbeats (NULL: it does not
-- report them), and since when (ms) none has been connected: no_client_timeout counts from
-- there, also across a registry restart or a replica taking over.
-- Mirrors migrations/sqlite/0005_clients.sql.
ALTER TABLE clusters ADD COLUMN clients INTEGER;
ALTER TABLE clusters ADD COLUMN clients_gone_since BIGINT;
