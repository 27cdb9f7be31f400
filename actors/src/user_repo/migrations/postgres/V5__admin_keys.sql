-- The same schema change, with the same meaning, as sqlite/005_admin_keys.sql.
CREATE TABLE admin_keys (
    id         TEXT PRIMARY KEY,
    name       TEXT NOT NULL,
    scopes     TEXT NOT NULL,
    digest     TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
