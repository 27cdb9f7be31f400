//! Logs and metrics sinks: the tracing subscriber and the Prometheus recorder.
//!
//! Logs go to stderr as JSON lines (or human-readable with `pretty`), with the
//! fields of the enclosing request span (request id, method, route) lifted to
//! the top level of every line. [`LIFECYCLE`] events (the bound address,
//! shutdown) are logged whatever the configured level.
//!
//! Lines are appended to an in-memory batch that a dedicated thread writes
//! to stderr every [`FLUSH_EVERY`] (sooner once it holds [`FLUSH_AT`] bytes):
//! a request pays for a copy under a short lock, never for a system call or
//! for waking another thread, and nothing is ever dropped.

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::config::{LogFormat, LoggingSettings};

/// Target of the start-up and shutdown lines operators and scripts rely on.
pub const LIFECYCLE: &str = "gatehouse::lifecycle";

/// Installs the subscriber. Keep the returned flusher until the process
/// ends: dropping it writes out the last batch.
pub fn init_tracing(logging: &LoggingSettings) -> Result<LogFlusher, String> {
    let filter = EnvFilter::try_new(format!("{},{LIFECYCLE}=info", logging.level))
        .map_err(|e| format!("logging.level: {e}"))?;
    let (writer, flusher) = batched(std::io::stderr());
    let registry = tracing_subscriber::registry().with(filter);
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
    result.map(|()| flusher).map_err(|e| e.to_string())
}

/// How long a log line may wait in memory.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);

/// A batch this large is written at once.
pub const FLUSH_AT: usize = 64 * 1024;

/// The lines not yet written, and whether the writer thread should stop.
#[derive(Default)]
struct Batch {
    lines: Mutex<(Vec<u8>, bool)>,
    ready: Condvar,
}

impl Batch {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Vec<u8>, bool)> {
        self.lines.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Where the subscriber writes: the in-memory batch. Cheap to clone.
#[derive(Clone)]
pub struct LogWriter(Arc<Batch>);

/// Owns the writer thread; dropping it writes out the last lines.
pub struct LogFlusher {
    batch: Arc<Batch>,
    thread: Option<JoinHandle<()>>,
}

/// A writer into a batch that a thread of its own writes out to `out`.
fn batched(mut out: impl Write + Send + 'static) -> (LogWriter, LogFlusher) {
    let batch = Arc::new(Batch::default());
    let shared = Arc::clone(&batch);
    let thread = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || {
            let mut taken = Vec::with_capacity(FLUSH_AT);
            loop {
                let stopping = {
                    let (mut guard, _) = shared
                        .ready
                        .wait_timeout_while(shared.lock(), FLUSH_EVERY, |(lines, stop)| {
                            lines.len() < FLUSH_AT && !*stop
                        })
                        .unwrap_or_else(PoisonError::into_inner);
                    std::mem::swap(&mut guard.0, &mut taken);
                    guard.1
                };
                // Nowhere to report a failure to write the log but the log.
                let _ = out.write_all(&taken).and_then(|()| out.flush());
                taken.clear();
                if stopping {
                    return;
                }
            }
        })
        .ok();
    let flusher = LogFlusher {
        batch: Arc::clone(&batch),
        thread,
    };
    (LogWriter(batch), flusher)
}

impl Drop for LogFlusher {
    fn drop(&mut self) {
        self.batch.lock().1 = true;
        self.batch.ready.notify_one();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One write of a log line into the batch.
pub struct LineWriter<'a>(&'a Batch);

impl Write for LineWriter<'_> {
    fn write(&mut self, line: &[u8]) -> std::io::Result<usize> {
        let mut guard = self.0.lock();
        guard.0.extend_from_slice(line);
        if guard.0.len() >= FLUSH_AT {
            self.0.ready.notify_one();
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for LogWriter {
    type Writer = LineWriter<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        LineWriter(&self.0)
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
    for result in ["success", "failure"] {
        metrics::counter!("gatehouse_logins_total", "result" => result).absolute(0);
    }
    metrics::counter!("gatehouse_registrations_total").absolute(0);
    Ok(handle)
}
