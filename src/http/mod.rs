//! The request pipeline: from a hyper request to a finished response.
//!
//! In order: request id, route match (404/405), CORS preflight, monitoring
//! token, rate limit, the request body (media type, size, and the deadline:
//! a body that does not arrive in time is the client's fault, 408), the
//! endpoint's handler under the whole-request deadline, then the error
//! envelope, security and CORS headers, one metrics observation and one log
//! line. `HEAD` gets what `GET` would, without the body. Handlers live in
//! [`crate::handlers`] and receive the request with its body already read.

pub mod body;
pub mod client_ip;
pub mod guard;
pub mod headers;
pub mod router;
pub mod stats;

use std::collections::HashSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use gatehouse_actors::clock::Stopwatch;
use gatehouse_actors::model::AdminKey;
use gatehouse_actors::{Gatehouse, Principal, RateLimitInfo};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderValue, RETRY_AFTER};
use hyper::{Method, Request, Response, StatusCode};
use ipnet::IpNet;
use metrics_exporter_prometheus::PrometheusHandle;
use secrecy::SecretString;
use serde::Serialize;
use tracing::Instrument;

use crate::config::Config;
use crate::error::{ApiError, Body, Envelope};
use headers::Policy;
use router::{Guard, Matched, Route, Router, UNMATCHED};
use stats::RequestStats;

pub type HttpResponse = Response<Full<Bytes>>;

/// Shared by every connection.
#[derive(Clone)]
pub struct App {
    inner: Arc<AppState>,
}

pub struct AppState {
    pub gatehouse: Gatehouse,
    pub router: Router,
    pub prometheus: PrometheusHandle,
    /// Refreshes the `process_*` series at each scrape.
    pub process: metrics_process::Collector,
    pub policy: Policy,
    pub max_body_bytes: usize,
    pub request_timeout: Duration,
    pub trusted_proxies: Vec<IpNet>,
    pub monitoring_token: Option<SecretString>,
    /// The OpenAPI document, rendered once for this configuration.
    pub openapi: Bytes,
    /// The RFC 8414 metadata document, rendered once.
    pub metadata: Bytes,
    /// The pages email links open.
    pub pages: crate::pages::Pages,
    pub stats: RequestStats,
    pub started: Stopwatch,
    /// The clock the services read, for the timestamps of answers.
    pub clock: gatehouse_actors::clock::SharedClock,
}

/// What a handler knows about its request besides the request itself.
pub struct Ctx {
    pub client: IpAddr,
    /// Who the bearer token speaks for, on routes guarded for users.
    pub principal: Option<Principal>,
    /// The admin key, on admin routes.
    pub admin: Option<AdminKey>,
    /// The `{id}` or `{name}` segment, for routes that have one.
    pub param: Option<String>,
}

impl Ctx {
    /// The caller of a route guarded for users.
    pub fn principal(&self) -> Result<&Principal, ApiError> {
        self.principal
            .as_ref()
            .ok_or(ApiError::Domain(gatehouse_actors::Error::InvalidToken))
    }
}

impl App {
    pub fn new(
        config: &Config,
        routes: &'static [Route],
        gatehouse: Gatehouse,
        prometheus: PrometheusHandle,
    ) -> Result<Self, String> {
        Ok(Self {
            inner: Arc::new(AppState {
                // The pages answer HTML, not the API's JSON: the document leaves them out.
                router: Router::new(
                    routes.iter().chain(crate::routes::PAGES),
                    config.monitoring.chaos,
                )
                .map_err(|e| e.to_string())?,
                prometheus,
                process: metrics_process::Collector::default(),
                policy: Policy {
                    hsts: config.security.hsts,
                    cors_origins: config
                        .security
                        .cors_allowed_origins
                        .iter()
                        .cloned()
                        .collect::<HashSet<_>>(),
                },
                max_body_bytes: config.server.max_body_bytes,
                request_timeout: Duration::from_millis(config.server.request_timeout_ms),
                trusted_proxies: config.server.trusted_proxies.clone(),
                monitoring_token: config
                    .monitoring
                    .required_token()
                    .map(|t| SecretString::from(t.to_owned())),
                openapi: crate::openapi::document(config, routes).map_err(|e| e.to_string())?,
                metadata: metadata(config)?,
                pages: crate::pages::Pages::new(
                    gatehouse.recovery.mail.policy.product.clone(),
                    config.password.min_length,
                    config.password.max_length,
                )?,
                stats: RequestStats::default(),
                started: Stopwatch::start(),
                clock: std::sync::Arc::clone(&gatehouse.operations.clock),
                gatehouse,
            }),
        })
    }

    /// Answers one request; never fails, every error becomes a contract response.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
        let watch = Stopwatch::start();
        let state = &*self.inner;
        let deadline = gatehouse_actors::clock::monotonic() + state.request_timeout;
        let head = req.method() == Method::HEAD;
        let token_sent = req.headers().contains_key(hyper::header::AUTHORIZATION);
        let request_id = headers::request_id(req.headers());
        let method_label = method_label(req.method());
        let matched = state.router.route(req.method(), req.uri().path());
        let template = match &matched {
            Matched::Found { route, .. } => route.template,
            Matched::MethodNotAllowed { template, .. } => template,
            Matched::NotFound => UNMATCHED,
        };
        let span = tracing::info_span!("request", request_id = %request_id,
            method = method_label, route = template);
        let origin = state.policy.allowed_origin(req.headers()).cloned();
        let path = req.uri().path();
        let api = ["/api/v1/auth", "/api/v1/users", "/api/v1/admin"]
            .iter()
            .any(|prefix| path.starts_with(prefix));
        let client = client_ip::client_ip(peer.ip(), req.headers(), &state.trusted_proxies);

        let mut rate = None;
        let context = gatehouse_actors::audit::Context {
            request_id: request_id.clone(),
            ip: client,
        };
        let outcome = context
            .scope(async {
                match matched {
                    Matched::NotFound => Err(ApiError::NotFound),
                    Matched::MethodNotAllowed { allow, .. } => {
                        match preflight(&req, origin.as_ref(), allow) {
                            Some(response) => Ok(response),
                            None => Err(ApiError::MethodNotAllowed(allow.to_owned())),
                        }
                    }
                    Matched::Found { route, param } => {
                        // On the heap: the state of every route's handler is
                        // several KB, which each future wrapping it (the
                        // timeout, the audit scope, the span, hyper's slot for
                        // the request in flight) would otherwise copy again.
                        let work =
                            Box::pin(self.dispatch(route, req, param, client, deadline, &mut rate));
                        tokio::time::timeout_at(deadline, work)
                            .await
                            .unwrap_or(Err(ApiError::Timeout))
                    }
                }
            })
            .instrument(span.clone())
            .await;

        let mut response = outcome.unwrap_or_else(|e| {
            let now = state.clock.now_ms();
            let failed = error_response(&e, &request_id, token_sent, &span, now);
            // A page answers HTML whatever went wrong (a limit, a method).
            if crate::routes::PAGES.iter().any(|r| r.template == template) {
                state.pages.failure(&failed)
            } else {
                failed
            }
        });
        if head {
            without_body(&mut response);
        }
        state
            .policy
            .apply(response.headers_mut(), &request_id, origin, api, rate);
        let status = response.status().as_u16();
        let latency = watch.elapsed();
        state.stats.record(method_label, template, status, latency);
        span.in_scope(|| {
            tracing::info!(
                status,
                latency_ms = latency.as_secs_f64() * 1000.0,
                "request completed"
            )
        });
        response
    }

    /// The route's guard, its rate limit, its body, then its handler.
    async fn dispatch(
        &self,
        route: &'static Route,
        req: Request<Incoming>,
        param: Option<String>,
        client: IpAddr,
        deadline: tokio::time::Instant,
        rate: &mut Option<RateLimitInfo>,
    ) -> Result<HttpResponse, ApiError> {
        let state = &*self.inner;
        if route.guard == Guard::Monitoring {
            guard::monitoring_token(state, req.headers())?;
        }
        if let Some(class) = route.rate {
            match state.gatehouse.edge.check_rate(class, client).await {
                Ok(info) => *rate = info,
                Err(gatehouse_actors::Error::RateLimited(info)) => {
                    *rate = Some(info);
                    state.stats.rate_limited(route.template);
                    return Err(gatehouse_actors::Error::RateLimited(info).into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        let skipped = route.body == router::Body::OptionalJson && body::absent(&req);
        let req = match route.body.accepted().filter(|_| !skipped) {
            Some(accepted) => {
                let (parts, incoming) = req.into_parts();
                body::expect_media_type(&parts.headers, accepted)?;
                let read = body::read(incoming, &parts.headers, state.max_body_bytes);
                let bytes = tokio::time::timeout_at(deadline, read)
                    .await
                    .map_err(|_| ApiError::BodyTimeout)??;
                Request::from_parts(parts, bytes)
            }
            None => req.map(|_| Bytes::new()),
        };
        let (principal, admin) = match route.guard {
            Guard::User => (Some(guard::user(state, req.headers()).await?), None),
            Guard::Admin(scope) => (None, Some(guard::admin(state, req.headers(), scope).await?)),
            Guard::Open | Guard::Monitoring => (None, None),
        };
        let ctx = Ctx {
            client,
            principal,
            admin,
            param,
        };
        (route.handler)(state, req, ctx).await
    }
}

/// The RFC 8414 document: where a client finds the token endpoint and the keys.
fn metadata(config: &Config) -> Result<Bytes, String> {
    let base = crate::config::public_url(&config.server.public_url).unwrap_or_default();
    let document = crate::wire::AuthorizationServer {
        issuer: config.auth.issuer.clone(),
        token_endpoint: format!("{base}/api/v1/auth/login"),
        jwks_uri: format!("{base}/.well-known/jwks.json"),
        introspection_endpoint: format!("{base}/api/v1/admin/introspect"),
        grant_types_supported: vec!["password", "refresh_token"],
        response_types_supported: Vec::new(),
        token_endpoint_auth_methods_supported: vec!["none"],
        token_signing_alg_values_supported: vec![config.auth.signing_algorithm.name()],
    };
    serde_json::to_vec(&document)
        .map(Bytes::from)
        .map_err(|e| e.to_string())
}

/// The request as handlers see it: its body already read.
pub type ReadRequest = Request<Bytes>;

/// What `HEAD` answers: the `GET` response's status and headers, with the
/// length of the body it would have had, and no body.
fn without_body(response: &mut HttpResponse) {
    use hyper::body::Body as _;
    let length = response.body().size_hint().exact().unwrap_or(0);
    response
        .headers_mut()
        .insert(hyper::header::CONTENT_LENGTH, length.into());
    *response.body_mut() = Full::new(Bytes::new());
}

/// A CORS preflight from an allowed origin: 204 with what may be sent.
fn preflight(
    req: &Request<Incoming>,
    origin: Option<&HeaderValue>,
    allow: &str,
) -> Option<HttpResponse> {
    use hyper::header as h;
    if req.method() != Method::OPTIONS
        || origin.is_none()
        || !req.headers().contains_key(h::ACCESS_CONTROL_REQUEST_METHOD)
    {
        return None;
    }
    let mut response = empty(StatusCode::NO_CONTENT);
    let headers = response.headers_mut();
    headers.insert(
        h::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_str(allow).ok()?,
    );
    headers.insert(
        h::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(headers::ALLOWED_REQUEST_HEADERS),
    );
    headers.insert(h::ACCESS_CONTROL_MAX_AGE, HeaderValue::from_static("600"));
    Some(response)
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        Method::HEAD => "HEAD",
        _ => "OTHER",
    }
}

pub fn empty(status: StatusCode) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = status;
    response
}

/// A JSON response; serializing our own types cannot fail, but if it did it is a 500.
pub fn json<T: Serialize>(status: StatusCode, value: &T) -> Result<HttpResponse, ApiError> {
    let body = serde_json::to_vec(value)
        .map_err(|e| gatehouse_actors::Error::Internal(format!("serializing a response: {e}")))?;
    Ok(json_bytes(status, body))
}

fn json_bytes(status: StatusCode, body: Vec<u8>) -> HttpResponse {
    respond(status, "application/json", body)
}

/// A response with a body of the given media type.
pub fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> HttpResponse {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    response
}

/// The contract's error envelope. Server-side failures are logged with their
/// inner error here, and only here. A 401 says how to authenticate (RFC 6750),
/// and that the token sent was no good when one was.
fn error_response(
    error: &ApiError,
    request_id: &str,
    token_sent: bool,
    span: &tracing::Span,
    now_ms: i64,
) -> HttpResponse {
    let parts = error.parts();
    if parts.status.is_server_error() {
        span.in_scope(|| tracing::error!(error = %error, code = parts.code, "request failed"));
    }
    let envelope = Envelope {
        error: Body {
            code: parts.code,
            message: parts.message,
            details: parts.details.as_deref(),
            correlation_id: request_id,
            timestamp: rfc3339(now_ms),
            fields: parts.fields,
            mfa_token: parts.mfa_token,
            methods: parts.mfa_token.map(|_| crate::error::MFA_METHODS),
        },
    };
    let body = serde_json::to_vec(&envelope).unwrap_or_else(|_| {
        br#"{"error":{"code":"SVC002","message":"Internal server error"}}"#.to_vec()
    });
    let mut response = json_bytes(parts.status, body);
    let headers = response.headers_mut();
    if let Some(seconds) = parts.retry_after_s {
        headers.insert(RETRY_AFTER, seconds.into());
    }
    if let Some(allow) = parts.allow.and_then(|a| HeaderValue::from_str(a).ok()) {
        headers.insert(hyper::header::ALLOW, allow);
    }
    if parts.status == StatusCode::UNAUTHORIZED {
        let challenge = if token_sent {
            r#"Bearer error="invalid_token""#
        } else {
            "Bearer"
        };
        headers.insert(
            hyper::header::WWW_AUTHENTICATE,
            HeaderValue::from_static(challenge),
        );
    }
    response
}

/// A millisecond timestamp as RFC 3339 UTC, to the second.
pub fn rfc3339(ms: i64) -> String {
    use time::format_description::well_known::Rfc3339;
    gatehouse_actors::clock::datetime(ms)
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&Rfc3339)
        .unwrap_or_default()
}
