//! The storage interface behind the `UserRepo` actor, and the `[database]` settings.
//!
//! Each method is one statement or one transaction. Implementations map
//! their driver's errors onto [`Error`]: unique violations on email or
//! username become [`Error::Conflict`] (a domain outcome), busy or
//! unreachable databases become [`Error::Unavailable`] (what the breaker
//! counts), and nothing of the driver's text ever leaves as more than a log line.

use std::path::PathBuf;

use async_trait::async_trait;
use serde::Deserialize;

use crate::error::Result;
use crate::model::{
    ActiveSession, Credentials, Invalidation, NewSession, NewUser, Principal, ProfileChange,
    Revoke, Rotation, Session, User,
};

/// The columns of a [`User`], in the order both stores read them.
pub(super) const USER_COLUMNS: &str = "id, email, username, is_active, created_at, updated_at";

/// How long revoked sessions (and the invalidation log) are kept before purging.
pub(super) const KEEP_REVOKED_MS: i64 = 3_600_000;

/// The `[database]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseSettings {
    /// SQLite file; its parent directories are created.
    pub path: PathBuf,
    /// `postgres://…` selects PostgreSQL instead of the SQLite file.
    pub url: String,
    /// PostgreSQL statement timeout.
    pub statement_timeout_ms: u64,
    /// Read connections.
    pub pool_size: u32,
    /// How long SQLite waits for a lock before giving up.
    pub busy_timeout_ms: u64,
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        Self {
            path: PathBuf::from("gatehouse.db"),
            url: String::new(),
            statement_timeout_ms: 2_000,
            pool_size: 4,
            busy_timeout_ms: 2_000,
        }
    }
}

/// Where users and sessions live.
#[async_trait]
pub trait UserStore: Send + Sync + 'static {
    /// Inserts a user; `Conflict` when the email or username is taken (ignoring case).
    async fn create_user(&self, user: NewUser) -> Result<User>;

    /// The user whose username or email is `login` (ignoring case), with their hash.
    async fn credentials(&self, login: String) -> Result<Option<Credentials>>;

    /// Creates a session for a login whose password was checked against
    /// `verified_hash`; `None`, and nothing written, when the user's hash is no
    /// longer that one or the user was deactivated meanwhile (a password
    /// change won the race). When `rehash` is given, it replaces the hash in
    /// the same transaction (parameters were upgraded).
    async fn create_session(
        &self,
        session: NewSession,
        verified_hash: String,
        rehash: Option<String>,
    ) -> Result<Option<Session>>;

    /// The session if it is neither revoked nor expired and its user is active.
    async fn active_session(&self, session_id: String, now: i64) -> Result<Option<ActiveSession>>;

    /// A user by id, active or not.
    async fn user(&self, user_id: String) -> Result<Option<User>>;

    /// Invalidations recorded after `cursor`, and the cursor to ask with next.
    /// A negative `cursor` means "from now on": nothing, and the current head.
    async fn invalidations_since(&self, cursor: i64) -> Result<(Vec<Invalidation>, i64)>;

    /// A user by id with their hash (for checking the current password).
    async fn credentials_by_id(&self, user_id: String) -> Result<Option<Credentials>>;

    /// The (session, user) a current refresh token belongs to, if any.
    async fn refresh_owner(&self, digest: String) -> Result<Option<(String, String)>>;

    /// Exchanges a refresh token (by digest) for a new one, atomically:
    /// rotates a current token, revokes the session of a spent one.
    /// `expires_at` is the session's new expiry, capped at its absolute end.
    async fn rotate_refresh(
        &self,
        old_digest: String,
        new_digest: String,
        now: i64,
        expires_at: i64,
    ) -> Result<Rotation>;

    /// Revokes `by`'s user's sessions in `scope`; what caches must drop, empty
    /// when nothing matched. Like every write made for a [`Principal`], it
    /// fails with `SessionRevoked`, writing nothing, unless `by`'s session is
    /// active inside the same transaction.
    async fn revoke(&self, by: Principal, scope: Revoke, now: i64) -> Result<Vec<Invalidation>>;

    /// The user's active sessions, newest first.
    async fn sessions(&self, user_id: String, now: i64) -> Result<Vec<Session>>;

    /// Changes email and/or username; `Conflict` when taken.
    async fn update_profile(
        &self,
        by: Principal,
        change: ProfileChange,
        now: i64,
    ) -> Result<(User, Vec<Invalidation>)>;

    /// Replaces the password hash, if it is still `verified_hash` (else
    /// `WrongCurrentPassword`: another change won), and revokes every session
    /// but `by`'s.
    async fn set_password(
        &self,
        by: Principal,
        verified_hash: String,
        new_hash: String,
        now: i64,
    ) -> Result<Vec<Invalidation>>;

    /// Soft-deletes the user and revokes all their sessions.
    async fn deactivate(&self, by: Principal, now: i64) -> Result<Vec<Invalidation>>;

    /// Records that a session was used (at most one write a minute per session).
    async fn touch_session(&self, session_id: String, now: i64) -> Result<()>;

    /// Deletes expired sessions, long-revoked ones and old invalidations.
    async fn purge(&self, now: i64) -> Result<u64>;

    /// Flushes everything to durable storage; called once at shutdown.
    async fn close(&self) -> Result<()>;
}
