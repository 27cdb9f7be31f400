//! The one error type every actor and domain operation returns.
//!
//! Variants are what a caller can act on, not where the error came from: the
//! front end maps each of them to a contract code in a single function. The
//! strings inside `Unavailable` and `Internal` are for logs only and never
//! reach a response.

use serde::Serialize;

/// A field that failed validation, reported back to the client as is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldError {
    /// The request field, as the client spelled it.
    pub field: &'static str,
    /// Why it was refused, in words a user can act on.
    pub message: String,
}

impl FieldError {
    pub fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self {
            field,
            message: message.into(),
        }
    }
}

/// Which unique value a registration or profile change collided with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Taken {
    Email,
    Username,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// One or more fields broke a rule; every broken rule is listed.
    #[error("validation failed")]
    Validation(Vec<FieldError>),

    /// The email or username belongs to another account (case-insensitive).
    #[error("{0:?} already taken")]
    Conflict(Taken),

    /// Unknown login name, wrong password or deactivated account: one answer for all three.
    #[error("invalid credentials")]
    InvalidCredentials,

    /// Missing, malformed, badly signed or foreign token.
    #[error("invalid token")]
    InvalidToken,

    /// A well-formed token whose `exp` has passed.
    #[error("token expired")]
    TokenExpired,

    /// The session is revoked or gone, or a refresh token is spent, unknown or expired.
    #[error("session revoked")]
    SessionRevoked,

    /// `current_password` did not match on a password change.
    #[error("current password is wrong")]
    WrongCurrentPassword,

    /// The right password, but the address is not verified and
    /// `auth.email_verification = "required"`.
    #[error("email not verified")]
    EmailNotVerified,

    /// The right password of an account with a second factor: the login
    /// goes on at `POST /auth/login/mfa` with this single-use token.
    #[error("second factor required")]
    SecondFactorRequired { mfa_token: secrecy::SecretString },

    /// A wrong, replayed or expired second-factor code, or an unusable
    /// `mfa_token`.
    #[error("second factor refused")]
    SecondFactorRefused,

    /// A valid admin key without the scope the route needs.
    #[error("admin key lacks the scope")]
    MissingScope,

    /// A privileged operation, and the session's last password check is
    /// older than `auth.reauth_window_s`.
    #[error("re-authentication required")]
    ReauthRequired,

    /// TOTP enrolment while a second factor is on, or removal while it is off.
    #[error("second factor is {}", if *.enabled { "on already" } else { "off" })]
    MfaState { enabled: bool },

    /// An email link's token is unknown, expired or used up.
    #[error("email link not usable")]
    BadLink,

    /// No such resource, or one the caller may not know exists.
    #[error("not found")]
    NotFound,

    /// The client's IP spent its allowance for this route class.
    #[error("rate limited")]
    RateLimited(RateLimitInfo),

    /// Too many consecutive failed logins for one login name.
    #[error("account throttled")]
    AccountThrottled { retry_after_s: u64 },

    /// A circuit breaker is open: the call was refused without touching the dependency.
    #[error("circuit breaker {breaker} is open")]
    BreakerOpen {
        breaker: &'static str,
        retry_after_s: u64,
    },

    /// A dependency failed (busy database, timeout, unreachable Redis).
    #[error("dependency unavailable: {0}")]
    Unavailable(String),

    /// An actor is restarting (or was left stopped): the work never reached
    /// the dependency behind it, so no breaker counts it.
    #[error("actor unavailable: {0}")]
    ActorUnavailable(String),

    /// A fault nobody can act on but the developers.
    #[error("internal error: {0}")]
    Internal(String),
}

/// A rate-limit decision as the `RateLimit-*` and `Retry-After` headers need it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimitInfo {
    /// Requests allowed per window.
    pub limit: u32,
    /// Requests still allowed in the current window.
    pub remaining: u32,
    /// Seconds until one more request is allowed (0 when some remain).
    pub reset_s: u64,
}

impl Error {
    pub fn validation(field: &'static str, message: impl Into<String>) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    /// Infrastructure failures are what a circuit breaker counts; domain outcomes are not.
    pub fn is_infrastructure(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Internal(_))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
