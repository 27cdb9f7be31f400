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
    /// `AUTH009`: the token that continues the login.
    pub mfa_token: Option<&'a str>,
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
            mfa_token: None,
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
        Error::EmailNotVerified => parts(
            S::FORBIDDEN,
            "AUTH007",
            "Email address not verified",
            Some("Follow the link sent to your email address, or ask for a new one".into()),
        ),
        Error::SecondFactorRequired { mfa_token } => ErrorParts {
            mfa_token: Some(secrecy::ExposeSecret::expose_secret(mfa_token)),
            ..parts(
                S::FORBIDDEN,
                "AUTH009",
                "Second factor required",
                Some("Complete the login at /api/v1/auth/login/mfa with a code".into()),
            )
        },
        Error::SecondFactorRefused => parts(
            S::UNAUTHORIZED,
            "AUTH010",
            "Invalid second factor",
            Some("The code is wrong, used or expired, or the mfa_token is not valid".into()),
        ),
        Error::MissingScope => parts(
            S::FORBIDDEN,
            "AUTH011",
            "Admin key lacks the scope",
            Some("This route needs a scope the admin key was not given".into()),
        ),
        Error::ReauthRequired => parts(
            S::FORBIDDEN,
            "AUTH012",
            "Re-authentication required",
            Some("Confirm your password at /api/v1/auth/reauthenticate, then retry".into()),
        ),
        Error::MfaState { enabled } => parts(
            S::CONFLICT,
            "MFA001",
            "Second factor state conflict",
            Some(
                match enabled {
                    true => "A second factor is already on",
                    false => "No second factor is on",
                }
                .into(),
            ),
        ),
        Error::BadLink => parts(
            S::BAD_REQUEST,
            "AUTH008",
            "Invalid or expired link",
            Some("The link is unknown, expired or already used; ask for a new one".into()),
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

/// The error envelope, `{"error": {...}}`: the body of every non-2xx response.
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error, examples(json!({
    "error": {
        "code": "AUTH001",
        "message": "Invalid credentials provided",
        "details": "Username or password is incorrect",
        "correlation_id": "01J9Z3K7Q2W8X5V4B6N1M0P3R7",
        "timestamp": "2026-01-01T00:00:00Z"
    }
})))]
pub struct Envelope<'a> {
    #[schema(inline)]
    pub error: Body<'a>,
}

/// What went wrong.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Body<'a> {
    #[schema(value_type = ErrorCode)]
    pub code: &'static str,
    /// Fixed text for the code.
    #[schema(examples("Invalid credentials provided"))]
    pub message: &'static str,
    /// More about this occurrence, or null. Never holds a submitted value.
    #[schema(required = true, examples("Username or password is incorrect"))]
    pub details: Option<&'a str>,
    /// The request's `X-Request-ID`.
    pub correlation_id: &'a str,
    /// When the error was produced (RFC 3339, UTC).
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// Present only on `VAL001`: the fields that failed validation.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<FieldProblem>, required = false)]
    pub fields: Option<&'a [FieldError]>,
    /// Present only on `AUTH009`: single use, for 300 s, at
    /// `POST /api/v1/auth/login/mfa`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = String, required = false)]
    pub mfa_token: Option<&'a str>,
    /// Present only on `AUTH009`: the kinds of code that complete the login.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Vec<String>, required = false, example = json!(["totp", "recovery_code"]))]
    pub methods: Option<&'static [&'static str]>,
}

/// What completes a login that answered `AUTH009`.
pub const MFA_METHODS: &[&str] = &["totp", "recovery_code"];

/// A field that failed validation (the schema of [`FieldError`]).
#[derive(utoipa::ToSchema)]
#[schema(as = FieldError)]
pub struct FieldProblem {
    /// The request field, as the client spelled it.
    #[schema(examples("email"))]
    pub field: String,
    /// Why it was refused, in words a user can act on.
    #[schema(examples("must be a valid email address"))]
    pub message: String,
}

/// The code of an error response; each code has a fixed `message`.
///
/// * `REQ001` (413): the body is larger than `server.max_body_bytes`.
/// * `REQ002` (415): the route takes another content type.
/// * `REQ003` (400): malformed body: not JSON (or form data), not UTF-8, a
///   value of the wrong type, a repeated key.
/// * `REQ004` (405): the path exists but not with this method (`Allow` lists
///   those it has).
/// * `REQ005` (408): the request body did not arrive within
///   `server.request_timeout_ms`.
/// * `AUTH001` (401): bad login: the same for an unknown user, a wrong
///   password and a deactivated account.
/// * `AUTH002` (401): missing, malformed or badly signed token; wrong `alg`,
///   `typ`, `iss` or `aud`; `nbf` in the future; a wrong or missing
///   monitoring token.
/// * `AUTH003` (401): expired token.
/// * `AUTH004` (401): session revoked, or refresh token reused, unknown or
///   expired.
/// * `AUTH005` (403): `current_password` is wrong.
/// * `AUTH006` (429): too many consecutive failed logins for this login name
///   (`Retry-After`).
/// * `AUTH007` (403): the right password, but the address is not verified
///   and `auth.email_verification = "required"`.
/// * `AUTH008` (400): an email link's token is invalid, expired or used.
/// * `AUTH009` (403): the right password of an account with a second
///   factor: the error also holds `mfa_token` and `methods`.
/// * `AUTH010` (401): a wrong, replayed or expired second-factor code, or
///   an unusable `mfa_token`.
/// * `AUTH011` (403): a valid admin key without the scope the route needs.
/// * `AUTH012` (403): a privileged operation, and the session's last
///   password check is older than `auth.reauth_window_s`.
/// * `MFA001` (409): TOTP enrolment while a second factor is on, or its
///   removal while none is.
/// * `NOT001` (404): no such route or resource.
/// * `USER001` (409): the email or username is taken (ignoring case).
/// * `VAL001` (422): field validation failed; `fields` says which and why.
/// * `RATE001` (429): the client IP used up the route's rate-limit window
///   (`Retry-After`).
/// * `SVC001` (503): a circuit breaker is open (`Retry-After`).
/// * `SVC002` (500): anything unexpected; nothing internal is shown.
/// * `SVC003` (503): a dependency failed or did not answer in time while its
///   breaker was closed (`Retry-After`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, utoipa::ToSchema)]
#[schema(rename_all = "UPPERCASE")]
pub enum ErrorCode {
    Req001,
    Req002,
    Req003,
    Req004,
    Req005,
    Auth001,
    Auth002,
    Auth003,
    Auth004,
    Auth005,
    Auth006,
    Auth007,
    Auth008,
    Auth009,
    Auth010,
    Auth011,
    Auth012,
    Mfa001,
    Not001,
    User001,
    Val001,
    Rate001,
    Svc001,
    Svc002,
    Svc003,
}
