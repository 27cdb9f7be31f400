//! The OpenAPI 3.1 document served at `/api/v1/openapi.json`, generated once
//! at start-up from the route table ([`crate::routes`]), the wire types
//! ([`crate::wire`], [`crate::error`]) and the configuration.
//!
//! A route's row says most of what its operation is, and that part is
//! derived, never written: the guard gives the security requirement and the
//! 401; a rate class the 429, the `RateLimit-*` headers of its answers and
//! the configured allowance; a body kind the request media types and the
//! 400, 408, 413, 415 and 422; a path parameter (or `chaos_only`) the 404.
//! Every operation takes `X-Request-ID`, every answer carries it, and every
//! operation may answer 500 and 503. What a row cannot say — its summary and
//! prose, the schemas of its body, parameter and answers, its own errors —
//! is its [`Doc`], written next to it.
//!
//! Errors are shared response components ([`Failure`]) whose examples are
//! rendered by the error mapping itself ([`ApiError::parts`]), so they show
//! what the server really answers. Values that depend on the configuration
//! (password lengths, rate limits, body limit, deadlines, the monitoring
//! token) are stated as configured.

use std::collections::BTreeSet;

use bytes::Bytes;
use gatehouse_actors::{Error as Domain, FieldError, RateLimitInfo, Taken};
use hyper::Method;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::example::ExampleBuilder;
use utoipa::openapi::header::{Header, HeaderBuilder};
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::tag::TagBuilder;
use utoipa::openapi::{
    ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Paths, Ref, RefOr, Required, Server,
};
use utoipa::{PartialSchema, ToSchema};

use crate::config::Config;
use crate::error::{ApiError, Body as ErrorBody, Envelope};
use crate::http::body::{FORM, JSON};
use crate::http::router::{Body, Guard, Route};
use crate::wire::NewPassword;

/// How a route is documented, besides what its row says.
pub struct Doc {
    pub tag: Tag,
    /// One line.
    pub summary: &'static str,
    /// Markdown, or empty; what follows from the row is appended to it.
    pub description: &'static str,
    /// The schema of the request body, for each media type the body kind
    /// accepts. Present exactly when the row's body kind reads a body.
    pub request: Option<Shape>,
    /// The path parameter. Present exactly when the template has one.
    pub param: Option<Param>,
    /// The query parameters, each optional.
    pub query: &'static [QueryParam],
    /// Every answer that is not one of the shared [`Failure`]s: the
    /// successes, and answers such as health's 503 that have a body of their own.
    pub answers: &'static [Answer],
    /// The route's own errors, besides those its row implies.
    pub errors: &'static [Failure],
}

/// The groups operations are listed in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tag {
    Auth,
    Users,
    Discovery,
    Admin,
    Monitoring,
}

impl Tag {
    const ALL: [Self; 5] = [
        Self::Auth,
        Self::Users,
        Self::Discovery,
        Self::Admin,
        Self::Monitoring,
    ];

    fn name(self) -> &'static str {
        match self {
            Self::Auth => "auth",
            Self::Users => "users",
            Self::Discovery => "discovery",
            Self::Admin => "admin",
            Self::Monitoring => "monitoring",
        }
    }

    fn description(self) -> &'static str {
        match self {
            Self::Auth => {
                "Registration, login, token refresh, logout, email verification, password reset."
            }
            Self::Users => "The caller's own account and sessions (Bearer access token).",
            Self::Admin => {
                "For operators and resource servers, with an admin key (`Authorization: Bearer \
                 ghk_…`) that has the route's scope."
            }
            Self::Discovery => {
                "What other services need to verify tokens: the JWKS and RFC 8414 metadata."
            }
            Self::Monitoring => "Health, breakers, metrics, actors, Prometheus, this document.",
        }
    }
}

/// The component schemas a document needs, collected while it is built.
type Schemas = Vec<(String, RefOr<Schema>)>;

/// A schema as a table entry: adds what it needs to the components and
/// gives what refers to it.
#[derive(Clone, Copy)]
pub struct Shape(fn(&mut Schemas) -> RefOr<Schema>);

impl Shape {
    /// `T` as a component schema (with those it refers to), referred to by name.
    pub const fn of<T: ToSchema>() -> Self {
        Self(component::<T>)
    }

    /// `T`'s schema, written where it is used.
    pub const fn inline<T: PartialSchema>() -> Self {
        Self(inline::<T>)
    }

    fn resolve(self, schemas: &mut Schemas) -> RefOr<Schema> {
        (self.0)(schemas)
    }
}

fn component<T: ToSchema>(schemas: &mut Schemas) -> RefOr<Schema> {
    schemas.push((T::name().into_owned(), T::schema()));
    T::schemas(schemas);
    Ref::from_schema_name(T::name()).into()
}

fn inline<T: PartialSchema>(_: &mut Schemas) -> RefOr<Schema> {
    T::schema()
}

/// A path parameter: its name is the template's.
pub struct Param {
    pub description: &'static str,
    pub schema: Shape,
}

/// An optional query parameter.
pub struct QueryParam {
    pub name: &'static str,
    pub description: &'static str,
    pub schema: Shape,
}

/// One answer of a route.
pub struct Answer {
    pub status: u16,
    pub description: &'static str,
    pub content: Content,
}

/// What an answer's body is.
pub enum Content {
    Empty,
    Json(Shape),
    /// `text/plain`.
    Text(Shape),
}

impl Answer {
    pub const fn json(status: u16, description: &'static str, schema: Shape) -> Self {
        Self {
            status,
            description,
            content: Content::Json(schema),
        }
    }

    pub const fn text(status: u16, description: &'static str, schema: Shape) -> Self {
        Self {
            status,
            description,
            content: Content::Text(schema),
        }
    }

    pub const fn empty(status: u16, description: &'static str) -> Self {
        Self {
            status,
            description,
            content: Content::Empty,
        }
    }
}

/// The shared error responses (`#/components/responses/…`), each with the
/// codes it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Failure {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    RequestTimeout,
    Conflict,
    PayloadTooLarge,
    UnsupportedMediaType,
    ValidationFailed,
    TooManyRequests,
    InternalError,
    ServiceUnavailable,
}

impl Failure {
    pub const ALL: [Self; 13] = [
        Self::BadRequest,
        Self::Unauthorized,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::RequestTimeout,
        Self::Conflict,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::ValidationFailed,
        Self::TooManyRequests,
        Self::InternalError,
        Self::ServiceUnavailable,
    ];

    /// Its component name.
    fn name(self) -> &'static str {
        match self {
            Self::BadRequest => "BadRequest",
            Self::Unauthorized => "Unauthorized",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "NotFound",
            Self::MethodNotAllowed => "MethodNotAllowed",
            Self::RequestTimeout => "RequestTimeout",
            Self::Conflict => "Conflict",
            Self::PayloadTooLarge => "PayloadTooLarge",
            Self::UnsupportedMediaType => "UnsupportedMediaType",
            Self::ValidationFailed => "ValidationFailed",
            Self::TooManyRequests => "TooManyRequests",
            Self::InternalError => "InternalError",
            Self::ServiceUnavailable => "ServiceUnavailable",
        }
    }

    pub fn status(self) -> u16 {
        match self {
            Self::BadRequest => 400,
            Self::Unauthorized => 401,
            Self::Forbidden => 403,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::Conflict => 409,
            Self::PayloadTooLarge => 413,
            Self::UnsupportedMediaType => 415,
            Self::ValidationFailed => 422,
            Self::TooManyRequests => 429,
            Self::InternalError => 500,
            Self::ServiceUnavailable => 503,
        }
    }

    fn description(self, config: &Config) -> String {
        match self {
            Self::BadRequest => "`REQ003`: the body is not valid JSON (or form data), is not \
                UTF-8, has a value of the wrong JSON type, or repeats an object key. \
                `AUTH008` (email-link routes): the link's token is unknown, expired or used."
                .into(),
            Self::Unauthorized => "`AUTH001`: bad login (identical for an unknown user, a wrong \
                password and a deactivated account). `AUTH002`: missing, malformed or badly \
                signed token; wrong `alg`, `typ`, `iss` or `aud`; `nbf` in the future; a wrong \
                or missing monitoring token. `AUTH003`: expired token. `AUTH004`: session \
                revoked, or refresh token reused, unknown or expired. `AUTH010`: a wrong, replayed \
                or expired second-factor code, or an unusable `mfa_token`."
                .into(),
            Self::Forbidden => "`AUTH005`: `current_password` (or `password` on \
                re-authentication) is wrong. `AUTH007` (login): the right password, but the \
                address is not verified and `auth.email_verification` is `required`. `AUTH009` \
                (login): the right password of an account with a second factor; the error holds \
                `mfa_token` and `methods`. `AUTH011` (admin routes): a valid admin key without \
                the route's scope. `AUTH012`: a privileged operation, and the session's \
                last password check is older than `auth.reauth_window_s`."
                .into(),
            Self::NotFound => "`NOT001`: no such route or resource.".into(),
            Self::MethodNotAllowed => "`REQ004`: the path exists but not with this method; \
                `Allow` lists the methods it has. Any path of this document answers it for a \
                method it does not list."
                .into(),
            Self::RequestTimeout => format!(
                "`REQ005`: the request body did not arrive within `server.request_timeout_ms` \
                 ({} ms here).",
                config.server.request_timeout_ms
            ),
            Self::Conflict => "`USER001`: the email or username is already taken (compared \
                ignoring case). `MFA001`: TOTP enrolment while a second factor is on, or its \
                removal while none is."
                .into(),
            Self::PayloadTooLarge => format!(
                "`REQ001`: the body is larger than `server.max_body_bytes` ({} bytes here).",
                config.server.max_body_bytes
            ),
            Self::UnsupportedMediaType => "`REQ002`: the route takes `application/json` \
                (login also `application/x-www-form-urlencoded`) and got another content type."
                .into(),
            Self::ValidationFailed => "`VAL001`: one or more fields are missing or invalid; \
                `fields` says which and why."
                .into(),
            Self::TooManyRequests => "`RATE001`: the client IP used up the route's rate-limit \
                window. `AUTH006` (login only): too many consecutive failed logins for this \
                login name. Both send `Retry-After` in seconds; refused requests do not count \
                against the window."
                .into(),
            Self::InternalError => {
                "`SVC002`: anything unexpected. Nothing internal appears in the body.".into()
            }
            Self::ServiceUnavailable => "`SVC001`: a circuit breaker is open. `SVC003`: a \
                dependency failed (busy database, unreachable Redis with \
                `on_backend_failure = \"deny\"`, or the request deadline passed) while its \
                breaker was still closed. Both send `Retry-After` in seconds."
                .into(),
        }
    }

    /// One failure of each code this response carries, with a title; the
    /// examples are their envelopes as the error mapping renders them.
    fn samples(self, config: &Config) -> Vec<(&'static str, ApiError)> {
        let domain = |e: Domain| ApiError::Domain(e);
        match self {
            Self::BadRequest => vec![
                (
                    "Malformed body",
                    ApiError::Malformed("the body is not valid JSON (line 1, column 18)".into()),
                ),
                ("Unusable email link", domain(Domain::BadLink)),
            ],
            Self::Unauthorized => vec![
                ("Bad login", domain(Domain::InvalidCredentials)),
                ("Invalid token", domain(Domain::InvalidToken)),
                ("Expired token", domain(Domain::TokenExpired)),
                ("Session revoked", domain(Domain::SessionRevoked)),
                ("Second factor refused", domain(Domain::SecondFactorRefused)),
            ],
            Self::Forbidden => vec![
                (
                    "Wrong current password",
                    domain(Domain::WrongCurrentPassword),
                ),
                ("Email not verified", domain(Domain::EmailNotVerified)),
                (
                    "Second factor required",
                    domain(Domain::SecondFactorRequired {
                        mfa_token: "Hh0cTq3lJ5x7Y2mVwB9sK4pN8rZ1dF6gA0eC3uL7iO".into(),
                    }),
                ),
                ("Re-authentication required", domain(Domain::ReauthRequired)),
                ("Admin key without the scope", domain(Domain::MissingScope)),
            ],
            Self::NotFound => vec![("Not found", ApiError::NotFound)],
            Self::MethodNotAllowed => vec![(
                "Method not allowed",
                ApiError::MethodNotAllowed("GET, HEAD, PUT, DELETE".into()),
            )],
            Self::RequestTimeout => vec![("Body too slow", ApiError::BodyTimeout)],
            Self::Conflict => vec![
                ("Taken", domain(Domain::Conflict(Taken::Username))),
                (
                    "Second factor on already",
                    domain(Domain::MfaState { enabled: true }),
                ),
            ],
            Self::PayloadTooLarge => vec![(
                "Too large",
                ApiError::TooLarge(config.server.max_body_bytes),
            )],
            Self::UnsupportedMediaType => {
                vec![("Wrong content type", ApiError::UnsupportedMediaType(JSON))]
            }
            Self::ValidationFailed => vec![(
                "Invalid fields",
                domain(Domain::Validation(vec![FieldError::new(
                    "email",
                    "must be a valid email address",
                )])),
            )],
            Self::TooManyRequests => vec![
                (
                    "IP rate limit",
                    domain(Domain::RateLimited(RateLimitInfo {
                        limit: 5,
                        remaining: 0,
                        reset_s: 42,
                    })),
                ),
                (
                    "Account throttled",
                    domain(Domain::AccountThrottled {
                        retry_after_s: config.auth.lockout_s,
                    }),
                ),
            ],
            Self::InternalError => vec![(
                "Internal error",
                domain(Domain::Internal("what went wrong, for the log only".into())),
            )],
            Self::ServiceUnavailable => vec![
                (
                    "Breaker open",
                    domain(Domain::BreakerOpen {
                        breaker: "database",
                        retry_after_s: 30,
                    }),
                ),
                (
                    "Dependency failed",
                    domain(Domain::Unavailable("what failed, for the log only".into())),
                ),
            ],
        }
    }

    /// The shared response, with its examples and the headers the mapping
    /// gives its codes.
    fn response(self, config: &Config, schemas: &mut Schemas) -> Response {
        let samples = self.samples(config);
        let error = Shape::of::<Envelope<'static>>().resolve(schemas);
        let examples = samples.iter().map(|(summary, failure)| {
            let parts = failure.parts();
            let example = ExampleBuilder::new()
                .summary(*summary)
                .value(Some(envelope(failure)))
                .build();
            (parts.code, example)
        });
        let mut headers = vec![&X_REQUEST_ID];
        if samples
            .iter()
            .any(|(_, e)| e.parts().retry_after_s.is_some())
        {
            headers.push(&RETRY_AFTER);
        }
        if samples.iter().any(|(_, e)| e.parts().allow.is_some()) {
            headers.push(&ALLOW);
        }
        if self == Self::Unauthorized {
            headers.push(&WWW_AUTHENTICATE);
        }
        if self == Self::TooManyRequests {
            headers.extend(RATE_LIMIT_HEADERS);
        }
        let mut response = ResponseBuilder::new()
            .description(self.description(config))
            .content(
                JSON,
                ContentBuilder::new()
                    .schema(Some(error))
                    .examples_from_iter(examples)
                    .build(),
            );
        for header in headers {
            response = response.header(header.name, header.build());
        }
        response.build()
    }
}

/// The error envelope `failure` is answered with, at a fixed time and id.
fn envelope(failure: &ApiError) -> Value {
    let parts = failure.parts();
    let envelope = Envelope {
        error: ErrorBody {
            code: parts.code,
            message: parts.message,
            details: parts.details.as_deref(),
            correlation_id: EXAMPLE_REQUEST_ID,
            timestamp: "2026-01-01T00:00:00Z".into(),
            fields: parts.fields,
            mfa_token: parts.mfa_token,
            methods: parts.mfa_token.map(|_| crate::error::MFA_METHODS),
        },
    };
    serde_json::to_value(envelope).unwrap_or(Value::Null)
}

const EXAMPLE_REQUEST_ID: &str = "01J9Z3K7Q2W8X5V4B6N1M0P3R7";

/// A response header, as documented wherever it is sent.
struct HeaderDoc {
    name: &'static str,
    /// Sent on every response it is documented on. utoipa's `Header` has no
    /// `required`; [`mark_required_headers`] adds it to the serialized document.
    required: bool,
    description: &'static str,
    schema: fn() -> ObjectBuilder,
}

impl HeaderDoc {
    fn build(&self) -> Header {
        HeaderBuilder::new()
            .schema((self.schema)())
            .description(Some(self.description))
            .build()
    }
}

fn string() -> ObjectBuilder {
    ObjectBuilder::new().schema_type(Type::String)
}

fn count() -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .minimum(Some(0))
}

const X_REQUEST_ID: HeaderDoc = HeaderDoc {
    name: "X-Request-ID",
    required: true,
    description: "The caller's `X-Request-ID` if it was 1–128 characters of `[A-Za-z0-9._-]`, \
        else a newly generated one. Sent on every response, errors included; equals \
        `correlation_id` in error bodies and `request_id` in log lines.",
    schema: || string().pattern(Some("^[A-Za-z0-9._-]{1,128}$")),
};

const RATE_LIMIT_HEADERS: [&HeaderDoc; 3] = [
    &HeaderDoc {
        name: "RateLimit-Limit",
        required: false,
        description: "Requests allowed per window for this route class and client IP.",
        schema: count,
    },
    &HeaderDoc {
        name: "RateLimit-Remaining",
        required: false,
        description: "Requests left in the current window.",
        schema: count,
    },
    &HeaderDoc {
        name: "RateLimit-Reset",
        required: false,
        description: "Seconds until the window frees a request.",
        schema: count,
    },
];

const RETRY_AFTER: HeaderDoc = HeaderDoc {
    name: "Retry-After",
    required: true,
    description: "Seconds to wait before trying again.",
    schema: || {
        ObjectBuilder::new()
            .schema_type(Type::Integer)
            .minimum(Some(1))
    },
};

const ALLOW: HeaderDoc = HeaderDoc {
    name: "Allow",
    required: true,
    description: "The methods this path accepts, comma-separated.",
    schema: || string().examples(["GET, HEAD, PUT, DELETE"]),
};

const WWW_AUTHENTICATE: HeaderDoc = HeaderDoc {
    name: "WWW-Authenticate",
    required: true,
    description: "`Bearer`, or `Bearer error=\"invalid_token\"` when a token was sent (RFC 6750).",
    schema: string,
};

/// Every header documented anywhere.
fn all_headers() -> impl Iterator<Item = &'static HeaderDoc> {
    [&X_REQUEST_ID, &RETRY_AFTER, &ALLOW, &WWW_AUTHENTICATE]
        .into_iter()
        .chain(RATE_LIMIT_HEADERS)
}

/// A route table whose rows and documentation disagree.
#[derive(Debug, thiserror::Error)]
pub enum DocError {
    #[error("the OpenAPI document of `{operation}`: {problem}")]
    Route {
        operation: &'static str,
        problem: &'static str,
    },
    #[error("serializing the OpenAPI document: {0}")]
    Json(#[from] serde_json::Error),
}

/// The document of `routes` as this configuration serves them, as JSON.
pub fn document(config: &Config, routes: &[Route]) -> Result<Bytes, DocError> {
    let json = serde_json::to_vec(&openapi(config, routes)?)?;
    let mut doc: Ordered = serde_json::from_slice(&json)?;
    mark_required_headers(&mut doc);
    Ok(serde_json::to_vec(&doc)?.into())
}

/// The document of `routes` as this configuration serves them: the
/// chaos-only ones only while `monitoring.chaos` is on, like the router.
/// [`document`] serializes it, with what utoipa's model cannot hold.
pub fn openapi(config: &Config, routes: &[Route]) -> Result<OpenApi, DocError> {
    let mut schemas = Schemas::new();
    let mut paths = Paths::new();
    for route in routes
        .iter()
        .filter(|r| config.monitoring.chaos || !r.chaos_only)
    {
        let operation = operation(route, config, &mut schemas)?;
        paths.add_path_operation(route.template, vec![method(route)?], operation);
    }
    let mut responses = ComponentsBuilder::new();
    for failure in Failure::ALL {
        responses = responses.response(failure.name(), failure.response(config, &mut schemas));
    }
    // What a new password may be is what this configuration enforces: this
    // replaces the schema with default limits the request types brought
    // (the last of a name wins).
    schemas.push((
        NewPassword::name().into_owned(),
        NewPassword::schema_for(&config.password).into(),
    ));
    let components = responses
        .schemas_from_iter(schemas)
        .security_scheme(
            "bearerAuth",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("JWT")
                    .description(Some(
                        "An access token from login or refresh. Tokens of a revoked session are \
                         refused at once (`AUTH004`).",
                    ))
                    .build(),
            ),
        )
        .security_scheme(
            "adminKey",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("ghk_…")
                    .description(Some(
                        "An admin key from `gatehouse admin-keys create` (`ghk_…`). The \
                         requirement names the scope the route needs: without it, 403 \
                         `AUTH011`; an unknown or revoked key, or a user's token, is 401 \
                         `AUTH002`.",
                    ))
                    .build(),
            ),
        )
        .security_scheme(
            "monitoringToken",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(if config.monitoring.required_token().is_some() {
                        "`monitoring.token`, which this server requires."
                    } else {
                        "`monitoring.token`; required only when it is configured (non-empty), \
                         which it is not on this server."
                    }))
                    .build(),
            ),
        )
        .build();
    Ok(OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("Gatehouse")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(INFO))
                .build(),
        )
        .servers(Some([Server::new("/")]))
        .tags(Some(Tag::ALL.map(|t| {
            TagBuilder::new()
                .name(t.name())
                .description(Some(t.description()))
                .build()
        })))
        .paths(paths)
        .components(Some(components))
        .build())
}

const INFO: &str = "Authentication service: registration, password login issuing short-lived \
    JWT access tokens and rotating refresh tokens, session management, and monitoring.\n\n\
    Every non-2xx response is `application/json` with the `Error` envelope. Every response \
    carries `X-Request-ID`. A path answers 404 `NOT001` if it does not exist and 405 `REQ004` \
    (with `Allow`) for a method it does not list; `HEAD` is answered wherever `GET` is. \
    Everything under `/api/v1/auth` and `/api/v1/users` is rate limited per client IP \
    (sliding window) and sends `RateLimit-Limit`, `RateLimit-Remaining`, `RateLimit-Reset`, \
    plus `Cache-Control: no-store`. All responses carry `X-Content-Type-Options: nosniff`, \
    `X-Frame-Options: DENY`, `Referrer-Policy: no-referrer` and \
    `Content-Security-Policy: default-src 'none'; frame-ancestors 'none'`.";

fn method(route: &Route) -> Result<HttpMethod, DocError> {
    Ok(match route.method {
        Method::GET => HttpMethod::Get,
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::PATCH => HttpMethod::Patch,
        Method::DELETE => HttpMethod::Delete,
        _ => return Err(route_error(route, "its method cannot be documented")),
    })
}

fn route_error(route: &Route, problem: &'static str) -> DocError {
    DocError::Route {
        operation: route.operation_id,
        problem,
    }
}

/// The `{name}` segment of a template, if it has one.
fn path_param(template: &str) -> Option<&str> {
    template
        .split('/')
        .find_map(|segment| segment.strip_prefix('{')?.strip_suffix('}'))
}

/// One route's operation: its row, derived; its [`Doc`], as written.
fn operation(
    route: &Route,
    config: &Config,
    schemas: &mut Schemas,
) -> Result<utoipa::openapi::path::Operation, DocError> {
    let doc = &route.doc;
    let mut op = OperationBuilder::new()
        .operation_id(Some(route.operation_id))
        .tag(doc.tag.name())
        .summary(Some(doc.summary))
        .description(Some(description(route, config)));

    match (path_param(route.template), &doc.param) {
        (Some(name), Some(param)) => {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .description(Some(param.description))
                    .schema(Some(param.schema.resolve(schemas))),
            );
        }
        (None, None) => {}
        _ => return Err(route_error(route, "its template and its `param` disagree")),
    }
    for param in doc.query {
        op = op.parameter(
            ParameterBuilder::new()
                .name(param.name)
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(param.description))
                .schema(Some(param.schema.resolve(schemas))),
        );
    }
    op = op.parameter(
        ParameterBuilder::new()
            .name(X_REQUEST_ID.name)
            .parameter_in(ParameterIn::Header)
            .required(Required::False)
            .description(Some(
                "Correlation id for this request. Kept when it is 1–128 characters of \
                 `[A-Za-z0-9._-]`; any other value is replaced by a generated one (the \
                 request is not refused).",
            ))
            .schema(Some(string()))
            .example(Some(json!(EXAMPLE_REQUEST_ID))),
    );

    match (route.body.accepted(), doc.request) {
        (Some(media_types), Some(shape)) => {
            let schema = shape.resolve(schemas);
            let required = match route.body {
                Body::OptionalJson => Required::False,
                _ => Required::True,
            };
            let mut body = RequestBodyBuilder::new().required(Some(required));
            for media_type in media_types {
                body = body.content(
                    *media_type,
                    ContentBuilder::new().schema(Some(schema.clone())).build(),
                );
            }
            op = op.request_body(Some(body.build()));
        }
        (None, None) => {}
        _ => {
            return Err(route_error(
                route,
                "its body kind and its `request` disagree",
            ));
        }
    }

    op = op.securities(Some(match route.guard {
        Guard::Open => vec![],
        Guard::User => vec![SecurityRequirement::new("bearerAuth", Vec::<String>::new())],
        Guard::Admin(scope) => vec![SecurityRequirement::new("adminKey", [scope.name()])],
        Guard::Monitoring => {
            let token = SecurityRequirement::new("monitoringToken", Vec::<String>::new());
            if config.monitoring.required_token().is_some() {
                vec![token]
            } else {
                vec![SecurityRequirement::default(), token]
            }
        }
    }));

    if doc.answers.is_empty() {
        return Err(route_error(route, "it documents no answer"));
    }
    let mut answered = BTreeSet::new();
    for answer in doc.answers {
        answered.insert(answer.status);
        op = op.response(
            answer.status.to_string(),
            self::answer(answer, route, schemas),
        );
    }
    for failure in failures(route) {
        if !answered.contains(&failure.status()) {
            op = op.response(
                failure.status().to_string(),
                Ref::from_response_name(failure.name()),
            );
        }
    }
    Ok(op.build())
}

/// The errors a route can answer with: its own, and those its row implies.
fn failures(route: &Route) -> BTreeSet<Failure> {
    let mut failures: BTreeSet<Failure> = route.doc.errors.iter().copied().collect();
    failures.extend([Failure::InternalError, Failure::ServiceUnavailable]);
    if route.guard != Guard::Open {
        failures.insert(Failure::Unauthorized);
    }
    if route.body != Body::None {
        failures.extend([
            Failure::BadRequest,
            Failure::RequestTimeout,
            Failure::PayloadTooLarge,
            Failure::UnsupportedMediaType,
            Failure::ValidationFailed,
        ]);
    }
    if route.rate.is_some() {
        failures.insert(Failure::TooManyRequests);
    }
    if path_param(route.template).is_some() || route.chaos_only {
        failures.insert(Failure::NotFound);
    }
    failures
}

/// The prose of an operation: its own, then what its row means for callers.
fn description(route: &Route, config: &Config) -> String {
    let mut text: Vec<String> = Vec::new();
    if !route.doc.description.is_empty() {
        text.push(route.doc.description.into());
    }
    if route.chaos_only {
        text.push(
            "Exists only while `monitoring.chaos` is true; otherwise it answers 404 `NOT001`."
                .into(),
        );
    }
    if route.body == Body::None && route.method != Method::GET {
        text.push("No request body.".into());
    }
    if route.body == Body::JsonOrForm {
        text.push(format!("Takes `{JSON}` or `{FORM}`."));
    }
    if route.guard == Guard::Monitoring {
        text.push(if config.monitoring.required_token().is_some() {
            "Needs `Authorization: Bearer <monitoring.token>`.".into()
        } else {
            "Needs `Authorization: Bearer <monitoring.token>` only when `monitoring.token` is \
             configured (it is not, on this server)."
                .into()
        });
    }
    text.push(match route.rate {
        Some(class) => {
            let window = config.rate_limit.routes.window(class);
            format!(
                "Rate limited per client IP: class `{}`, {} requests per {} s on this server.",
                class.name(),
                window.limit,
                window.window_ms / 1000
            )
        }
        None => "Never rate limited.".into(),
    });
    text.join(" ")
}

/// A documented answer, with the headers every answer of the route carries.
fn answer(answer: &Answer, route: &Route, schemas: &mut Schemas) -> Response {
    let mut response = ResponseBuilder::new()
        .description(answer.description)
        .header(X_REQUEST_ID.name, X_REQUEST_ID.build());
    if route.rate.is_some() {
        for header in RATE_LIMIT_HEADERS {
            response = response.header(header.name, header.build());
        }
    }
    let content = |media_type: &str, shape: Shape, schemas: &mut Schemas| {
        (
            media_type.to_owned(),
            ContentBuilder::new()
                .schema(Some(shape.resolve(schemas)))
                .build(),
        )
    };
    let content = match answer.content {
        Content::Empty => None,
        Content::Json(shape) => Some(content(JSON, shape, schemas)),
        Content::Text(shape) => Some(content("text/plain", shape, schemas)),
    };
    if let Some((media_type, content)) = content {
        response = response.content(media_type, content);
    }
    response.build()
}

/// JSON that keeps the order of object keys, as utoipa wrote them
/// (`serde_json::Value` sorts them unless its `preserve_order` feature is
/// on, which would change it for the whole workspace).
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Ordered {
    Object(IndexMap<String, Ordered>),
    Array(Vec<Ordered>),
    Scalar(Value),
}

impl Ordered {
    fn object(&mut self) -> Option<&mut IndexMap<String, Ordered>> {
        match self {
            Self::Object(map) => Some(map),
            _ => None,
        }
    }

    /// The object under `key`, if this is an object and that is one.
    fn get(&mut self, key: &str) -> Option<&mut IndexMap<String, Ordered>> {
        self.object()?.get_mut(key)?.object()
    }
}

/// utoipa's `Header` has no `required`: the headers sent on every response
/// they are documented on get it in the serialized document.
fn mark_required_headers(doc: &mut Ordered) {
    let required: BTreeSet<&str> = all_headers()
        .filter(|h| h.required)
        .map(|h| h.name)
        .collect();
    let mut responses: Vec<&mut Ordered> = Vec::new();
    let Some(doc) = doc.object() else {
        return;
    };
    for (key, part) in doc.iter_mut() {
        match (key.as_str(), part.object()) {
            ("paths", Some(paths)) => {
                let operations = paths
                    .values_mut()
                    .filter_map(Ordered::object)
                    .flat_map(|item| item.values_mut());
                for operation in operations {
                    if let Some(answers) = operation.get("responses") {
                        responses.extend(answers.values_mut());
                    }
                }
            }
            ("components", Some(components)) => {
                if let Some(shared) = components.get_mut("responses").and_then(Ordered::object) {
                    responses.extend(shared.values_mut());
                }
            }
            _ => {}
        }
    }
    for response in responses {
        let Some(headers) = response.get("headers") else {
            continue;
        };
        for (name, header) in headers.iter_mut() {
            if let (true, Some(header)) = (required.contains(name.as_str()), header.object()) {
                header.insert("required".into(), Ordered::Scalar(Value::Bool(true)));
            }
        }
    }
}

/// The Prometheus text exposition format.
pub struct PrometheusText;

impl PartialSchema for PrometheusText {
    fn schema() -> RefOr<Schema> {
        string()
            .description(Some("Prometheus text exposition format 0.0.4."))
            .examples([
                "# TYPE gatehouse_registrations_total counter\ngatehouse_registrations_total 3\n",
            ])
            .into()
    }
}

/// An OpenAPI 3.1 document, such as this one.
pub struct OpenApiDocument;

impl PartialSchema for OpenApiDocument {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::Object)
            .description(Some("An OpenAPI 3.1 document."))
            .into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::routes::ROUTES;

    fn doc(config: &Config) -> Value {
        serde_json::from_slice(&document(config, ROUTES).unwrap()).unwrap()
    }

    fn codes_of(schema: &RefOr<Schema>) -> Vec<String> {
        let value = serde_json::to_value(schema).unwrap();
        value["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap().to_owned())
            .collect()
    }

    #[test]
    fn every_route_documents() {
        let mut chaos = Config::default();
        chaos.monitoring.chaos = true;
        let on = doc(&chaos);
        let off = doc(&Config::default());
        for route in ROUTES {
            let method = route.method.as_str().to_lowercase();
            let documented = |d: &Value| !d["paths"][route.template][&method].is_null();
            assert!(documented(&on), "{}", route.operation_id);
            assert_eq!(
                documented(&off),
                !route.chaos_only,
                "{}",
                route.operation_id
            );
            assert_eq!(
                on["paths"][route.template][&method]["operationId"],
                route.operation_id
            );
        }
    }

    #[test]
    fn error_codes_are_exactly_those_the_mapping_answers_with() {
        let config = Config::default();
        let mut sampled = BTreeSet::new();
        for failure in Failure::ALL {
            for (_, error) in failure.samples(&config) {
                let parts = error.parts();
                assert_eq!(parts.status.as_u16(), failure.status(), "{}", parts.code);
                sampled.insert(parts.code.to_owned());
            }
        }
        let listed = codes_of(&ErrorCode::schema());
        assert_eq!(listed.iter().cloned().collect::<BTreeSet<_>>(), sampled);
        let described = serde_json::to_value(ErrorCode::schema()).unwrap()["description"]
            .as_str()
            .unwrap()
            .to_owned();
        for code in &listed {
            assert!(
                described.contains(&format!("`{code}`")),
                "{code} is not described"
            );
        }
    }

    #[test]
    fn every_reference_resolves() {
        fn walk(doc: &Value, at: &Value) {
            match at {
                Value::Object(map) => {
                    if let Some(Value::String(r)) = map.get("$ref") {
                        let pointer = r.strip_prefix('#').unwrap();
                        assert!(doc.pointer(pointer).is_some(), "{r}");
                    }
                    map.values().for_each(|v| walk(doc, v));
                }
                Value::Array(items) => items.iter().for_each(|v| walk(doc, v)),
                _ => {}
            }
        }
        let d = doc(&Config::default());
        walk(&d, &d);
    }

    #[test]
    fn the_row_gives_security_limits_and_errors() {
        let d = doc(&Config::default());
        let register = &d["paths"]["/api/v1/auth/register"]["post"];
        assert_eq!(register["security"], json!([]));
        for status in [
            "400", "408", "409", "413", "415", "422", "429", "500", "503",
        ] {
            assert!(register["responses"][status].is_object(), "{status}");
        }
        assert!(register["responses"]["401"].is_null());
        let created = &register["responses"]["201"];
        assert_eq!(created["headers"]["X-Request-ID"]["required"], true);
        assert!(created["headers"]["RateLimit-Limit"].is_object());
        assert!(
            register["description"]
                .as_str()
                .unwrap()
                .contains("class `register`, 3 requests per 60 s")
        );
        let login = &d["paths"]["/api/v1/auth/login"]["post"]["requestBody"]["content"];
        assert!(login[JSON].is_object() && login[FORM].is_object());

        let me = &d["paths"]["/api/v1/users/me"]["get"];
        assert_eq!(me["security"], json!([{"bearerAuth": []}]));
        assert_eq!(
            me["responses"]["401"]["$ref"],
            "#/components/responses/Unauthorized"
        );
        assert!(me["requestBody"].is_null() && me["responses"]["400"].is_null());

        let health = &d["paths"]["/api/v1/monitoring/health"]["get"];
        assert_eq!(
            health["responses"]["503"]["content"][JSON]["schema"]["$ref"],
            "#/components/schemas/Health"
        );
        assert!(health["responses"]["429"].is_null());
        assert!(health["responses"]["200"]["headers"]["RateLimit-Limit"].is_null());

        let breakers = &d["paths"]["/api/v1/monitoring/circuit-breakers"]["get"];
        assert_eq!(breakers["security"], json!([{}, {"monitoringToken": []}]));
        let unauthorized = &d["components"]["responses"]["Unauthorized"];
        assert_eq!(
            unauthorized["headers"]["WWW-Authenticate"]["required"],
            true
        );
        let throttled = &d["components"]["responses"]["TooManyRequests"];
        assert_eq!(throttled["headers"]["Retry-After"]["required"], true);
        assert_eq!(
            throttled["content"][JSON]["examples"]["RATE001"]["value"]["error"]["message"],
            "Rate limit exceeded"
        );
    }

    #[test]
    fn a_configured_monitoring_token_is_required() {
        let mut config = Config::default();
        config.monitoring.token = Some("a-monitoring-token-long-enough".to_owned().into());
        let d = doc(&config);
        assert_eq!(
            d["paths"]["/metrics"]["get"]["security"],
            json!([{"monitoringToken": []}])
        );
    }

    #[test]
    fn password_limits_are_the_configured_ones() {
        let mut config = Config::default();
        config.password.min_length = 12;
        config.password.max_length = 64;
        let d = doc(&config);
        let new_password = &d["components"]["schemas"]["NewPassword"];
        assert_eq!(new_password["minLength"], 12);
        assert_eq!(new_password["maxLength"], 64);
        assert_eq!(new_password["format"], "password");
        for (schema, field) in [
            ("RegisterRequest", "password"),
            ("ChangePasswordRequest", "new_password"),
        ] {
            assert_eq!(
                d["components"]["schemas"][schema]["properties"][field]["$ref"],
                "#/components/schemas/NewPassword"
            );
        }
    }
}
