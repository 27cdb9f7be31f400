//! `/api/v1/monitoring/*`, `/metrics` and the OpenAPI document: what
//! operators, Prometheus and client generators read.

use gatehouse_actors::services::operations::HealthStatus;
use gatehouse_actors::system::ActorKind;
use hyper::StatusCode;

use crate::error::ApiError;
use crate::http::{AppState, Ctx, HttpResponse, ReadRequest, empty, json, respond, rfc3339};
use crate::wire::{self, ActorBody, BreakerBody, Logins, MetricsSummary};

pub async fn health(
    state: &AppState,
    _req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let ops = &state.gatehouse.operations;
    let status = ops.health();
    let body = wire::Health {
        status: status.name(),
        timestamp: rfc3339(state.clock.now_ms()),
        version: env!("CARGO_PKG_VERSION"),
        uptime_s: ops.uptime().as_secs(),
        circuit_breakers: ops
            .breakers()
            .into_iter()
            .map(|(id, b)| (id.name(), b.state.name()))
            .collect(),
        actors: ops
            .actors()
            .into_iter()
            .map(|(kind, report)| (kind.name(), report.status.name()))
            .collect(),
    };
    let code = if status == HealthStatus::Unhealthy {
        StatusCode::SERVICE_UNAVAILABLE
    } else {
        StatusCode::OK
    };
    json(code, &body)
}

pub async fn circuit_breakers(
    state: &AppState,
    _req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let body = wire::CircuitBreakers {
        circuit_breakers: state
            .gatehouse
            .operations
            .breakers()
            .iter()
            .map(|(id, snapshot)| (id.name(), BreakerBody::from(snapshot)))
            .collect(),
    };
    json(StatusCode::OK, &body)
}

pub async fn summary(
    state: &AppState,
    _req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let tally = state.gatehouse.operations.tally().await?;
    let stats = &state.stats;
    let body = MetricsSummary {
        uptime_s: state.started.elapsed().as_secs(),
        requests_total: stats.requests_total(),
        latency_ms: stats.latency(),
        logins: Logins {
            success: tally.login_successes,
            failure: tally.login_failures,
        },
        registrations_total: tally.registrations,
        rate_limited_total: stats.rate_limited_total(),
    };
    json(StatusCode::OK, &body)
}

pub async fn actors(
    state: &AppState,
    _req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let actors = state
        .gatehouse
        .operations
        .actors()
        .iter()
        .map(|(kind, report)| (kind.name(), ActorBody::from(report)))
        .collect();
    json(StatusCode::OK, &wire::Actors { actors })
}

/// Makes the named actor fail (the route exists only with `monitoring.chaos`).
pub async fn kill(state: &AppState, _req: ReadRequest, ctx: Ctx) -> Result<HttpResponse, ApiError> {
    let kind = ctx
        .param
        .as_deref()
        .and_then(ActorKind::from_name)
        .ok_or(ApiError::NotFound)?;
    state.gatehouse.operations.kill(kind).await?;
    tracing::warn!(
        event = "actor.killed",
        actor = kind.name(),
        "actor killed through the chaos route"
    );
    Ok(empty(StatusCode::ACCEPTED))
}

pub async fn prometheus(
    state: &AppState,
    _req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    state.process.collect();
    Ok(respond(
        StatusCode::OK,
        "text/plain; version=0.0.4; charset=utf-8",
        state.prometheus.render(),
    ))
}

/// The OpenAPI 3.1 document of the whole API.
pub async fn openapi(
    state: &AppState,
    _req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    Ok(respond(
        StatusCode::OK,
        "application/json",
        state.openapi.clone(),
    ))
}
