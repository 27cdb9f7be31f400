//! The JSON shapes of the API: what requests carry and answers hold. Domain
//! records from the actors crate become these at the edge; times go out as
//! RFC 3339 UTC strings.
//!
//! Each shape is also its OpenAPI schema (`ToSchema`): the doc comments of
//! types and fields are the document's descriptions, so they are written for
//! the API's clients. Values that are names of domain states (breaker states,
//! actor statuses, …) are documented by the small schema types at the end,
//! which take their names from the domain.

use std::borrow::Cow;
use std::collections::BTreeMap;

use gatehouse_actors::breaker::{BreakerSnapshot, BreakerState};
use gatehouse_actors::model::{Session, User};
use gatehouse_actors::passwords::PasswordSettings;
use gatehouse_actors::services::admin::{AdminUser, AuditPage, PAGE_MAX, UserPage};
use gatehouse_actors::services::auth::Issued;
use gatehouse_actors::services::operations::HealthStatus;
use gatehouse_actors::services::sessions::SessionInfo;
use gatehouse_actors::supervisor::{ActorReport, ActorStatus};
use gatehouse_actors::system::ActorKind;
use gatehouse_actors::token_issuer::AccessClaims;
use gatehouse_actors::token_issuer::ring::{KeyInfo, KeyState};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, Serializer};
use utoipa::openapi::schema::{ObjectBuilder, Schema, SchemaFormat, Type};
use utoipa::openapi::{KnownFormat, RefOr};
use utoipa::{PartialSchema, ToSchema};

/// A millisecond timestamp as RFC 3339 UTC.
fn rfc3339<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
    time::serde::rfc3339::serialize(&gatehouse_actors::clock::datetime(*ms), s)
}

fn rfc3339_opt<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
    match ms {
        Some(ms) => rfc3339(ms, s),
        None => s.serialize_none(),
    }
}

// Request structs keep every field optional, so that a missing one is a 422
// naming it rather than a 400; the schemas say which the server requires
// (`value_type` without `Option`).

/// A new account. Unknown fields are ignored. A missing field is a
/// validation failure (422), a wrongly typed one a malformed body (400).
#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({
    "email": "ada@example.com",
    "username": "ada",
    "password": "correct horse battery staple"
})))]
pub struct RegisterRequest {
    /// Stored Unicode-NFC-normalised and lower-cased, with an IDNA (punycode)
    /// domain; unique in that form. Addresses with invisible or control
    /// characters, and quoted local parts, are refused (422).
    #[schema(value_type = String, format = Email, max_length = 254)]
    pub email: Option<String>,
    /// 3–32 of `[A-Za-z0-9_.-]`; unique ignoring case.
    #[schema(value_type = String, pattern = "^[A-Za-z0-9_.-]{3,32}$")]
    pub username: Option<String>,
    #[schema(value_type = NewPassword)]
    pub password: Option<SecretString>,
}

/// Credentials, as JSON or as an `application/x-www-form-urlencoded` form
/// (the OAuth2 token endpoint): the resource-owner password grant
/// (`username`, `password`), or with `grant_type=refresh_token` a refresh
/// token to exchange, as `/api/v1/auth/refresh` does. Unknown fields are
/// ignored. A missing field is a validation failure (422).
#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"username": "ada", "password": "correct horse battery staple"})))]
pub struct LoginRequest {
    /// The username or the email address (password grant).
    #[schema(value_type = String)]
    pub username: Option<String>,
    /// Password grant.
    #[schema(value_type = String, format = Password)]
    pub password: Option<SecretString>,
    /// The OAuth2 grant (its schema: [`grant_type`]).
    #[schema(schema_with = grant_type)]
    pub grant_type: Option<String>,
    /// The refresh token to exchange (`grant_type=refresh_token`).
    #[schema(value_type = String, format = Password)]
    pub refresh_token: Option<SecretString>,
}

fn grant_type() -> RefOr<Schema> {
    names(
        "The OAuth2 grant: optional (`password` when left out); `refresh_token` exchanges \
         `refresh_token` for a new pair. Anything else is 422.",
        ["password", "refresh_token"],
    )
}

/// A refresh token to exchange.
#[derive(Deserialize, ToSchema)]
pub struct RefreshRequest {
    /// The opaque refresh token from login or the previous refresh.
    #[schema(value_type = String, format = Password)]
    pub refresh_token: Option<SecretString>,
}

/// The second step of a login that answered 403 `AUTH009`. A missing field
/// is a validation failure (422).
#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"mfa_token": "Hh0cTq3lJ5x7Y2mVwB9sK4pN8rZ1dF6gA0eC3uL7iO", "code": "492039"})))]
pub struct LoginMfaRequest {
    /// From the `AUTH009` error: single use, valid for 300 s.
    #[schema(value_type = String, format = Password)]
    pub mfa_token: Option<SecretString>,
    /// A code from the authenticator app (6 digits; RFC 6238, SHA-1, 30 s
    /// steps, one step of clock skew forgiven), or a recovery code
    /// (`xxxxx-xxxxx`; case, spaces and the dash ignored). Each works once.
    #[schema(value_type = String, max_length = 64, examples("492039"))]
    pub code: Option<SecretString>,
}

/// A password check that renews the session's privileged window.
#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"password": "correct horse battery staple", "code": "492039"})))]
pub struct ReauthenticateRequest {
    #[schema(value_type = String, format = Password)]
    pub password: Option<SecretString>,
    /// Required while a second factor is on: an app code (6 digits) or a
    /// recovery code. Each works once.
    #[schema(value_type = Option<String>, max_length = 64, examples("492039"))]
    pub code: Option<SecretString>,
}

/// A second-factor code. A missing one is a validation failure (422).
#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"code": "492039"})))]
pub struct CodeRequest {
    /// A code from the authenticator app (6 digits); where the route says
    /// so, a recovery code too. Each works once.
    #[schema(value_type = String, max_length = 64, examples("492039"))]
    pub code: Option<SecretString>,
}

/// A pending TOTP enrolment: put it in the authenticator app, then confirm
/// it with a code from the app.
#[derive(Serialize, ToSchema)]
#[schema(as = TotpEnrolment, examples(json!({
    "secret": "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP",
    "otpauth_uri": "otpauth://totp/Gatehouse:ada%40example.com?secret=JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP&issuer=Gatehouse"
})))]
pub struct TotpEnrolmentBody<'a> {
    /// The key, base32 without padding (160 bits), for typing into an app.
    pub secret: &'a str,
    /// The same key as an `otpauth://totp/` URI (SHA-1, 6 digits, 30 s),
    /// for a QR code an app scans.
    pub otpauth_uri: &'a str,
}

/// Recovery codes, shown this once: each completes one login (or one
/// re-authentication) in place of an app code.
#[derive(Serialize, ToSchema)]
#[schema(as = RecoveryCodes)]
pub struct RecoveryCodesBody {
    #[schema(min_items = 10, max_items = 10, examples(json!(["k7m2q-x9rfa", "b3hzw-4ncpe"])))]
    pub recovery_codes: Vec<String>,
}

/// A change of email and/or username. Fields left out (or null) are not
/// changed. Unknown fields are ignored.
#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"username": "ada_l"})))]
pub struct UpdateProfileRequest {
    /// Stored Unicode-NFC-normalised and lower-cased, with an IDNA (punycode)
    /// domain; unique in that form. Addresses with invisible or control
    /// characters, and quoted local parts, are refused (422).
    #[schema(format = Email, max_length = 254)]
    pub email: Option<String>,
    /// 3–32 of `[A-Za-z0-9_.-]`; unique ignoring case.
    #[schema(pattern = "^[A-Za-z0-9_.-]{3,32}$")]
    pub username: Option<String>,
}

/// A password change. A missing field is a validation failure (422).
#[derive(Deserialize, ToSchema)]
pub struct ChangePasswordRequest {
    /// The password now; wrong → 403 `AUTH005`.
    #[schema(value_type = String, format = Password)]
    pub current_password: Option<SecretString>,
    #[schema(value_type = NewPassword)]
    pub new_password: Option<SecretString>,
}

/// Following an email verification link.
#[derive(Deserialize, ToSchema)]
pub struct VerifyEmailRequest {
    /// The `token` of the link; unknown, expired or used → 400 `AUTH008`.
    #[schema(value_type = String, format = Password)]
    pub token: Option<SecretString>,
}

/// Asking for a password-reset link.
#[derive(Deserialize, ToSchema)]
pub struct ResetRequest {
    /// The account's email address; answered alike whether it has one or not.
    #[schema(format = Email)]
    pub email: Option<String>,
}

/// Setting a new password through a reset link.
#[derive(Deserialize, ToSchema)]
pub struct ResetConfirmRequest {
    /// The `token` of the link; unknown, expired or used → 400 `AUTH008`.
    #[schema(value_type = String, format = Password)]
    pub token: Option<SecretString>,
    #[schema(value_type = NewPassword)]
    pub new_password: Option<SecretString>,
}

/// A password being chosen (registration, password change): between
/// `password.min_length` and `password.max_length` characters, not a
/// well-known common password, not equal to the username or email.
/// `minLength` and `maxLength` are this server's configured limits.
pub struct NewPassword;

impl NewPassword {
    /// The schema with the limits `settings` enforce.
    pub fn schema_for(settings: &PasswordSettings) -> Schema {
        let (min, max) = (settings.min_length, settings.max_length);
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::Password)))
            .min_length(Some(min))
            .max_length(Some(max))
            .description(Some(format!(
                "A password being chosen: {min} to {max} characters (`password.min_length`, \
                 `password.max_length`), not a well-known common password, not equal to \
                 the username or email."
            )))
            .into()
    }
}

impl PartialSchema for NewPassword {
    /// With the default limits; the served document states the configured ones.
    fn schema() -> RefOr<Schema> {
        Self::schema_for(&PasswordSettings::default()).into()
    }
}

impl ToSchema for NewPassword {}

/// An account, as its owner sees it.
#[derive(Serialize, ToSchema)]
#[schema(as = User, examples(json!({
    "id": "usr_01J9Z3K7Q2W8X5V4B6N1M0P3R7",
    "email": "ada@example.com",
    "username": "ada",
    "is_active": true,
    "email_verified": true,
    "pending_email": null,
    "mfa_enabled": false,
    "created_at": "2026-01-01T00:00:00Z",
    "updated_at": "2026-01-01T00:00:00Z"
})))]
pub struct UserBody<'a> {
    /// Opaque user id.
    pub id: &'a str,
    /// Stored lower-cased, NFC-normalised, with an IDNA (punycode) domain.
    #[schema(format = Email)]
    pub email: &'a str,
    /// As chosen; unique ignoring case.
    #[schema(pattern = "^[A-Za-z0-9_.-]{3,32}$")]
    pub username: &'a str,
    /// False once the account is deactivated (it can no longer log in).
    pub is_active: bool,
    /// Whether the address was confirmed through a link sent to it.
    pub email_verified: bool,
    /// An address waiting for its verification link to replace `email`; null
    /// unless an email change awaits verification.
    #[schema(format = Email)]
    pub pending_email: Option<&'a str>,
    /// Whether logging in needs a second factor (TOTP or a recovery code).
    pub mfa_enabled: bool,
    /// RFC 3339, UTC.
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// RFC 3339, UTC.
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: i64,
}

impl<'a> From<&'a User> for UserBody<'a> {
    fn from(u: &'a User) -> Self {
        Self {
            id: &u.id,
            email: &u.email,
            username: &u.username,
            is_active: u.is_active,
            email_verified: u.email_verified,
            pending_email: u.pending_email.as_deref(),
            mfa_enabled: u.mfa_enabled,
            created_at: u.created_at,
            updated_at: u.updated_at,
        }
    }
}

/// The tokens of a session: a short-lived access token and a refresh token.
#[derive(Serialize, ToSchema)]
#[schema(as = Tokens, examples(json!({
    "access_token": "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9.e30.c2lnbmF0dXJl",
    "token_type": "bearer",
    "expires_in": 900,
    "refresh_token": "q3yQ0p1v5qk2o8Zb7wzX9mB4h6s1tN0aR2uL8cV5dEf"
})))]
pub struct TokensBody<'a> {
    /// HS256 JWT with claims `sub` (user id), `sid` (session id), `iat`,
    /// `exp`, `iss`, `aud`, `jti`. Send it as `Authorization: Bearer …`.
    pub access_token: &'a str,
    #[schema(value_type = TokenType, inline)]
    pub token_type: &'static str,
    /// Seconds until the access token expires (`auth.access_token_ttl_s`).
    pub expires_in: u64,
    /// Opaque; valid once — using it a second time revokes the whole session.
    pub refresh_token: &'a str,
}

/// How the access token is used: as a bearer token.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum TokenType {
    Bearer,
}

impl<'a> From<&'a Issued> for TokensBody<'a> {
    fn from(t: &'a Issued) -> Self {
        Self {
            access_token: t.access_token.expose_secret(),
            token_type: "bearer",
            expires_in: t.expires_in,
            refresh_token: t.refresh_token.expose_secret(),
        }
    }
}

/// One of the caller's live sessions (one login and its refreshes).
#[derive(Serialize, ToSchema)]
#[schema(as = Session)]
pub struct SessionBody<'a> {
    /// The id `DELETE /api/v1/users/me/sessions/{id}` takes.
    pub id: &'a str,
    /// RFC 3339, UTC.
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: i64,
    /// RFC 3339, UTC.
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub last_used_at: i64,
    /// Slides forward on refresh, never past `auth.session_max_lifetime_s`
    /// after `created_at`.
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub expires_at: i64,
    /// Client IP at login, if known.
    #[schema(required = true)]
    pub ip: Option<&'a str>,
    /// `User-Agent` at login, if sent.
    #[schema(required = true)]
    pub user_agent: Option<&'a str>,
    /// Whether this is the session of the token that made the request.
    pub current: bool,
}

impl<'a> From<&'a SessionInfo> for SessionBody<'a> {
    fn from(info: &'a SessionInfo) -> Self {
        let s: &Session = &info.session;
        Self {
            id: &s.id,
            created_at: s.created_at,
            last_used_at: s.last_used_at,
            expires_at: s.expires_at,
            ip: s.ip.as_deref(),
            user_agent: s.user_agent.as_deref(),
            current: info.current,
        }
    }
}

/// The caller's live sessions.
#[derive(Serialize, ToSchema)]
pub struct SessionList<'a> {
    pub sessions: Vec<SessionBody<'a>>,
}

/// `GET /.well-known/jwks.json`: the public keys access tokens are signed
/// with — every key that is next, active or retired — and never private or
/// symmetric material (`{"keys": []}` with HS256). Cacheable for five
/// minutes: a key is published at least ten minutes before it signs.
#[derive(ToSchema)]
#[schema(examples(json!({"keys": [{"kty": "OKP", "crv": "Ed25519", "x": "11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo",
    "kid": "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs", "alg": "EdDSA", "use": "sig"}]})))]
pub struct Jwks {
    pub keys: Vec<JwkDoc>,
}

/// One published key (RFC 7517): `kty` `OKP` with `crv` `Ed25519` and `x`,
/// or `kty` `EC` with `crv` `P-256`, `x` and `y`.
#[derive(ToSchema)]
pub struct JwkDoc {
    pub kty: String,
    pub crv: String,
    pub x: String,
    /// EC keys only.
    pub y: Option<String>,
    /// The key's RFC 7638 thumbprint; tokens name it in their `kid` header.
    pub kid: String,
    /// `EdDSA` or `ES256`.
    pub alg: String,
    /// Always `sig`.
    #[schema(rename = "use")]
    pub r#use: String,
}

/// A signing key as `gatehouse keys` and the admin API show it: never key material.
#[derive(Serialize, ToSchema)]
#[schema(as = SigningKey, examples(json!({
    "kid": "NzbLsXh8uDCcd-6MNwXF4W_7noWXFZAfHkxZsRGC9Xs", "alg": "EdDSA", "state": "active",
    "created_at": "2026-01-01T00:00:00Z", "activates_at": null
})))]
pub struct SigningKeyBody<'a> {
    /// RFC 7638 thumbprint, the `kid` of the tokens it signs.
    pub kid: &'a str,
    /// `EdDSA` or `ES256`.
    pub alg: &'a str,
    /// `next` (published, not signing yet), `active` (signing) or `retired`
    /// (published until its last token expires).
    pub state: &'static str,
    /// RFC 3339, UTC.
    pub created_at: String,
    /// When a next key starts signing (RFC 3339); null for the others.
    pub activates_at: Option<String>,
}

impl<'a> From<&'a KeyInfo> for SigningKeyBody<'a> {
    fn from(k: &'a KeyInfo) -> Self {
        Self {
            kid: &k.kid,
            alg: &k.alg,
            state: k.state.name(),
            created_at: crate::http::rfc3339(k.created_at),
            activates_at: (k.state == KeyState::Next).then(|| crate::http::rfc3339(k.activates_at)),
        }
    }
}

/// The signing keys of the ring, as `GET /api/v1/admin/keys` lists them.
#[derive(Serialize, ToSchema)]
#[schema(as = SigningKeys)]
pub struct SigningKeyList<'a> {
    pub keys: Vec<SigningKeyBody<'a>>,
}

/// A user as operators see them.
#[derive(Serialize, ToSchema)]
#[schema(as = AdminUser, examples(json!({
    "id": "usr_01J9Z3K7Q2W8X5V4B6N1M0P3R7",
    "email": "ada@example.com",
    "username": "ada",
    "is_active": true,
    "email_verified": true,
    "pending_email": null,
    "mfa_enabled": false,
    "created_at": "2026-01-01T00:00:00Z",
    "updated_at": "2026-01-01T00:00:00Z",
    "roles": ["support"],
    "locked_until": null,
    "last_login_at": "2026-01-02T08:30:00Z",
    "active_sessions": 2
})))]
pub struct AdminUserBody<'a> {
    #[serde(flatten)]
    pub user: UserBody<'a>,
    /// In the `roles` claim of the tokens issued to the user.
    pub roles: &'a [String],
    /// RFC 3339, UTC: until when the account throttle refuses logins; null
    /// when it does not.
    #[serde(serialize_with = "rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub locked_until: Option<i64>,
    /// RFC 3339, UTC: when a session was last opened; null if never.
    #[serde(serialize_with = "rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_login_at: Option<i64>,
    /// Sessions neither revoked nor expired.
    pub active_sessions: u64,
}

impl<'a> From<&'a AdminUser> for AdminUserBody<'a> {
    fn from(u: &'a AdminUser) -> Self {
        Self {
            user: UserBody::from(&u.record.user),
            roles: &u.record.user.roles,
            locked_until: u.locked_until,
            last_login_at: u.record.last_login_at,
            active_sessions: u.record.active_sessions,
        }
    }
}

/// A page of users, by id; `next_cursor` asks for the next (null: the last page).
#[derive(Serialize, ToSchema)]
#[schema(as = AdminUserPage)]
pub struct AdminUserPageBody<'a> {
    pub users: Vec<AdminUserBody<'a>>,
    pub next_cursor: Option<&'a str>,
}

impl<'a> From<&'a UserPage> for AdminUserPageBody<'a> {
    fn from(page: &'a UserPage) -> Self {
        Self {
            users: page.users.iter().map(AdminUserBody::from).collect(),
            next_cursor: page.next_cursor.as_deref(),
        }
    }
}

/// The query of `GET /api/v1/admin/users`; other parameters are ignored.
#[derive(Deserialize, Default)]
pub struct UserSearchQuery {
    pub query: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// What `PUT /api/v1/admin/users/{id}/roles` says.
#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"roles": ["support", "billing:read"]})))]
pub struct RolesRequest {
    /// At most 32; they replace the user's roles (repeats are dropped).
    #[schema(max_items = 32, value_type = Vec<Role>)]
    pub roles: Option<Vec<String>>,
}

/// The query of `GET /api/v1/admin/audit`; other parameters are ignored.
#[derive(Deserialize, Default)]
pub struct AuditQuery {
    pub user_id: Option<String>,
    pub event: Option<String>,
    /// RFC 3339.
    pub since: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// A stored security event.
#[derive(Serialize, ToSchema)]
#[schema(as = AuditEvent, examples(json!({
    "id": 41,
    "at": "2026-01-02T08:30:00.120Z",
    "event": "login.failure",
    "user_id": null,
    "ip": "203.0.113.9",
    "request_id": "0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b",
    "details": {"login": "ada", "reason": "wrong_password"}
})))]
pub struct AuditEventBody<'a> {
    pub id: i64,
    #[serde(serialize_with = "rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub at: i64,
    /// A name of the log's event list, or `admin.<action>`.
    pub event: &'a str,
    /// The user it concerns, if any (after an erasure, all that is left).
    pub user_id: Option<&'a str>,
    /// The client address of the request it happened in, if any.
    pub ip: Option<&'a str>,
    pub request_id: Option<&'a str>,
    /// What the log line says besides (the login name typed, a reason, the
    /// admin key's id and name…); never a secret.
    #[schema(value_type = Object)]
    pub details: &'a serde_json::Map<String, serde_json::Value>,
}

/// A page of stored events, newest first; `next_cursor` asks for older ones
/// (null: the last page).
#[derive(Serialize, ToSchema)]
#[schema(as = AuditPage)]
pub struct AuditPageBody<'a> {
    pub events: Vec<AuditEventBody<'a>>,
    pub next_cursor: Option<&'a str>,
}

impl<'a> From<&'a AuditPage> for AuditPageBody<'a> {
    fn from(page: &'a AuditPage) -> Self {
        let events = page
            .events
            .iter()
            .map(|entry| {
                let e = &entry.event;
                AuditEventBody {
                    id: entry.id,
                    at: e.at,
                    event: &e.event,
                    user_id: e.user_id.as_deref(),
                    ip: e.ip.as_deref(),
                    request_id: e.request_id.as_deref(),
                    details: &e.details,
                }
            })
            .collect();
        Self {
            events,
            next_cursor: page.next_cursor.as_deref(),
        }
    }
}

/// The `limit` of a page: 1–200.
pub struct PageLimit;

impl PartialSchema for PageLimit {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
            .maximum(Some(PAGE_MAX))
            .into()
    }
}

/// A time as a query parameter: RFC 3339.
pub struct Timestamp;

impl PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .into()
    }
}

/// A role: 1–64 characters of `[a-z0-9:_-]`.
pub struct Role;

impl PartialSchema for Role {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .pattern(Some("^[a-z0-9:_-]{1,64}$"))
            .min_length(Some(1))
            .max_length(Some(64))
            .into()
    }
}

impl ToSchema for Role {}

/// What `POST /api/v1/admin/keys/rotate` may say (the body is optional).
#[derive(Deserialize, ToSchema, Default)]
pub struct RotateKeysRequest {
    /// Make a key sign at once (the pending next key, else a new one)
    /// instead of publishing a new next key. Default false.
    pub now: Option<bool>,
}

/// An RFC 7662 introspection request (a form). Unknown fields (such as
/// `token_type_hint`) are ignored.
#[derive(Deserialize, ToSchema)]
#[schema(examples(json!({"token": "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9.e30.c2lnbmF0dXJl"})))]
pub struct IntrospectRequest {
    /// The access token to look at.
    #[schema(value_type = String, format = Password)]
    pub token: Option<SecretString>,
}

/// RFC 7662: whether a token is valid now, and what it says when it is.
/// Anything not currently valid (malformed, badly signed, expired, of a
/// revoked session) is `{"active": false}` and nothing else.
#[derive(Serialize, ToSchema)]
#[schema(as = Introspection, examples(
    json!({"active": true, "sub": "0192f3c4-5d6e-7f80-9a1b-2c3d4e5f6a7b",
           "sid": "0192f3c4-6a7b-7c8d-9e0f-1a2b3c4d5e6f", "exp": 1767226500, "iat": 1767225600,
           "amr": ["pwd", "mfa"], "roles": [], "token_type": "access_token"}),
    json!({"active": false})
))]
pub struct IntrospectionBody<'a> {
    pub active: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sid: Option<&'a str>,
    /// Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// Unix seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub amr: Option<&'a [String]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub roles: Option<&'a [String]>,
    /// `access_token` when active.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_type: Option<&'static str>,
}

impl<'a> From<Option<&'a AccessClaims>> for IntrospectionBody<'a> {
    fn from(claims: Option<&'a AccessClaims>) -> Self {
        Self {
            active: claims.is_some(),
            sub: claims.map(|c| c.sub.as_str()),
            sid: claims.map(|c| c.sid.as_str()),
            exp: claims.map(|c| c.exp),
            iat: claims.map(|c| c.iat),
            amr: claims.map(|c| c.amr.as_slice()),
            roles: claims.map(|c| c.roles.as_slice()),
            token_type: claims.map(|_| "access_token"),
        }
    }
}

/// `GET /.well-known/oauth-authorization-server`: RFC 8414 metadata, built
/// from `server.public_url`.
#[derive(Serialize, ToSchema)]
pub struct AuthorizationServer {
    /// `auth.issuer`, the `iss` of every token.
    pub issuer: String,
    pub token_endpoint: String,
    pub jwks_uri: String,
    pub introspection_endpoint: String,
    pub grant_types_supported: Vec<&'static str>,
    /// Empty: Gatehouse has no authorization endpoint.
    pub response_types_supported: Vec<&'static str>,
    pub token_endpoint_auth_methods_supported: Vec<&'static str>,
    /// The algorithm access tokens are signed with.
    pub token_signing_alg_values_supported: Vec<&'static str>,
}

/// How the service is.
#[derive(Serialize, ToSchema)]
#[schema(examples(json!({
    "status": "healthy",
    "timestamp": "2026-01-01T00:00:00Z",
    "version": "0.1.0",
    "uptime_s": 3600,
    "circuit_breakers": {"database": "closed"},
    "actors": {
        "breaker": "running",
        "metrics": "running",
        "rate_limiter": "running",
        "token_issuer": "running",
        "user_repo": "running"
    }
})))]
pub struct Health {
    #[schema(value_type = HealthStatusName)]
    pub status: &'static str,
    /// RFC 3339, UTC.
    #[schema(format = DateTime)]
    pub timestamp: String,
    /// The server's version.
    #[schema(examples("0.1.0"))]
    pub version: &'static str,
    /// Seconds since the service started.
    pub uptime_s: u64,
    /// Breaker name → state.
    #[schema(value_type = BTreeMap<String, BreakerStateName>)]
    pub circuit_breakers: BTreeMap<&'static str, &'static str>,
    /// Actor name → status.
    #[schema(value_type = BTreeMap<String, ActorStatusName>)]
    pub actors: BTreeMap<&'static str, &'static str>,
}

/// One circuit breaker, as operators see it.
#[derive(Serialize, ToSchema)]
#[schema(as = CircuitBreaker)]
pub struct BreakerBody {
    #[schema(value_type = BreakerStateName)]
    pub state: &'static str,
    /// Consecutive failed calls counted so far.
    pub failure_count: u32,
    /// When a call last failed (RFC 3339, UTC), or null.
    #[serde(serialize_with = "rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    pub last_failure: Option<i64>,
    /// When an open breaker goes half_open (RFC 3339, UTC), or null.
    #[serde(serialize_with = "rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    pub next_attempt: Option<i64>,
}

impl From<&BreakerSnapshot> for BreakerBody {
    fn from(b: &BreakerSnapshot) -> Self {
        Self {
            state: b.state.name(),
            failure_count: b.failure_count,
            last_failure: b.last_failure,
            next_attempt: b.next_attempt,
        }
    }
}

/// Every circuit breaker.
#[derive(Serialize, ToSchema)]
#[schema(examples(json!({
    "circuit_breakers": {
        "database": {"state": "closed", "failure_count": 0, "last_failure": null, "next_attempt": null}
    }
})))]
pub struct CircuitBreakers {
    #[schema(value_type = BreakerMap, inline)]
    pub circuit_breakers: BTreeMap<&'static str, BreakerBody>,
}

/// One supervised actor, as operators see it.
#[derive(Serialize, ToSchema)]
#[schema(as = ActorReport)]
pub struct ActorBody {
    #[schema(value_type = ActorStatusName)]
    pub status: &'static str,
    /// Times the supervisor restarted it.
    pub restarts: u64,
    /// When it last failed (RFC 3339, UTC), or null; the reason is in the
    /// log, not here.
    #[serde(serialize_with = "rfc3339_opt")]
    #[schema(value_type = Option<String>, format = DateTime, required = true)]
    pub last_failure: Option<i64>,
}

impl From<&ActorReport> for ActorBody {
    fn from(r: &ActorReport) -> Self {
        Self {
            status: r.status.name(),
            restarts: r.restarts,
            last_failure: r.last_failure,
        }
    }
}

/// Every supervised actor.
#[derive(Serialize, ToSchema)]
pub struct Actors {
    #[schema(value_type = ActorMap, inline)]
    pub actors: BTreeMap<&'static str, ActorBody>,
}

/// Counters since start and recent latencies.
#[derive(Serialize, ToSchema)]
pub struct MetricsSummary {
    /// Seconds since the front end started.
    pub uptime_s: u64,
    /// Requests answered.
    pub requests_total: u64,
    #[schema(inline)]
    pub latency_ms: Percentiles,
    #[schema(inline)]
    pub logins: Logins,
    /// Accounts created.
    pub registrations_total: u64,
    /// Requests refused by the IP rate limit.
    pub rate_limited_total: u64,
}

/// Percentiles of recent request latencies, in milliseconds.
#[derive(Serialize, ToSchema, Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

/// Logins since start.
#[derive(Serialize, ToSchema)]
pub struct Logins {
    /// Logins that issued tokens.
    pub success: u64,
    /// Logins refused (wrong credentials, throttled).
    pub failure: u64,
}

/// A string schema whose values are `names`.
fn names(description: &str, names: impl IntoIterator<Item = &'static str>) -> RefOr<Schema> {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
        .enum_values(Some(names))
        .into()
}

/// An object mapping names to `T`s, with the names that are always present.
fn map_of<T: ToSchema>(
    description: &str,
    required: impl IntoIterator<Item = &'static str>,
) -> RefOr<Schema> {
    let mut map = ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .additional_properties(Some(utoipa::openapi::Ref::from_schema_name(T::name())));
    for name in required {
        map = map.required(name);
    }
    map.into()
}

/// The schema of `T` and those it refers to, for a schema that refers to it.
fn refers_to<T: ToSchema>(schemas: &mut Vec<(String, RefOr<Schema>)>) {
    schemas.push((T::name().into_owned(), T::schema()));
    T::schemas(schemas);
}

/// Breaker name → breaker.
pub struct BreakerMap;

impl PartialSchema for BreakerMap {
    fn schema() -> RefOr<Schema> {
        map_of::<BreakerBody>(
            "Breaker name → breaker. Always has `database`; also `redis` when \
             `rate_limit.backend` is `redis`.",
            ["database"],
        )
    }
}

impl ToSchema for BreakerMap {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        refers_to::<BreakerBody>(schemas);
    }
}

/// Actor name → report.
pub struct ActorMap;

impl PartialSchema for ActorMap {
    fn schema() -> RefOr<Schema> {
        map_of::<ActorBody>(
            "Actor name → report; every supervised actor is listed.",
            ActorKind::ALL.map(ActorKind::name),
        )
    }
}

impl ToSchema for ActorMap {
    fn schemas(schemas: &mut Vec<(String, RefOr<Schema>)>) {
        refers_to::<ActorBody>(schemas);
    }
}

/// The names of [`HealthStatus`], as health answers carry them.
pub struct HealthStatusName;

impl PartialSchema for HealthStatusName {
    fn schema() -> RefOr<Schema> {
        use HealthStatus::*;
        // A new status does not compile until it is listed here.
        let all = |s: HealthStatus| match s {
            Healthy | Degraded | Unhealthy => s.name(),
        };
        names(
            "`healthy`; `degraded` (still 200) while a circuit breaker is not closed; \
             `unhealthy` (503) while an actor is down.",
            [Healthy, Degraded, Unhealthy].map(all),
        )
    }
}

impl ToSchema for HealthStatusName {
    fn name() -> Cow<'static, str> {
        "HealthStatus".into()
    }
}

/// The names of [`BreakerState`].
pub struct BreakerStateName;

impl PartialSchema for BreakerStateName {
    fn schema() -> RefOr<Schema> {
        use BreakerState::*;
        let all = |s: BreakerState| match s {
            Closed | Open | HalfOpen => s.name(),
        };
        names(
            "A circuit breaker's state: `closed` lets calls through, `open` refuses them \
             (503 `SVC001`), `half_open` lets trial calls through.",
            [Closed, Open, HalfOpen].map(all),
        )
    }
}

impl ToSchema for BreakerStateName {
    fn name() -> Cow<'static, str> {
        "BreakerState".into()
    }
}

/// The names of [`ActorStatus`].
pub struct ActorStatusName;

impl PartialSchema for ActorStatusName {
    fn schema() -> RefOr<Schema> {
        use ActorStatus::*;
        let all = |s: ActorStatus| match s {
            Running | Restarting | Stopped => s.name(),
        };
        names(
            "A supervised actor's status: `stopped` when the supervisor gave up on it.",
            [Running, Restarting, Stopped].map(all),
        )
    }
}

impl ToSchema for ActorStatusName {
    fn name() -> Cow<'static, str> {
        "ActorStatus".into()
    }
}

/// The name of an actor the chaos route can make fail.
pub struct ActorName;

impl PartialSchema for ActorName {
    fn schema() -> RefOr<Schema> {
        names("A supervised actor.", ActorKind::ALL.map(ActorKind::name))
    }
}

impl ToSchema for ActorName {}
