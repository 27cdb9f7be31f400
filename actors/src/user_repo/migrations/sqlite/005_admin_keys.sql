-- Operators' keys for the admin API. A key is `ghk_<id>_<secret>`; only its
-- SHA-256 is stored. `scopes` is a JSON list; a revoked key stays listed
-- with its time, for the record.
CREATE TABLE admin_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    digest     TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
) STRICT;
