//! # Gatehouse
//!
//! An authentication service: register, log in, hold sessions, change
//! credentials. This crate is the HTTP front end and the binary; the actors
//! that do the work live in the `gatehouse-actors` crate.
//!
//! ## Layout
//!
//! * [`config`]: typed configuration, file + environment overlay, validation.
//! * [`commands`]: `gatehouse keys …`, run against the configured database.
//! * [`server`]: accept loop, connection limits and timeouts, graceful shutdown.
//! * [`routes`]: the route table, one row per route.
//! * [`http`]: the request pipeline (guards, rate limits, bodies, headers,
//!   client IP, request metrics) and the router; it knows routes only as rows.
//! * [`handlers`]: one module per route group, thin.
//! * [`wire`]: the JSON shapes requests carry and answers hold.
//! * [`error`]: every failure and its contract code, mapped in one place.
//! * [`openapi`]: the OpenAPI document, as the configuration serves it.
//! * [`telemetry`]: the tracing subscriber and the Prometheus recorder.
//!
//! [`run`] ties them together; `main.rs` only parses the command line.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod commands;
pub mod config;
pub mod error;
pub mod handlers;
pub mod http;
pub mod openapi;
pub mod pages;
pub mod routes;
pub mod server;
pub mod telemetry;
pub mod wire;

use std::future::Future;
use std::time::Duration;

use gatehouse_actors::{Gatehouse, Settings};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use config::Loaded;

/// Starts the actors, binds the listener, serves until `shutdown`, then
/// drains requests, stops the actors and flushes the database.
pub async fn run(
    loaded: Loaded,
    prometheus: PrometheusHandle,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let Loaded {
        config,
        jwt_secret,
        key_encryption_secret,
        smtp_password,
        ..
    } = loaded;
    let mut email = config.email.clone();
    if email.link_base.is_empty() {
        email.link_base = config.server.public_url.clone();
    }
    let gatehouse = Gatehouse::start(Settings {
        auth: config.auth.clone(),
        jwt_secret,
        key_encryption_secret,
        password: config.password.clone(),
        database: config.database.clone(),
        rate_limit: config.rate_limit.clone(),
        database_breaker: config.circuit_breaker.database,
        redis_breaker: config.circuit_breaker.redis,
        email,
        smtp_password,
        smtp_breaker: config.circuit_breaker.smtp,
        restart: config.supervisor.policy(),
        clock: gatehouse_actors::clock::SystemClock::shared(),
    })
    .await
    .map_err(|e| format!("cannot start: {e}"))?;
    telemetry::store_events_with(gatehouse.admin.db.repo.clone());

    let listener = TcpListener::bind(config.server.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", config.server.listen))?;
    let address = listener
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    tracing::info!(target: telemetry::LIFECYCLE, "listening on {address}");

    let upkeep = {
        let prometheus = prometheus.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(5));
            loop {
                every.tick().await;
                telemetry::upkeep(&prometheus);
            }
        })
    };
    let app = http::App::new(&config, routes::ROUTES, gatehouse.clone(), prometheus)
        .map_err(|e| format!("starting the front end: {e}"))?;
    let limits = server::ServerLimits {
        header_read_timeout: Duration::from_millis(config.server.header_read_timeout_ms),
        idle_timeout: Duration::from_millis(config.server.idle_timeout_ms),
        shutdown_grace: Duration::from_millis(config.server.shutdown_grace_ms),
        max_connections: config.server.max_connections,
    };
    server::serve(listener, app, limits, shutdown).await;
    upkeep.abort();

    gatehouse.shutdown().await;
    tracing::info!(target: telemetry::LIFECYCLE, "stopped");
    Ok(())
}
