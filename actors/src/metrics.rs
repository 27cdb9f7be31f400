//! The `Metrics` actor and [`MetricsHandle`], through which every observation flows.
//!
//! Each observation goes two ways from one call: to the process-wide
//! `metrics` recorder (exported to Prometheus by the front end) and, as a
//! fire-and-forget message, to the actor, which keeps the JSON summary for
//! `/api/v1/monitoring/metrics`: totals and latency percentiles over the most
//! recent requests. The tally lives outside the actor so a restart loses
//! only the messages in flight, not the history.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Serialize;

use crate::error::Result;
use crate::system::{self, ActorKind, Names};

/// Latencies kept for the percentiles.
const RECENT: usize = 4096;

/// What `/api/v1/monitoring/metrics` shows.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Summary {
    pub uptime_s: u64,
    pub requests_total: u64,
    pub latency_ms: Percentiles,
    pub logins: Logins,
    pub registrations_total: u64,
    pub rate_limited_total: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Percentiles {
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Logins {
    pub success: u64,
    pub failure: u64,
}

/// Running totals; shared so that they outlive a restart of the actor.
#[derive(Debug, Default)]
pub struct Tally {
    requests: u64,
    recent_ms: VecDeque<f64>,
    logins: Logins,
    registrations: u64,
    rate_limited: u64,
}

impl Tally {
    fn summary(&self, uptime: Duration) -> Summary {
        let mut sorted: Vec<f64> = self.recent_ms.iter().copied().collect();
        sorted.sort_by(f64::total_cmp);
        let pick = |q: f64| {
            if sorted.is_empty() {
                return 0.0;
            }
            // Nearest rank.
            let rank = (q * sorted.len() as f64).ceil() as usize;
            sorted[rank.clamp(1, sorted.len()) - 1]
        };
        Summary {
            uptime_s: uptime.as_secs(),
            requests_total: self.requests,
            latency_ms: Percentiles {
                p50: pick(0.50),
                p95: pick(0.95),
                p99: pick(0.99),
            },
            logins: self.logins,
            registrations_total: self.registrations,
            rate_limited_total: self.rate_limited,
        }
    }
}

/// Messages the `Metrics` actor accepts.
pub enum MetricsMsg {
    Request {
        latency_ms: f64,
    },
    Login {
        success: bool,
    },
    Registration,
    RateLimited,
    Summary(RpcReplyPort<Summary>),
    /// Fail on purpose (chaos testing): the supervisor must restart us.
    Crash,
}

#[derive(Clone)]
pub struct MetricsArgs {
    pub tally: Arc<Mutex<Tally>>,
    pub started: Instant,
}

pub struct Metrics;

impl Actor for Metrics {
    type Msg = MetricsMsg;
    type State = MetricsArgs;
    type Arguments = MetricsArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: MetricsArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let mut tally = state.tally.lock();
        match msg {
            MetricsMsg::Request { latency_ms } => {
                tally.requests += 1;
                if tally.recent_ms.len() == RECENT {
                    tally.recent_ms.pop_front();
                }
                tally.recent_ms.push_back(latency_ms);
            }
            MetricsMsg::Login { success: true } => tally.logins.success += 1,
            MetricsMsg::Login { success: false } => tally.logins.failure += 1,
            MetricsMsg::Registration => tally.registrations += 1,
            MetricsMsg::RateLimited => tally.rate_limited += 1,
            MetricsMsg::Summary(reply) => {
                let _ = reply.send(tally.summary(state.started.elapsed()));
            }
            MetricsMsg::Crash => return Err("crash requested through the chaos route".into()),
        }
        Ok(())
    }
}

/// Where observations are reported; cheap to clone, valid across restarts.
#[derive(Clone)]
pub struct MetricsHandle {
    names: Arc<Names>,
    timeout: Duration,
}

impl MetricsHandle {
    pub fn new(names: Arc<Names>, timeout: Duration) -> Self {
        Self { names, timeout }
    }

    fn tell(&self, msg: MetricsMsg) {
        system::cast(self.names.get(ActorKind::Metrics), msg);
    }

    /// One answered HTTP request; `route` is the template, never the raw path.
    pub fn request(
        &self,
        method: &'static str,
        route: &'static str,
        status: u16,
        latency: Duration,
    ) {
        let status = status_label(status);
        metrics::counter!("gatehouse_http_requests_total",
            "method" => method, "route" => route, "status" => status)
        .increment(1);
        metrics::histogram!("gatehouse_http_request_duration_seconds",
            "method" => method, "route" => route)
        .record(latency.as_secs_f64());
        self.tell(MetricsMsg::Request {
            latency_ms: latency.as_secs_f64() * 1000.0,
        });
    }

    pub fn login(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        metrics::counter!("gatehouse_logins_total", "result" => result).increment(1);
        self.tell(MetricsMsg::Login { success });
    }

    pub fn registration(&self) {
        metrics::counter!("gatehouse_registrations_total").increment(1);
        self.tell(MetricsMsg::Registration);
    }

    pub fn rate_limited(&self, route: &'static str) {
        metrics::counter!("gatehouse_rate_limited_total", "route" => route).increment(1);
        self.tell(MetricsMsg::RateLimited);
    }

    pub async fn summary(&self) -> Result<Summary> {
        system::call(
            self.names.get(ActorKind::Metrics),
            self.timeout,
            MetricsMsg::Summary,
        )
        .await
    }
}

/// Status codes as static label values, so labelling a request allocates nothing.
fn status_label(status: u16) -> &'static str {
    match status {
        200 => "200",
        201 => "201",
        202 => "202",
        204 => "204",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        409 => "409",
        413 => "413",
        415 => "415",
        422 => "422",
        429 => "429",
        500 => "500",
        503 => "503",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_use_nearest_rank_over_the_recent_window() {
        let mut t = Tally::default();
        for ms in 1..=100 {
            t.recent_ms.push_back(f64::from(ms));
        }
        let p = t.summary(Duration::from_secs(3)).latency_ms;
        assert_eq!((p.p50, p.p95, p.p99), (50.0, 95.0, 99.0));
        assert_eq!(
            Tally::default().summary(Duration::ZERO).latency_ms,
            Percentiles::default()
        );
    }
}
