//! `/api/v1/monitoring/*` and `/metrics`: what operators and Prometheus read.

use std::collections::BTreeMap;

use gatehouse_actors::HealthStatus;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::{HeaderMap, StatusCode};
use secrecy::ExposeSecret;
use serde::Serialize;
use subtle::ConstantTimeEq;

use super::bearer;
use crate::error::ApiError;
use crate::http::{AppState, HttpResponse, json, now_rfc3339};

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

pub fn prometheus(state: &AppState) -> Result<HttpResponse, ApiError> {
    let mut response = hyper::Response::new(http_body_util::Full::new(bytes::Bytes::from(
        state.prometheus.render(),
    )));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    Ok(response)
}
