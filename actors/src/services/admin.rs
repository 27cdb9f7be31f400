//! Operators' access: admin keys (`ghk_<id>_<secret>`, only a digest
//! stored, each with scopes), the check every admin route makes, and token
//! introspection (RFC 7662) for resource servers that must know about a
//! revocation now rather than at `exp`.
//!
//! Keys are looked up in the database on every use, so a key created or
//! revoked by `gatehouse admin-keys` (or another instance) counts at once.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use subtle::ConstantTimeEq;

use std::sync::Arc;

use super::Database;
use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::model::{AdminKey, NewAdminKey};
use crate::sealing::Sealer;
use crate::token_issuer::keys::{self, SigningAlgorithm};
use crate::token_issuer::ring::{KeyInfo, KeyOp, RingPolicy, announced};
use crate::token_issuer::{AccessClaims, MAX_TOKEN_BYTES, Tokens, log_changes, token_digest};

/// What every admin key starts with.
pub const KEY_PREFIX: &str = "ghk_";

/// What an admin key may open; each admin route needs one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    UsersRead,
    UsersWrite,
    AuditRead,
    KeysWrite,
    Introspect,
}

impl Scope {
    pub const ALL: [Self; 5] = [
        Self::UsersRead,
        Self::UsersWrite,
        Self::AuditRead,
        Self::KeysWrite,
        Self::Introspect,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::UsersRead => "users:read",
            Self::UsersWrite => "users:write",
            Self::AuditRead => "audit:read",
            Self::KeysWrite => "keys:write",
            Self::Introspect => "introspect",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.name() == name)
    }
}

/// A new key for `name` with `scopes` (names, checked), and the key itself,
/// to be shown once.
pub fn new_key(name: &str, scopes: &[String], now: i64) -> Result<(NewAdminKey, String)> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_control) {
        return Err(Error::validation(
            "name",
            "must be 1 to 64 characters, none of them control characters",
        ));
    }
    let mut parsed = Vec::new();
    for scope in scopes {
        let scope = Scope::parse(scope.trim()).ok_or_else(|| {
            let known: Vec<&str> = Scope::ALL.iter().map(|s| s.name()).collect();
            Error::validation(
                "scopes",
                format!("each scope must be one of {}", known.join(", ")),
            )
        })?;
        parsed.push(scope);
    }
    parsed.sort();
    parsed.dedup();
    if parsed.is_empty() {
        return Err(Error::validation("scopes", "give at least one scope"));
    }
    let mut id = [0u8; 8];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    getrandom::fill(&mut secret).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    // The id is lowercase hex: it splits off the key unambiguously and, as a
    // command-line argument, never looks like an option.
    let id: String = id.iter().map(|b| format!("{b:02x}")).collect();
    let key = format!(
        "{KEY_PREFIX}{id}_{}",
        URL_SAFE_NO_PAD.encode(secret).replace('_', "-")
    );
    let stored = NewAdminKey {
        key: AdminKey {
            id,
            name: name.to_owned(),
            scopes: parsed.iter().map(|s| s.name().to_owned()).collect(),
            created_at: now,
        },
        digest: token_digest(&key),
    };
    Ok((stored, key))
}

/// The id part of a well-formed key.
fn key_id(key: &str) -> Option<&str> {
    let rest = key.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    (!id.is_empty() && !secret.is_empty() && key.len() <= 128).then_some(id)
}

/// What changing the signing-key ring needs, when keys are stored (EdDSA, ES256).
#[derive(Clone)]
pub struct KeyRing {
    pub alg: SigningAlgorithm,
    pub sealer: Arc<Sealer>,
    pub policy: RingPolicy,
}

#[derive(Clone)]
pub struct Admin {
    pub db: Database,
    pub tokens: Tokens,
    /// `None` with HS256, which keeps no keys.
    pub ring: Option<KeyRing>,
    pub clock: SharedClock,
}

impl Admin {
    /// The key behind `key` if it is live; `InvalidToken` for anything else
    /// (malformed, unknown, revoked, a user's token), `MissingScope` when it
    /// lacks `scope`. The digest is compared in constant time.
    pub async fn authorize(&self, key: &str, scope: Scope) -> Result<AdminKey> {
        let id = key_id(key).ok_or(Error::InvalidToken)?;
        let found = self.db.call(self.db.repo.admin_key(id.to_owned())).await?;
        let (stored, digest) = found.ok_or(Error::InvalidToken)?;
        if !bool::from(token_digest(key).as_bytes().ct_eq(digest.as_bytes())) {
            return Err(Error::InvalidToken);
        }
        if !stored.scopes.iter().any(|s| s == scope.name()) {
            return Err(Error::MissingScope);
        }
        Ok(stored)
    }

    /// The signing keys of the ring (none with HS256).
    pub async fn keys(&self) -> Result<Vec<KeyInfo>> {
        if self.ring.is_none() {
            return Ok(Vec::new());
        }
        let ring = self.db.call(self.db.repo.key_ring()).await?;
        Ok(ring.into_iter().map(|k| k.info).collect())
    }

    /// Changes the ring as `gatehouse keys` does (every instance follows
    /// within a second); the key a rotation brought forward. `NotFound` for
    /// an unknown kid, or with HS256.
    pub async fn change_keys(&self, op: KeyOp, by: &AdminKey) -> Result<Option<KeyInfo>> {
        let ring = self.ring.as_ref().ok_or(Error::NotFound)?;
        let fresh = keys::generate(ring.alg, &ring.sealer)?;
        let now = self.clock.now_ms();
        let changes = self
            .db
            .call(
                self.db
                    .repo
                    .change_keys(op.clone(), ring.policy, fresh, now),
            )
            .await?;
        log_changes(&changes, "admin API");
        let event = match &op {
            KeyOp::Revoke { .. } => "admin.keys_revoke",
            KeyOp::Rotate { .. } | KeyOp::Upkeep => "admin.keys_rotate",
        };
        tracing::warn!(event, admin_key = %by.id, admin_name = %by.name,
            "signing keys changed through the admin API");
        let after = self.keys().await?;
        Ok(announced(&after, &op).cloned())
    }

    /// The claims of `token` if it is a currently valid access token of a
    /// live session (read from the database, not a cache: a revocation shows
    /// at once); `None` for anything else.
    pub async fn introspect(&self, token: &str) -> Result<Option<AccessClaims>> {
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Ok(None);
        }
        let now = self.clock.now_ms();
        let Ok(claims) = self.tokens.verify(token, now.div_euclid(1000)) else {
            return Ok(None);
        };
        let session = self
            .db
            .call(self.db.repo.active_session(&claims.sid, now))
            .await?;
        Ok(session.filter(|s| s.user_id == claims.sub).map(|_| claims))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_name_their_id_and_only_known_scopes_are_taken() {
        let scopes = vec!["introspect".to_owned(), "users:read".to_owned()];
        let (stored, key) = new_key("ops", &scopes, 7).unwrap();
        assert!(key.starts_with(KEY_PREFIX));
        assert_eq!(key_id(&key), Some(stored.key.id.as_str()));
        assert_eq!(stored.digest, token_digest(&key));
        assert_eq!(stored.key.scopes, ["users:read", "introspect"]);
        // 256 bits of secret after the id.
        assert!(key.len() > KEY_PREFIX.len() + 16 + 43);
        // Ids are safe to type as an argument, however the randomness falls.
        for _ in 0..200 {
            let (stored, _) = new_key("ops", &scopes, 7).unwrap();
            let id = &stored.key.id;
            assert_eq!(id.len(), 16);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
        assert!(new_key("ops", &["root".to_owned()], 7).is_err());
        assert!(new_key("ops", &[], 7).is_err());
        assert!(new_key(" ", &scopes, 7).is_err());
        for bad in ["", "ghk_", "ghk_abc", "ghk__x", "token", "ghk_a_"] {
            assert_eq!(key_id(bad), None, "{bad}");
        }
    }
}
