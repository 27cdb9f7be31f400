-- Email verification and recovery, over a durable outbox.

-- Whether the address was confirmed through a link, and an address waiting
-- for its confirmation (an email change with verification on).
ALTER TABLE users ADD COLUMN email_verified INTEGER NOT NULL DEFAULT 0 CHECK (email_verified IN (0, 1));
ALTER TABLE users ADD COLUMN pending_email TEXT;

-- Single-use link tokens (verify an address, reset a password). Only the
-- SHA-256 of a token is stored. `address` is the address a verify link
-- confirms. A newer link of one purpose voids the older ones of the user.
CREATE TABLE email_links (
    digest     TEXT PRIMARY KEY,
    user_id    TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    purpose    TEXT NOT NULL CHECK (purpose IN ('verify', 'reset')),
    address    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    used_at    INTEGER
) STRICT;
CREATE INDEX email_links_user ON email_links (user_id, purpose);
CREATE INDEX email_links_expiry ON email_links (expires_at);

-- Messages to send, written in the same transaction as what they announce.
-- The body (subject, text, HTML; it may hold a link) is sealed with the
-- key-encryption secret, the id as associated data, and deleted once sent.
-- A sender leases a row (lease_owner, lease_until) before it tries, so that
-- several instances send each message once.
CREATE TABLE outbox (
    id              TEXT PRIMARY KEY,
    kind            TEXT NOT NULL,
    recipient       TEXT NOT NULL,
    -- Counts towards the recipient's hourly cap (links do; notices do not).
    capped          INTEGER NOT NULL CHECK (capped IN (0, 1)),
    body            BLOB,
    state           TEXT NOT NULL CHECK (state IN ('pending', 'sent', 'dead')),
    attempts        INTEGER NOT NULL DEFAULT 0,
    created_at      INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    lease_owner     TEXT,
    lease_until     INTEGER,
    done_at         INTEGER,
    last_error      TEXT
) STRICT;
CREATE INDEX outbox_due ON outbox (state, next_attempt_at);
CREATE INDEX outbox_recipient ON outbox (lower(recipient), created_at);
