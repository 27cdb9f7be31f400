-- The same schema, with the same meaning, as sqlite/001_initial.sql.
-- Times are Unix milliseconds in BIGINT columns.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL,
    username      TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    is_active     BOOLEAN NOT NULL DEFAULT TRUE,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE UNIQUE INDEX users_username_key ON users (lower(username));

CREATE TABLE sessions (
    id                  TEXT PRIMARY KEY,
    user_id             TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    refresh_digest      TEXT NOT NULL UNIQUE,
    created_at          BIGINT NOT NULL,
    last_used_at        BIGINT NOT NULL,
    expires_at          BIGINT NOT NULL,
    absolute_expires_at BIGINT NOT NULL,
    ip                  TEXT,
    user_agent          TEXT,
    revoked_at          BIGINT
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expiry ON sessions (expires_at);

CREATE TABLE spent_refresh_tokens (
    digest     TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    spent_at   BIGINT NOT NULL
);
CREATE INDEX spent_refresh_tokens_session ON spent_refresh_tokens (session_id);

-- Writers take a lock on this table before inserting, so entries commit in
-- sequence order and a poller reading "seq > cursor" never skips one.
CREATE TABLE invalidations (
    seq        BIGSERIAL PRIMARY KEY,
    at         BIGINT NOT NULL,
    user_id    TEXT NOT NULL,
    session_id TEXT
);
CREATE INDEX invalidations_at ON invalidations (at);
