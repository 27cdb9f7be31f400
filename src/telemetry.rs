//! Logs and metrics sinks: the tracing subscriber and the Prometheus recorder.
//!
//! Logs go to stderr as JSON lines (or human-readable with `pretty`), with the
//! fields of the enclosing request span (request id, method, route) lifted to
//! the top level of every line. [`LIFECYCLE`] events (the bound address,
//! shutdown) are logged whatever the configured level.
//!
//! Lines go through `tracing-appender`'s non-blocking writer: a request pays
//! for formatting and a channel send, and a thread of its own writes them out
//! in batches (a buffered stderr, flushed whenever the channel runs dry).
//! After each write the thread rests for [`LOG_WRITE_PAUSE`] (`Paced`), so
//! under a steady trickle of requests the lines gather in the channel instead
//! of each one waking the thread (a futex wake, a write and a context switch
//! per line: more than the rest of a cheap request). The channel is bounded
//! at [`LOG_BUFFER_LINES`]; when a burst fills it, further lines are dropped
//! rather than blocking requests, and counted in
//! `gatehouse_log_lines_dropped_total` (the durable record of security
//! events is the database's, not this stream).
//!
//! Security events are logged whatever `logging.level` says, as the
//! lifecycle lines are: those a write stored already (target
//! [`audit::STORED_TARGET`]) and those without a write (target
//! [`audit::SECURITY_TARGET`]: a refused login, a throttled name, a breaker
//! turning), which the [`AuditLayer`] picks out by their `event` field and
//! hands to the repository to store in batches. So the log and the audit
//! table hold the same events, and one global filter decides for every
//! layer: a line nobody wants costs what it did before the audit layer.

use std::io::{BufWriter, Write};
use std::sync::OnceLock;
use std::time::Duration;

use gatehouse_actors::audit;
use gatehouse_actors::names::normalize_login;
use gatehouse_actors::user_repo::Repo;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use serde_json::{Map, Value};
use tracing::field::{Field, Visit};
use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, LoggingSettings};

/// Target of the start-up and shutdown lines operators and scripts rely on.
pub const LIFECYCLE: &str = "gatehouse::lifecycle";

/// Lines that may wait for the writer thread before new ones are dropped.
pub const LOG_BUFFER_LINES: usize = 128_000;

/// How long the writer thread rests after writing a batch out: how late a
/// line may appear, and how often the thread wakes at most.
pub const LOG_WRITE_PAUSE: Duration = Duration::from_millis(10);

/// How many lines the writer had to drop, for the metric.
static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Installs the subscriber. Keep the returned guard until the process ends:
/// dropping it writes out the last lines.
pub fn init_tracing(logging: &LoggingSettings) -> Result<WorkerGuard, String> {
    let (stored, security) = (audit::STORED_TARGET, audit::SECURITY_TARGET);
    let filter = EnvFilter::try_new(format!(
        "{},{LIFECYCLE}=info,{stored}=info,{security}=info",
        logging.level
    ))
    .map_err(|e| format!("logging.level: {e}"))?;
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_BUFFER_LINES)
        .thread_name("log-writer")
        .finish(Paced(BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        )));
    let _ = DROPPED.set(writer.error_counter());
    let registry = tracing_subscriber::registry().with(filter).with(AuditLayer);
    let result = match logging.format {
        LogFormat::Json => registry
            .with(
                json_subscriber::fmt::layer()
                    .with_writer(writer)
                    .flatten_event(true)
                    .flatten_span_list_on_top_level(true)
                    .with_current_span(false)
                    .with_span_list(false),
            )
            .try_init(),
        LogFormat::Pretty => registry
            .with(tracing_subscriber::fmt::layer().with_writer(writer))
            .try_init(),
    };
    result.map(|()| guard).map_err(|e| e.to_string())
}

/// The writer thread's output: written out on each flush (when the channel
/// runs dry), after which the thread rests for [`LOG_WRITE_PAUSE`].
struct Paced<W>(W);

impl<W: Write> Write for Paced<W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.write(bytes)
    }

    #[expect(
        clippy::disallowed_methods,
        reason = "the log writer's own thread, not a runtime worker: resting is its batching"
    )]
    fn flush(&mut self) -> std::io::Result<()> {
        let flushed = self.0.flush();
        std::thread::sleep(LOG_WRITE_PAUSE);
        flushed
    }
}

/// Where the [`AuditLayer`] sends what it picks out; set once the actors run.
static AUDIT_SINK: OnceLock<Repo> = OnceLock::new();

/// Stores, from now on, the security events logged without a write.
pub fn store_events_with(repo: Repo) {
    let _ = AUDIT_SINK.set(repo);
}

/// Picks the security events out of the log for the audit table.
pub struct AuditLayer;

impl<S: tracing::Subscriber> Layer<S> for AuditLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _: Context<'_, S>) {
        // Not what a write stored already, nor lines without an `event` field.
        let meta = event.metadata();
        if meta.target() == audit::STORED_TARGET || meta.fields().field("event").is_none() {
            return;
        }
        let Some(repo) = AUDIT_SINK.get() else {
            return;
        };
        let mut fields = Fields::default();
        event.record(&mut fields);
        if let Some(stored) = fields.into_event() {
            repo.record(stored);
        }
    }
}

/// An event's fields, as the audit table keeps them.
#[derive(Default)]
struct Fields(Map<String, Value>);

impl Fields {
    /// The stored event, if these are the fields of one.
    fn into_event(mut self) -> Option<audit::Event> {
        let mut text = |key: &str| match self.0.remove(key) {
            Some(Value::String(s)) => Some(s),
            Some(other) => Some(other.to_string()),
            None => None,
        };
        let name = text("event").filter(|name| audit::is_stored(name))?;
        let mut stored = audit::Event::new(name, 0);
        stored.user_id = text("user_id");
        if let Some(ip) = text("ip") {
            stored.ip = Some(ip);
        }
        drop(text("message"));
        if stored.user_id.is_none() {
            stored.login = self
                .0
                .get("login")
                .and_then(Value::as_str)
                .map(normalize_login);
        }
        stored.details = self.0;
        Some(stored)
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_i64(&mut self, field: &Field, value: i64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_u64(&mut self, field: &Field, value: u64) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_bool(&mut self, field: &Field, value: bool) {
        self.0.insert(field.name().to_owned(), value.into());
    }
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.0
            .insert(field.name().to_owned(), format!("{value:?}").into());
    }
}

/// Brings the series that are sampled rather than counted up to date.
pub fn upkeep(prometheus: &PrometheusHandle) {
    prometheus.run_upkeep();
    if let Some(dropped) = DROPPED.get() {
        metrics::counter!("gatehouse_log_lines_dropped_total")
            .absolute(u64::try_from(dropped.dropped_lines()).unwrap_or(u64::MAX));
    }
}

/// Request latency buckets, in seconds: sub-millisecond cache hits up to hashing-bound logins.
const LATENCY_BUCKETS: &[f64] = &[
    0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Installs the process-wide Prometheus recorder and describes the series.
pub fn init_metrics() -> Result<PrometheusHandle, BuildError> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full("gatehouse_http_request_duration_seconds".into()),
            LATENCY_BUCKETS,
        )?
        .install_recorder()?;
    metrics::describe_counter!("gatehouse_http_requests_total", "HTTP requests answered");
    metrics::describe_histogram!(
        "gatehouse_http_request_duration_seconds",
        metrics::Unit::Seconds,
        "Time from request to response"
    );
    metrics::describe_counter!("gatehouse_logins_total", "Login attempts by result");
    metrics::describe_counter!("gatehouse_registrations_total", "Accounts created");
    metrics::describe_counter!(
        "gatehouse_rate_limited_total",
        "Requests refused by the rate limiter"
    );
    metrics::describe_gauge!(
        "gatehouse_circuit_breaker_state",
        "Circuit breaker state: 0 closed, 1 half_open, 2 open"
    );
    metrics::describe_counter!(
        "gatehouse_actor_restarts_total",
        "Actor restarts by the supervisor"
    );
    metrics::describe_counter!(
        "gatehouse_log_lines_dropped_total",
        "Log lines dropped because the writer could not keep up"
    );
    for result in ["success", "failure"] {
        metrics::counter!("gatehouse_logins_total", "result" => result).absolute(0);
    }
    metrics::counter!("gatehouse_registrations_total").absolute(0);
    Ok(handle)
}
