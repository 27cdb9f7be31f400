//! Every way a request can fail, and the one function that turns a failure
//! into the contract's status, code and envelope.
//!
//! Server-side failures (5xx) carry a fixed text: the inner error goes to the
//! log line of the request, never into the body.

use gatehouse_actors::{Error, FieldError, Taken};
use hyper::StatusCode;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error(transparent)]
    Domain(#[from] Error),
    /// Not JSON, not UTF-8, wrong types, duplicate keys.
    #[error("malformed body: {0}")]
    Malformed(String),
    #[error("body over {0} bytes")]
    TooLarge(usize),
    #[error("unsupported media type")]
    UnsupportedMediaType(&'static str),
    #[error("no such route")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed(String),
    /// The request body did not arrive within `server.request_timeout_ms`:
    /// the client's doing, so a 4xx and no error in the log.
    #[error("request body did not arrive in time")]
    BodyTimeout,
    /// `server.request_timeout_ms` passed. Answered as SVC003: the request
    /// was waiting on a dependency that did not answer in time (the breaker
    /// counts that dependency's own timeouts, not the abandoned request).
    #[error("request deadline passed")]
    Timeout,
}

/// What the envelope and headers of an error response need.
pub struct ErrorParts<'a> {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: &'static str,
    pub details: Option<String>,
    pub fields: Option<&'a [FieldError]>,
    pub retry_after_s: Option<u64>,
    pub allow: Option<&'a str>,
}

impl ApiError {
    /// The single mapping from failures to contract codes.
    pub fn parts(&self) -> ErrorParts<'_> {
        use StatusCode as S;
        let parts = |status, code, message, details: Option<String>| ErrorParts {
            status,
            code,
            message,
            details,
            fields: None,
            retry_after_s: None,
            allow: None,
        };
        match self {
            Self::Malformed(why) => parts(
                S::BAD_REQUEST,
                "REQ003",
                "Malformed request body",
                Some(why.clone()),
            ),
            Self::TooLarge(limit) => parts(
                S::PAYLOAD_TOO_LARGE,
                "REQ001",
                "Request body too large",
                Some(format!("The limit is {limit} bytes")),
            ),
            Self::UnsupportedMediaType(expected) => parts(
                S::UNSUPPORTED_MEDIA_TYPE,
                "REQ002",
                "Unsupported media type",
                Some(format!("Send {expected}")),
            ),
            Self::NotFound => parts(S::NOT_FOUND, "NOT001", "Resource not found", None),
            Self::MethodNotAllowed(allow) => ErrorParts {
                allow: Some(allow),
                ..parts(
                    S::METHOD_NOT_ALLOWED,
                    "REQ004",
                    "Method not allowed",
                    Some(format!("Allowed: {allow}")),
                )
            },
            Self::BodyTimeout => parts(
                S::REQUEST_TIMEOUT,
                "REQ005",
                "Request body timed out",
                Some("The request body did not arrive in time".into()),
            ),
            Self::Timeout => ErrorParts {
                retry_after_s: Some(1),
                ..parts(
                    S::SERVICE_UNAVAILABLE,
                    "SVC003",
                    "Service dependency unavailable",
                    Some("The request did not finish in time; try again shortly".into()),
                )
            },
            Self::Domain(e) => domain_parts(e, parts),
        }
    }
}

fn domain_parts<'a>(
    e: &'a Error,
    parts: impl Fn(StatusCode, &'static str, &'static str, Option<String>) -> ErrorParts<'a>,
) -> ErrorParts<'a> {
    use StatusCode as S;
    match e {
        Error::Validation(fields) => ErrorParts {
            fields: Some(fields),
            ..parts(
                S::UNPROCESSABLE_ENTITY,
                "VAL001",
                "Validation failed",
                Some("One or more fields are invalid".into()),
            )
        },
        Error::Conflict(taken) => parts(
            S::CONFLICT,
            "USER001",
            "User already exists",
            Some(
                match taken {
                    Taken::Email => "That email is already registered",
                    Taken::Username => "That username is already taken",
                }
                .into(),
            ),
        ),
        Error::InvalidCredentials => parts(
            S::UNAUTHORIZED,
            "AUTH001",
            "Invalid credentials provided",
            Some("Username or password is incorrect".into()),
        ),
        Error::InvalidToken => parts(
            S::UNAUTHORIZED,
            "AUTH002",
            "Invalid authentication token",
            Some("The bearer token is missing, malformed or not valid here".into()),
        ),
        Error::TokenExpired => parts(
            S::UNAUTHORIZED,
            "AUTH003",
            "Authentication token has expired",
            Some("Refresh the session or log in again".into()),
        ),
        Error::SessionRevoked => parts(
            S::UNAUTHORIZED,
            "AUTH004",
            "Session is no longer valid",
            Some("The session was revoked or the refresh token is not valid".into()),
        ),
        Error::WrongCurrentPassword => parts(
            S::FORBIDDEN,
            "AUTH005",
            "Current password is incorrect",
            None,
        ),
        Error::NotFound => parts(S::NOT_FOUND, "NOT001", "Resource not found", None),
        Error::RateLimited(info) => ErrorParts {
            retry_after_s: Some(info.reset_s.max(1)),
            ..parts(
                S::TOO_MANY_REQUESTS,
                "RATE001",
                "Rate limit exceeded",
                Some(format!("Try again in {} seconds", info.reset_s.max(1))),
            )
        },
        Error::AccountThrottled { retry_after_s } => ErrorParts {
            retry_after_s: Some(*retry_after_s),
            ..parts(
                S::TOO_MANY_REQUESTS,
                "AUTH006",
                "Too many failed login attempts",
                Some(format!("Try again in {retry_after_s} seconds")),
            )
        },
        Error::BreakerOpen {
            breaker,
            retry_after_s,
        } => ErrorParts {
            retry_after_s: Some(*retry_after_s),
            ..parts(
                S::SERVICE_UNAVAILABLE,
                "SVC001",
                "Service temporarily unavailable",
                Some(format!("The {breaker} circuit breaker is open")),
            )
        },
        Error::Unavailable(_) | Error::ActorUnavailable(_) => ErrorParts {
            retry_after_s: Some(1),
            ..parts(
                S::SERVICE_UNAVAILABLE,
                "SVC003",
                "Service dependency unavailable",
                Some("A dependency failed; try again shortly".into()),
            )
        },
        Error::Internal(_) => parts(
            S::INTERNAL_SERVER_ERROR,
            "SVC002",
            "Internal server error",
            None,
        ),
    }
}

/// The error envelope: `{"error": {...}}`.
#[derive(Serialize)]
pub struct Envelope<'a> {
    pub error: Body<'a>,
}

#[derive(Serialize)]
pub struct Body<'a> {
    pub code: &'static str,
    pub message: &'static str,
    pub details: Option<&'a str>,
    pub correlation_id: &'a str,
    pub timestamp: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fields: Option<&'a [FieldError]>,
}
