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
use tracing::Level;

use std::sync::Arc;

use super::Database;
use super::recovery::Recovery;
use crate::audit::{Entry, Event, Query, SECURITY_TARGET};
use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::mailer::MailKind;
use crate::model::{AdminChange, AdminKey, NewAdminKey, UserRecord, UserSelect};
use crate::rate_limiter::{RateLimits, ThrottleKey};
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
    pub limits: RateLimits,
    pub recovery: Recovery,
    pub clock: SharedClock,
}

/// A user as operators see them: the record, and the account throttle's lock.
#[derive(Debug, Clone)]
pub struct AdminUser {
    pub record: UserRecord,
    pub locked_until: Option<i64>,
}

/// A page of users, and the cursor of the next one (`None`: that was the last).
#[derive(Debug, Clone)]
pub struct UserPage {
    pub users: Vec<AdminUser>,
    pub next_cursor: Option<String>,
}

/// Users per page unless asked otherwise, and at most.
pub const PAGE_DEFAULT: u32 = 50;
pub const PAGE_MAX: u32 = 200;

/// Longest search prefix (an email address is at most 254 characters).
const MAX_QUERY_CHARS: usize = 254;

/// The range `[prefix, to)` holding exactly the strings that start with
/// `prefix`, in code-point order (the stores' order): `to` is `prefix` with
/// its last character replaced by the next one. `None` for an empty prefix.
fn prefix_range(prefix: &str) -> Option<(String, String)> {
    let mut to = prefix.to_owned();
    while let Some(last) = to.pop() {
        // The next scalar value, stepping over the surrogates.
        let next = (u32::from(last) + 1..=u32::from(char::MAX)).find_map(char::from_u32);
        if let Some(next) = next {
            to.push(next);
            return Some((prefix.to_owned(), to));
        }
    }
    None
}

/// A search as asked, checked: the prefix range of the query (trimmed,
/// lower-cased), the id to start after (the cursor, base64url) and the page size.
type PageOf = (Option<(String, String)>, Option<String>, u32);

fn page_of(query: &str, limit: Option<u32>, cursor: Option<&str>) -> Result<PageOf> {
    let query = query.trim().to_lowercase();
    if query.chars().count() > MAX_QUERY_CHARS || query.chars().any(char::is_control) {
        return Err(Error::validation(
            "query",
            "must be at most 254 characters, none of them control characters",
        ));
    }
    Ok((prefix_range(&query), cursor_of(cursor)?, page_limit(limit)?))
}

/// The page size asked for, checked.
fn page_limit(limit: Option<u32>) -> Result<u32> {
    let limit = limit.unwrap_or(PAGE_DEFAULT);
    if !(1..=PAGE_MAX).contains(&limit) {
        return Err(Error::validation("limit", "must be 1 to 200"));
    }
    Ok(limit)
}

/// What a `next_cursor` (base64url) stands for.
fn cursor_of(cursor: Option<&str>) -> Result<Option<String>> {
    cursor
        .map(|c| {
            URL_SAFE_NO_PAD
                .decode(c)
                .ok()
                .and_then(|id| String::from_utf8(id).ok())
                .ok_or_else(|| Error::validation("cursor", "must be a next_cursor as given"))
        })
        .transpose()
}

/// Which stored events an operator asks for.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    pub user_id: Option<String>,
    pub event: Option<String>,
    /// Unix ms.
    pub since: Option<i64>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// A page of stored events, newest first, and the cursor of the next one.
#[derive(Debug, Clone)]
pub struct AuditPage {
    pub events: Vec<Entry>,
    pub next_cursor: Option<String>,
}

/// Longest `user_id` or `event` filter taken (ids are 36, names shorter).
const MAX_FILTER_CHARS: usize = 128;

/// Roles as an operator sets them: 1–64 characters of `[a-z0-9:_-]` each,
/// at most 32, kept in order without repeats.
pub fn checked_roles(roles: Vec<String>) -> Result<Vec<String>> {
    let valid = |r: &String| {
        (1..=64).contains(&r.len())
            && r.bytes()
                .all(|b| matches!(b, b'a'..=b'z' | b'0'..=b'9' | b':' | b'_' | b'-'))
    };
    if roles.len() > 32 || !roles.iter().all(valid) {
        return Err(Error::validation(
            "roles",
            "at most 32 roles, each 1 to 64 characters of a-z, 0-9, ':', '_' and '-'",
        ));
    }
    let mut kept: Vec<String> = Vec::with_capacity(roles.len());
    for role in roles {
        if !kept.contains(&role) {
            kept.push(role);
        }
    }
    Ok(kept)
}

/// An operator's action on a user, as the security event `admin.<action>`.
fn admin_event(action: &str, user_id: &str, by: &AdminKey, now: i64) -> Event {
    Event::new(action, now)
        .user(user_id)
        .detail("admin_key", by.id.as_str())
        .detail("admin_name", by.name.as_str())
}

const ADMIN_ACTION: &str = "an operator changed a user";

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

    /// The users `select` names, as stored.
    async fn records(&self, select: UserSelect) -> Result<Vec<UserRecord>> {
        let now = self.clock.now_ms();
        self.db.call(self.db.repo.users(select, now)).await
    }

    /// One user as stored; `NotFound` when there is none.
    async fn record(&self, user_id: &str) -> Result<UserRecord> {
        let mut found = self.records(UserSelect::One(user_id.to_owned())).await?;
        found.pop().ok_or(Error::NotFound)
    }

    /// The users `select` names, with their lock state.
    async fn view(&self, select: UserSelect) -> Result<Vec<AdminUser>> {
        let records = self.records(select).await?;
        let now = self.clock.now_ms();
        let keys = records
            .iter()
            .map(|r| ThrottleKey::account(&r.user.id))
            .collect();
        // Without Redis, this instance's view of the locks is the best there is.
        let locks = match self.limits.locked_until(keys, now).await? {
            Ok(locks) => locks,
            Err(unshared) => unshared.local,
        };
        Ok(records
            .into_iter()
            .zip(locks)
            .map(|(record, locked_until)| AdminUser {
                record,
                locked_until,
            })
            .collect())
    }

    /// A page of the users whose email or username starts with `query`
    /// (every user when it is empty), by id, after `cursor`: `limit` users
    /// (1–200, 50 when not given).
    pub async fn users(
        &self,
        query: &str,
        limit: Option<u32>,
        cursor: Option<&str>,
    ) -> Result<UserPage> {
        let (prefix, after, limit) = page_of(query, limit, cursor)?;
        // One more than the page says whether another follows.
        let mut users = self
            .view(UserSelect::Page {
                prefix,
                after,
                limit: limit.saturating_add(1),
            })
            .await?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let more = users.len() > limit;
        users.truncate(limit);
        let next_cursor = users
            .last()
            .filter(|_| more)
            .map(|last| URL_SAFE_NO_PAD.encode(&last.record.user.id));
        Ok(UserPage { users, next_cursor })
    }

    /// Stored security events matching `filter`, newest first, a page at a
    /// time (1–200, 50 when not given); the cursor stays valid however many
    /// events are stored meanwhile.
    pub async fn audit(&self, filter: AuditFilter) -> Result<AuditPage> {
        for (field, value) in [("user_id", &filter.user_id), ("event", &filter.event)] {
            if value.as_ref().is_some_and(|v| {
                v.chars().count() > MAX_FILTER_CHARS || v.chars().any(char::is_control)
            }) {
                return Err(Error::validation(
                    field,
                    "must be at most 128 characters, none of them control characters",
                ));
            }
        }
        let limit = page_limit(filter.limit)?;
        let before = cursor_of(filter.cursor.as_deref())?
            .map(|id| id.parse::<i64>())
            .transpose()
            .map_err(|_| Error::validation("cursor", "must be a next_cursor as given"))?;
        let query = Query {
            user_id: filter.user_id,
            event: filter.event,
            since: filter.since,
            before,
            limit: limit.saturating_add(1),
        };
        let mut events = self.db.call(self.db.repo.audit(query)).await?;
        let limit = usize::try_from(limit).unwrap_or(usize::MAX);
        let more = events.len() > limit;
        events.truncate(limit);
        let next_cursor = events
            .last()
            .filter(|_| more)
            .map(|last| URL_SAFE_NO_PAD.encode(last.id.to_string()));
        Ok(AuditPage {
            events,
            next_cursor,
        })
    }

    /// One user, active or not; `NotFound` when there is none.
    pub async fn user(&self, user_id: &str) -> Result<AdminUser> {
        let mut found = self.view(UserSelect::One(user_id.to_owned())).await?;
        found.pop().ok_or(Error::NotFound)
    }

    /// Deactivates, reactivates, logs out everywhere, sets the roles of or
    /// erases `user_id`; every instance drops what it cached of them within
    /// a poll, and a revoked session is refused from the next request on.
    pub async fn change_user(
        &self,
        user_id: &str,
        change: AdminChange,
        by: &AdminKey,
    ) -> Result<()> {
        let action = match &change {
            AdminChange::Deactivate => "admin.deactivate",
            AdminChange::Reactivate => "admin.reactivate",
            AdminChange::Logout => "admin.logout",
            AdminChange::SetRoles(_) => "admin.set_roles",
            AdminChange::RemoveMfa { .. } => "admin.remove_mfa",
            AdminChange::Erase => "admin.erase",
        };
        let now = self.clock.now_ms();
        let event = admin_event(action, user_id, by, now);
        self.db
            .call(
                self.db
                    .repo
                    .change_user(user_id.to_owned(), change, now, vec![event.clone()]),
            )
            .await?
            .ok_or(Error::NotFound)?;
        event.log(Level::WARN, ADMIN_ACTION);
        Ok(())
    }

    /// Records an action that changed nothing in the database.
    fn note_action(&self, action: &str, user_id: &str, by: &AdminKey) {
        let event = admin_event(action, user_id, by, self.clock.now_ms());
        event.log(Level::WARN, ADMIN_ACTION);
        self.db.repo.record(event);
    }

    /// Turns `user_id`'s second factor off (recovery codes and open login
    /// challenges go); the "second factor turned off" notice goes out.
    pub async fn remove_mfa(&self, user_id: &str, by: &AdminKey) -> Result<()> {
        let found = self.record(user_id).await?;
        let mail = &self.recovery.mail;
        let notice = mail.notice(MailKind::MfaDisabled, &found.user.username)?;
        self.change_user(user_id, AdminChange::RemoveMfa { notice }, by)
            .await?;
        mail.wake();
        Ok(())
    }

    /// Lifts the account throttle's lock on `user_id` (in Redis too, when
    /// limits are shared) and forgives its failures.
    pub async fn unlock(&self, user_id: &str, by: &AdminKey) -> Result<()> {
        self.record(user_id).await?;
        if let Err(unshared) = self.limits.unlock(ThrottleKey::account(user_id)).await? {
            return Err(unshared.error);
        }
        self.note_action("admin.unlock", user_id, by);
        Ok(())
    }

    /// Sends `user_id` a password-reset link (nothing for a deactivated account).
    pub async fn send_reset(&self, user_id: &str, by: &AdminKey) -> Result<()> {
        let found = self.record(user_id).await?;
        if found.user.is_active {
            self.recovery.send_reset(&found.user).await?;
        }
        self.note_action("admin.password_reset", user_id, by);
        Ok(())
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
        log_changes(&changes, "admin API"); // stored by the audit layer
        let event = match &op {
            KeyOp::Revoke { .. } => "admin.keys_revoke",
            KeyOp::Rotate { .. } | KeyOp::Upkeep => "admin.keys_rotate",
        };
        tracing::warn!(target: SECURITY_TARGET, event, admin_key = %by.id, admin_name = %by.name,
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

    #[test]
    fn a_prefix_range_holds_exactly_the_names_that_start_with_it() {
        let (from, to) = prefix_range("ab").unwrap();
        assert_eq!((from.as_str(), to.as_str()), ("ab", "ac"));
        let within = |s: &str| s >= from.as_str() && s < to.as_str();
        for name in ["ab", "ab@x.org", "ab\u{10FFFF}\u{10FFFF}", "abz"] {
            assert!(within(name), "{name}");
        }
        for name in ["a", "aa\u{10FFFF}", "ac", "b", "Ab"] {
            assert!(!within(name), "{name}");
        }
        // The next character after one just below the surrogates, and after the last one.
        assert_eq!(prefix_range("x\u{D7FF}").unwrap().1, "x\u{E000}");
        assert_eq!(prefix_range("x\u{10FFFF}").unwrap().1, "y");
        assert_eq!(prefix_range(""), None);
        assert_eq!(prefix_range("\u{10FFFF}"), None);
    }

    #[test]
    fn searches_and_roles_are_checked() {
        let (prefix, after, limit) = page_of("  AB ", None, None).unwrap();
        assert_eq!(prefix, prefix_range("ab"));
        assert_eq!((after, limit), (None, PAGE_DEFAULT));
        let cursor = URL_SAFE_NO_PAD.encode("some-id");
        let (prefix, after, limit) = page_of("", Some(200), Some(&cursor)).unwrap();
        assert_eq!(
            (prefix, after.as_deref(), limit),
            (None, Some("some-id"), 200)
        );
        assert!(page_of("", Some(0), None).is_err());
        assert!(page_of("", Some(201), None).is_err());
        assert!(page_of("", None, Some("not base64!")).is_err());
        assert!(page_of("a\u{0}", None, None).is_err());
        assert!(page_of(&"a".repeat(255), None, None).is_err());

        let roles = |r: &[&str]| checked_roles(r.iter().map(|s| s.to_string()).collect());
        assert_eq!(
            roles(&["admin", "billing:read", "admin"]).unwrap(),
            ["admin", "billing:read"]
        );
        assert_eq!(roles(&[]).unwrap(), Vec::<String>::new());
        for bad in [&["Admin"][..], &[""], &["a b"], &[&"x".repeat(65)]] {
            assert!(roles(bad).is_err(), "{bad:?}");
        }
        assert!(roles(&vec!["r"; 33]).is_err());
    }
}
