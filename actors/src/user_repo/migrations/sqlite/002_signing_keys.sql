-- Signing keys (EdDSA / ES256), shared by every instance on this database.
-- The private key is PKCS#8, sealed with the key-encryption secret
-- (XChaCha20-Poly1305, the kid as associated data); the public half is kept
-- as the JWK that is published. At most one key signs, at most one waits.
CREATE TABLE signing_keys (
    kid          TEXT PRIMARY KEY,
    alg          TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('next', 'active', 'retired')),
    created_at   INTEGER NOT NULL,
    -- A next key starts signing then; an active key started then.
    activates_at INTEGER NOT NULL,
    -- When it stopped signing (retired keys only).
    retired_at   INTEGER,
    public_jwk   TEXT NOT NULL,
    private_key  BLOB NOT NULL
) STRICT;
CREATE UNIQUE INDEX signing_keys_one_active ON signing_keys (state) WHERE state = 'active';
CREATE UNIQUE INDEX signing_keys_one_next ON signing_keys (state) WHERE state = 'next';

-- What tokens say about a session: when the password was last checked, and how.
ALTER TABLE sessions ADD COLUMN auth_time INTEGER NOT NULL DEFAULT 0;
ALTER TABLE sessions ADD COLUMN amr TEXT NOT NULL DEFAULT '["pwd"]';
UPDATE sessions SET auth_time = created_at;

-- Roles carried in tokens, a JSON array of strings.
ALTER TABLE users ADD COLUMN roles TEXT NOT NULL DEFAULT '[]';
