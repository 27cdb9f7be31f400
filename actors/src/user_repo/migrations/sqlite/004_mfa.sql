-- The second factor (TOTP, RFC 6238).
--
-- A user's TOTP secret is sealed with the key-encryption secret (purpose
-- "totp", the user id as associated data); it is pending until a code
-- confirms it (mfa_enabled). totp_last_step is the last time step a code was
-- accepted for, so that each code works once.
ALTER TABLE users ADD COLUMN totp_secret BLOB;
ALTER TABLE users ADD COLUMN mfa_enabled INTEGER NOT NULL DEFAULT 0 CHECK (mfa_enabled IN (0, 1));
ALTER TABLE users ADD COLUMN totp_last_step INTEGER;

-- Recovery codes, as SHA-256 digests; a code's row is deleted when it is used.
CREATE TABLE recovery_codes (
    user_id TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    digest  TEXT NOT NULL,
    PRIMARY KEY (user_id, digest)
) STRICT;

-- The second step of a login: the right password of an account with MFA
-- opens one (the mfa_token, as a digest); a right code completes it once.
-- password_digest is the SHA-256 of the password hash the password was
-- checked against, so that a password change meanwhile voids it.
CREATE TABLE mfa_challenges (
    digest          TEXT PRIMARY KEY,
    user_id         TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    password_digest TEXT NOT NULL,
    auth_time       INTEGER NOT NULL,
    expires_at      INTEGER NOT NULL,
    failures        INTEGER NOT NULL DEFAULT 0,
    used_at         INTEGER
) STRICT;
CREATE INDEX mfa_challenges_expiry ON mfa_challenges (expires_at);
