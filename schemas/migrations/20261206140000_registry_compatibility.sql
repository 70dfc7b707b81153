-- Compatibility levels (Confluent's): one row per subject that has its own, and the global one
-- under the subject ''. A missing global row means BACKWARD, Confluent's default.
CREATE TABLE registry_config (
    subject TEXT PRIMARY KEY,
    compatibility TEXT NOT NULL
);

-- Soft deletes (Confluent's DELETE without ?permanent=true): the version stays, hidden from
-- listings, lookups and compatibility checks, until a permanent delete removes it.
ALTER TABLE registry_versions ADD COLUMN deleted BIGINT NOT NULL DEFAULT 0;
