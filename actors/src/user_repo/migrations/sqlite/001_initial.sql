-- Accounts. Email is stored lower-cased; usernames keep their case but are
-- unique ignoring it. Times are Unix milliseconds.
CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    email         TEXT NOT NULL,
    username      TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    is_active     INTEGER NOT NULL DEFAULT 1 CHECK (is_active IN (0, 1)),
    created_at    INTEGER NOT NULL,
    updated_at    INTEGER NOT NULL
) STRICT;
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
CREATE UNIQUE INDEX users_username_key ON users (lower(username));

-- One row per login. The refresh token itself is never stored, only its SHA-256.
CREATE TABLE sessions (
    id                  TEXT PRIMARY KEY,
    user_id             TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    refresh_digest      TEXT NOT NULL UNIQUE,
    created_at          INTEGER NOT NULL,
    last_used_at        INTEGER NOT NULL,
    expires_at          INTEGER NOT NULL,
    absolute_expires_at INTEGER NOT NULL,
    ip                  TEXT,
    user_agent          TEXT,
    revoked_at          INTEGER
) STRICT;
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expiry ON sessions (expires_at);

-- Refresh tokens already exchanged: presenting one again revokes its session.
CREATE TABLE spent_refresh_tokens (
    digest     TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions (id) ON DELETE CASCADE,
    spent_at   INTEGER NOT NULL
) STRICT;
CREATE INDEX spent_refresh_tokens_session ON spent_refresh_tokens (session_id);

-- Revocations and profile changes, in commit order, so that every process
-- sharing the database can drop what it has cached within one poll.
CREATE TABLE invalidations (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    at         INTEGER NOT NULL,
    user_id    TEXT NOT NULL,
    session_id TEXT
) STRICT;
CREATE INDEX invalidations_at ON invalidations (at);
