-- The embedded schema registry's tables. Portable between SQLite and PostgreSQL.
CREATE TABLE registry_schemas (
    id BIGINT PRIMARY KEY,
    -- SHA-256 of the minified schema JSON: identical schemas share one id.
    fingerprint TEXT NOT NULL UNIQUE,
    schema_text TEXT NOT NULL
);

CREATE TABLE registry_versions (
    subject TEXT NOT NULL,
    version BIGINT NOT NULL,
    schema_id BIGINT NOT NULL REFERENCES registry_schemas (id),
    PRIMARY KEY (subject, version)
);
