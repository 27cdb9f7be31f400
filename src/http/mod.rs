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
pub mod headers;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_actors::{Gatehouse, RateLimitInfo};
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
use crate::handlers;
use crate::router::{Endpoint, Matched, Router, UNMATCHED};
use headers::Policy;

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
}

/// What handlers know about the request besides its body.
pub struct Ctx {
    pub request_id: String,
    pub client: std::net::IpAddr,
    pub rate: Option<RateLimitInfo>,
}

impl App {
    pub fn new(
        config: &Config,
        gatehouse: Gatehouse,
        prometheus: PrometheusHandle,
    ) -> Result<Self, String> {
        Ok(Self {
            inner: Arc::new(AppState {
                gatehouse,
                router: Router::new(config.monitoring.chaos).map_err(|e| e.to_string())?,
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
                openapi: crate::openapi::document(config).map_err(|e| e.to_string())?,
            }),
        })
    }

    /// Answers one request; never fails, every error becomes a contract response.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> HttpResponse {
        let started = Instant::now();
        let deadline = tokio::time::Instant::from_std(started) + self.inner.request_timeout;
        let state = &*self.inner;
        let head = req.method() == Method::HEAD;
        let token_sent = req.headers().contains_key(hyper::header::AUTHORIZATION);
        let request_id = headers::request_id(req.headers());
        let method_label = method_label(req.method());
        let matched = state.router.route(req.method(), req.uri().path());
        let template = match &matched {
            Matched::Found { template, .. } | Matched::MethodNotAllowed { template, .. } => {
                template
            }
            Matched::NotFound => UNMATCHED,
        };
        let span = tracing::info_span!("request", request_id = %request_id,
            method = method_label, route = template);
        let origin = state.policy.allowed_origin(req.headers()).cloned();
        let path = req.uri().path();
        let api = path.starts_with("/api/v1/auth") || path.starts_with("/api/v1/users");

        let mut ctx = Ctx {
            request_id,
            client: client_ip::client_ip(peer.ip(), req.headers(), &state.trusted_proxies),
            rate: None,
        };
        let outcome = async {
            match matched {
                Matched::NotFound => Err(ApiError::NotFound),
                Matched::MethodNotAllowed { allow, .. } => {
                    match preflight(&req, origin.as_ref(), allow) {
                        Some(response) => Ok(response),
                        None => Err(ApiError::MethodNotAllowed(allow.to_owned())),
                    }
                }
                Matched::Found {
                    endpoint, param, ..
                } => {
                    let work = self.dispatch(endpoint, template, req, param, deadline, &mut ctx);
                    tokio::time::timeout_at(deadline, work)
                        .await
                        .unwrap_or(Err(ApiError::Timeout))
                }
            }
        }
        .instrument(span.clone())
        .await;

        let mut response =
            outcome.unwrap_or_else(|e| error_response(&e, &ctx.request_id, token_sent, &span));
        if head {
            without_body(&mut response);
        }
        state.policy.apply(
            response.headers_mut(),
            &ctx.request_id,
            origin,
            api,
            ctx.rate,
        );
        let status = response.status().as_u16();
        let latency = started.elapsed();
        state
            .gatehouse
            .metrics()
            .request(method_label, template, status, latency);
        span.in_scope(|| {
            tracing::info!(
                status,
                latency_ms = latency.as_secs_f64() * 1000.0,
                "request completed"
            )
        });
        response
    }

    async fn dispatch(
        &self,
        endpoint: Endpoint,
        template: &'static str,
        req: Request<Incoming>,
        param: Option<String>,
        deadline: tokio::time::Instant,
        ctx: &mut Ctx,
    ) -> Result<HttpResponse, ApiError> {
        let state = &*self.inner;
        if endpoint.monitoring_protected() {
            handlers::monitoring::check_token(state, req.headers())?;
        }
        if let Some(class) = endpoint.rate_class() {
            match state.gatehouse.check_rate(class, ctx.client).await {
                Ok(info) => ctx.rate = info,
                Err(gatehouse_actors::Error::RateLimited(info)) => {
                    ctx.rate = Some(info);
                    state.gatehouse.metrics().rate_limited(template);
                    return Err(gatehouse_actors::Error::RateLimited(info).into());
                }
                Err(e) => return Err(e.into()),
            }
        }
        let req = match endpoint.body() {
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
        use handlers::{auth, users};
        match endpoint {
            Endpoint::Register => auth::register(state, &req).await,
            Endpoint::Login => auth::login(state, &req, ctx).await,
            Endpoint::Refresh => auth::refresh(state, &req).await,
            Endpoint::Logout => auth::logout(state, &req).await,
            Endpoint::LogoutAll => auth::logout_all(state, &req).await,
            Endpoint::GetMe => users::me(state, &req).await,
            Endpoint::UpdateMe => users::update(state, &req).await,
            Endpoint::DeleteMe => users::deactivate(state, &req).await,
            Endpoint::ChangePassword => users::change_password(state, &req).await,
            Endpoint::ListSessions => users::sessions(state, &req).await,
            Endpoint::DeleteSession => users::delete_session(state, &req, param).await,
            Endpoint::Health => handlers::monitoring::health(state),
            Endpoint::CircuitBreakers => handlers::monitoring::circuit_breakers(state),
            Endpoint::MetricsSummary => handlers::monitoring::summary(state).await,
            Endpoint::Actors => handlers::monitoring::actors(state),
            Endpoint::KillActor => handlers::monitoring::kill(state, param),
            Endpoint::Prometheus => handlers::monitoring::prometheus(state),
            Endpoint::OpenApi => handlers::monitoring::openapi(state),
        }
    }
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
            timestamp: now_rfc3339(),
            fields: parts.fields,
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

pub fn now_rfc3339() -> String {
    use time::format_description::well_known::Rfc3339;
    time::OffsetDateTime::now_utc()
        .replace_nanosecond(0)
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
        .format(&Rfc3339)
        .unwrap_or_default()
}
