//! `/api/v1/monitoring/*`, `/metrics` and the OpenAPI document: what
//! operators, Prometheus and client generators read.

use std::collections::BTreeMap;

use gatehouse_actors::HealthStatus;
use gatehouse_actors::system::ActorKind;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{HeaderMap, StatusCode};
use secrecy::ExposeSecret;
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::bearer;
use crate::error::ApiError;
use crate::http::{AppState, HttpResponse, empty, json, now_rfc3339};

/// Refuses a request without the monitoring token, when one is configured.
/// The comparison takes the same time wherever the first difference is.
pub fn check_token(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.monitoring_token else {
        return Ok(());
    };
    let given = bearer(headers)?;
    if bool::from(given.as_bytes().ct_eq(expected.expose_secret().as_bytes())) {
        Ok(())
    } else {
        Err(gatehouse_actors::Error::InvalidToken.into())
    }
}

#[derive(Serialize)]
struct Health {
    status: HealthStatus,
    timestamp: String,
    version: &'static str,
    uptime_s: u64,
    circuit_breakers: BTreeMap<&'static str, &'static str>,
    actors: BTreeMap<&'static str, gatehouse_actors::supervisor::ActorStatus>,
}

pub fn health(state: &AppState) -> Result<HttpResponse, ApiError> {
    let g = &state.gatehouse;
    let status = g.health();
    let body = Health {
        status,
        timestamp: now_rfc3339(),
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: g.uptime().as_secs(),
        circuit_breakers: g
            .breakers()
            .into_iter()
            .map(|(id, b)| (id.name(), b.state.name()))
            .collect(),
        actors: g
            .actors()
            .into_iter()
            .map(|(kind, report)| (kind.name(), report.status))
            .collect(),
    };
    let code = if status == HealthStatus::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json(code, &body)
}

#[derive(Serialize)]
struct CircuitBreakers {
    circuit_breakers: BTreeMap<&'static str, gatehouse_actors::breaker::BreakerSnapshot>,
}

pub fn circuit_breakers(state: &AppState) -> Result<HttpResponse, ApiError> {
    let body = CircuitBreakers {
        circuit_breakers: state
            .gatehouse
            .breakers()
            .into_iter()
            .map(|(id, snapshot)| (id.name(), snapshot))
            .collect(),
    };
    json(StatusCode::OK, &body)
}

pub async fn summary(state: &AppState) -> Result<HttpResponse, ApiError> {
    json(StatusCode::OK, &state.gatehouse.metrics_summary().await?)
}

#[derive(Serialize)]
struct Actors {
    actors: BTreeMap<&'static str, gatehouse_actors::supervisor::ActorReport>,
}

pub fn actors(state: &AppState) -> Result<HttpResponse, ApiError> {
    let actors = state
        .gatehouse
        .actors()
        .into_iter()
        .map(|(kind, report)| (kind.name(), report))
        .collect();
    json(StatusCode::OK, &Actors { actors })
}

/// Makes the named actor fail (the route exists only with `monitoring.chaos`).
pub fn kill(state: &AppState, name: Option<String>) -> Result<HttpResponse, ApiError> {
    let kind = name
        .as_deref()
        .and_then(ActorKind::from_name)
        .ok_or(ApiError::NotFound)?;
    state.gatehouse.kill(kind)?;
    tracing::warn!(
        event = "actor.killed",
        actor = kind.name(),
        "actor killed through the chaos route"
    );
    Ok(empty(StatusCode::ACCEPTED))
}

pub fn prometheus(state: &AppState) -> Result<HttpResponse, ApiError> {
    state.process.collect();
    Ok(body(
        state.prometheus.render(),
        "text/plain; version=0.0.4; charset=utf-8",
    ))
}

/// The OpenAPI 3.1 document of the whole API.
pub fn openapi(state: &AppState) -> Result<HttpResponse, ApiError> {
    Ok(body(state.openapi.clone(), "application/json"))
}

fn body(text: impl Into<bytes::Bytes>, content_type: &'static str) -> HttpResponse {
    let mut response = hyper::Response::new(http_body_util::Full::new(text.into()));
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
