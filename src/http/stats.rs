//! What the front end counts about requests: the Prometheus series labelled
//! by route template and status, and the figures of the JSON summary (request
//! total, latency percentiles over the most recent requests, rate-limited
//! requests), kept in atomics so that recording one costs no lock.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::wire::Percentiles;

/// Latencies kept for the percentiles.
const RECENT: usize = 4096;

pub struct RequestStats {
    /// Requests answered; also where the next latency goes in `recent`.
    total: AtomicU64,
    rate_limited: AtomicU64,
    /// Recent latencies in microseconds, plus one (0 means "no sample yet").
    recent: Box<[AtomicU64]>,
}

impl Default for RequestStats {
    fn default() -> Self {
        Self {
            total: AtomicU64::new(0),
            rate_limited: AtomicU64::new(0),
            recent: (0..RECENT).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl RequestStats {
    /// One answered request; `route` is the template, never the raw path.
    pub fn record(
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
        let n = self.total.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX - 1);
        if let Some(slot) = self
            .recent
            .get(usize::try_from(n % RECENT as u64).unwrap_or(0))
        {
            slot.store(micros + 1, Ordering::Relaxed);
        }
    }

    /// One request refused by the rate limiter.
    pub fn rate_limited(&self, route: &'static str) {
        metrics::counter!("gatehouse_rate_limited_total", "route" => route).increment(1);
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    pub fn requests_total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    pub fn rate_limited_total(&self) -> u64 {
        self.rate_limited.load(Ordering::Relaxed)
    }

    /// Nearest-rank percentiles of the recent latencies, in milliseconds.
    pub fn latency(&self) -> Percentiles {
        let mut sorted: Vec<u64> = self
            .recent
            .iter()
            .map(|slot| slot.load(Ordering::Relaxed))
            .filter(|&micros| micros > 0)
            .map(|micros| micros - 1)
            .collect();
        sorted.sort_unstable();
        let pick = |q: f64| {
            if sorted.is_empty() {
                return 0.0;
            }
            let rank = (q * sorted.len() as f64).ceil() as usize;
            sorted[rank.clamp(1, sorted.len()) - 1] as f64 / 1000.0
        };
        Percentiles {
            p50: pick(0.50),
            p95: pick(0.95),
            p99: pick(0.99),
        }
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
        408 => "408",
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
        let stats = RequestStats::default();
        for ms in 1..=100u64 {
            stats.record("GET", "/x", 200, Duration::from_millis(ms));
        }
        let p = stats.latency();
        assert_eq!((p.p50, p.p95, p.p99), (50.0, 95.0, 99.0));
        assert_eq!(stats.requests_total(), 100);
        assert_eq!(RequestStats::default().latency(), Percentiles::default());
    }
}
