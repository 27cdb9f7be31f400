//! Domain records as the repository stores them and the API shows them.
//!
//! Times are Unix milliseconds. Password hashes live only in
//! [`Credentials`], whose `Debug` leaves them out.

/// An account, as its owner may see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: String,
    /// Stored lower-cased.
    pub email: String,
    /// Stored as chosen; unique ignoring case.
    pub username: String,
    pub is_active: bool,
    /// Whether the address was confirmed through a link.
    pub email_verified: bool,
    /// An address waiting for its link to be followed before it replaces `email`.
    pub pending_email: Option<String>,
    /// Whether logins need a second factor (a confirmed TOTP key).
    pub mfa_enabled: bool,
    /// Carried in the `roles` claim of the tokens issued to the user.
    pub roles: Vec<String>,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A user with the PHC string of their password, for verification only.
#[derive(Clone)]
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .finish_non_exhaustive()
    }
}

/// A registration that passed validation and hashing.
#[derive(Clone)]
pub struct NewUser {
    pub id: String,
    pub email: String,
    pub username: String,
    pub password_hash: String,
    pub now: i64,
    /// The link that verifies the address, unless verification is off.
    pub verify: Option<LinkMail>,
}

/// A login session: what a refresh token is bound to and what access tokens name in `sid`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub id: String,
    pub user_id: String,
    pub created_at: i64,
    pub last_used_at: i64,
    /// Slides forward on each refresh, never past `created_at + session_max_lifetime_s`.
    pub expires_at: i64,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// A session about to be created at login.
#[derive(Debug, Clone)]
pub struct NewSession {
    pub id: String,
    pub user_id: String,
    pub refresh_digest: String,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub now: i64,
    /// When the refresh token (and, unless refreshed, the session) expires.
    pub expires_at: i64,
    /// The hard end of the session, however often it is refreshed.
    pub absolute_expires_at: i64,
    /// When the password was checked (Unix ms).
    pub auth_time: i64,
    /// How the login was authenticated (`pwd`, `mfa`).
    pub amr: Vec<String>,
}

impl NewSession {
    /// The session this opens, as its owner sees it.
    pub fn opened(&self) -> Session {
        Session {
            id: self.id.clone(),
            user_id: self.user_id.clone(),
            created_at: self.now,
            last_used_at: self.now,
            expires_at: self.expires_at,
            ip: self.ip.clone(),
            user_agent: self.user_agent.clone(),
        }
    }
}

/// Whom a current refresh token was issued to, and what the tokens issued
/// for its session say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RefreshOwner {
    pub session_id: String,
    pub user_id: String,
    /// The session's last password check (Unix ms).
    pub auth_time: i64,
    pub amr: Vec<String>,
    /// The user's roles now.
    pub roles: Vec<String>,
}

/// What an authenticated request needs to know about its session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveSession {
    pub session_id: String,
    pub user_id: String,
    pub expires_at: i64,
}

/// Who a request speaks for: a user, through one of their sessions. A
/// state-changing request writes only while that session is active, and the
/// store checks so in the same transaction as the write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub user_id: String,
    pub session_id: String,
    /// For a privileged operation: the session's last password check must be
    /// at or after this time (Unix ms), checked in the same transaction.
    pub fresh_since: Option<i64>,
}

impl Principal {
    /// The same caller, for a privileged operation at `now`: its session's
    /// password check must be no older than `window_ms`.
    pub fn privileged(&self, now: i64, window_ms: i64) -> Self {
        Self {
            fresh_since: Some(now.saturating_sub(window_ms)),
            ..self.clone()
        }
    }
}

/// An operator's key for the admin API, as listed (never the key itself).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminKey {
    pub id: String,
    pub name: String,
    /// Scope names (`users:read`, …).
    pub scopes: Vec<String>,
    pub created_at: i64,
}

/// A key about to be stored: what is listed, and the SHA-256 of the key.
#[derive(Debug, Clone)]
pub struct NewAdminKey {
    pub key: AdminKey,
    pub digest: String,
}

/// A user as operators see them: besides the user, what the store knows of
/// their logins. (The lock state lives in the rate limiter, not here.)
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    pub user: User,
    pub last_login_at: Option<i64>,
    /// Sessions neither revoked nor expired.
    pub active_sessions: u64,
}

/// Which users an operator asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserSelect {
    One(String),
    /// Up to `limit` users by id, after `after`; with `prefix`, only those
    /// whose lower-cased email or username lies in `[from, to)`, the range
    /// of the names that start with it.
    Page {
        prefix: Option<(String, String)>,
        after: Option<String>,
        limit: u32,
    },
}

/// What an operator does to a user.
#[derive(Clone)]
pub enum AdminChange {
    /// Soft-delete, revoking every session.
    Deactivate,
    Reactivate,
    /// Revoke every session.
    Logout,
    /// Roles for the tokens issued from then on.
    SetRoles(Vec<String>),
    /// Second factor off (secret, recovery codes and open challenges go),
    /// `notice` to the account's address; nothing when it is off already.
    RemoveMfa {
        notice: Outgoing,
    },
    /// Erasure: the user and everything personal (sessions, links, codes,
    /// challenges, mail to their addresses) is deleted; the invalidation
    /// log keeps only the id.
    Erase,
}

/// A second-factor code, as the write that spends it needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Proof {
    /// A TOTP code valid for this time step, later than the last accepted.
    Totp { step: i64 },
    /// A recovery code, by digest; it is used up.
    Recovery { digest: String },
}

/// A user's second factor as stored: the sealed TOTP secret (pending until
/// `enabled`) and the last step a code was accepted for.
#[derive(Clone)]
pub struct SecondFactor {
    pub user: User,
    pub secret: Option<Vec<u8>>,
    pub last_step: Option<i64>,
}

impl std::fmt::Debug for SecondFactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecondFactor")
            .field("user", &self.user)
            .field("last_step", &self.last_step)
            .finish_non_exhaustive()
    }
}

/// The second step of a login, opened by the right password.
#[derive(Debug, Clone)]
pub struct Challenge {
    /// SHA-256 of the `mfa_token`, hex.
    pub digest: String,
    pub user_id: String,
    /// SHA-256 of the password hash the password was checked against.
    pub password_digest: String,
    /// When the password was checked (Unix ms).
    pub auth_time: i64,
    pub expires_at: i64,
}

/// What a code presented for a login challenge did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChallengeOutcome {
    /// The code was right: the session exists.
    Completed(Session),
    /// A wrong or spent code; the challenge died when this was its last try.
    WrongCode { killed: bool },
    /// The challenge is unknown, expired, used or dead, or the account
    /// changed (password, deactivation, MFA off) since it was opened.
    Unusable,
}

/// A change another request (or another process) made that cached views must drop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalidation {
    pub user_id: String,
    /// One session, or every session and the profile of the user when `None`.
    pub session_id: Option<String>,
}

/// Which sessions of a user a revocation covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Revoke {
    /// This one, if it is the user's and still active.
    Session(String),
    /// Every session (logout everywhere, deactivation).
    All,
    /// Every session but this one (password change).
    AllBut(String),
}

/// What presenting a refresh token did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Rotation {
    /// The token was current: the session now answers to the new one.
    Rotated { session_id: String, user_id: String },
    /// The token was spent already: its session has been revoked.
    Reused {
        session_id: String,
        user_id: String,
        changes: Vec<Invalidation>,
    },
    /// Unknown, expired or revoked.
    Invalid,
}

/// A profile change; absent fields stay as they are.
#[derive(Debug, Clone, Default)]
pub struct ProfileChange {
    pub email: Option<String>,
    pub username: Option<String>,
    /// What to send if the email changes.
    pub mail: Option<EmailChangeMail>,
}

/// What a single-use email link is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkPurpose {
    /// Confirms an address (the account's, or one waiting to replace it).
    Verify,
    /// Sets a new password.
    Reset,
}

impl LinkPurpose {
    pub fn name(self) -> &'static str {
        match self {
            Self::Verify => "verify",
            Self::Reset => "reset",
        }
    }
}

/// A message for the outbox, its body already sealed.
#[derive(Clone)]
pub struct Outgoing {
    pub id: String,
    /// [`MailKind::name`](crate::mailer::MailKind::name).
    pub kind: &'static str,
    /// `None`: the address the message is about, as the write finds it (the
    /// address a link confirms; the account's current address for notices).
    pub to: Option<String>,
    /// Subject and parts, sealed under the key-encryption secret with `id`.
    pub body: Vec<u8>,
    /// At most this many capped messages to one address per hour (`None`:
    /// a notice, exempt); a message over the cap is dropped with its link.
    pub cap: Option<u32>,
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Outgoing")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

/// A link token (only its digest) and the message that carries it.
#[derive(Debug, Clone)]
pub struct LinkMail {
    /// SHA-256 of the token, hex.
    pub digest: String,
    pub purpose: LinkPurpose,
    pub expires_at: i64,
    pub mail: Outgoing,
}

/// The mail an email change sends: a notice to the old address, and, with
/// verification on, a link to the new one (which then waits as
/// `pending_email` until the link is followed).
#[derive(Debug, Clone)]
pub struct EmailChangeMail {
    pub notice: Outgoing,
    pub verify: Option<LinkMail>,
}

/// What a sender leased from the outbox.
#[derive(Clone)]
pub struct Claimed {
    pub id: String,
    pub kind: String,
    pub recipient: String,
    /// Sealed, as [`Outgoing::body`].
    pub body: Vec<u8>,
    /// Tries made before this one.
    pub attempts: u32,
}

impl std::fmt::Debug for Claimed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claimed")
            .field("id", &self.id)
            .field("kind", &self.kind)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

/// How one try to send a claimed message ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MailOutcome {
    /// Accepted by the relay: the body is deleted.
    Sent,
    /// Try again at `at`.
    Retry { at: i64, error: String },
    /// Given up: kept, without its body, as `dead`.
    Dead { error: String },
}
