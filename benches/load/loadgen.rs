//! The in-process load generator: `connections` keep-alive HTTP/1.1
//! connections, each sending requests back to back (closed loop) or on a
//! schedule (paced), latencies into HDR histograms.
//!
//! A run has a warm-up and a measured window. Throughput counts the requests
//! that completed inside the window; latency is recorded for those same
//! requests. Req/s is the sum over connections of each one's completions per
//! second between its first and last completion in the window, which is
//! what completions / window estimates, without its rounding when requests
//! take a large part of a second (a login at default scrypt does). Paced runs measure latency from the time a request was *due*,
//! not from when it went out, so a stalled server is not hidden by the
//! generator waiting for it (no coordinated omission).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{CONTENT_TYPE, HOST, HeaderValue};
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpStream;

pub type Body = Full<Bytes>;
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// Builds request number `seq` of a run (numbered across all connections).
pub type MakeRequest = Arc<dyn Fn(u64) -> Request<Body> + Send + Sync>;

/// Largest latency recorded, in microseconds; longer ones are clamped.
const MAX_LATENCY_US: u64 = 120_000_000;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// A request with a JSON body (or none), an optional bearer token and a Host header.
pub fn request(
    method: Method,
    path: &str,
    token: Option<&str>,
    body: Option<Bytes>,
) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(path)
        .header(HOST, HeaderValue::from_static("127.0.0.1"));
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    if body.is_some() {
        builder = builder.header(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    }
    builder
        .body(Full::new(body.unwrap_or_default()))
        .expect("a well-formed request")
}

/// Opens one keep-alive HTTP/1.1 connection.
pub async fn connect(addr: SocketAddr) -> Result<SendRequest<Body>, BoxError> {
    let stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) = http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        // Ends when the sender is dropped or the server closes the connection.
        let _ = connection.await;
    });
    Ok(sender)
}

/// Sends one request and reads the whole answer.
pub async fn send(
    sender: &mut SendRequest<Body>,
    request: Request<Body>,
) -> Result<(StatusCode, HeaderMap, Bytes), BoxError> {
    sender.ready().await?;
    let response = sender.send_request(request).await?;
    let (parts, body) = response.into_parts();
    let body = body.collect().await?.to_bytes();
    Ok((parts.status, parts.headers, body))
}

/// A sequential client for set-up steps and probes.
pub struct Client {
    addr: SocketAddr,
    sender: Option<SendRequest<Body>>,
}

/// A whole answer.
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

impl Client {
    pub fn new(addr: SocketAddr) -> Self {
        Self { addr, sender: None }
    }

    /// Sends `request`, reconnecting once if the kept-alive connection is gone.
    pub async fn call(&mut self, request: impl Fn() -> Request<Body>) -> Reply {
        for attempt in 0..2 {
            if self.sender.is_none() {
                self.sender = Some(
                    connect(self.addr)
                        .await
                        .unwrap_or_else(|e| panic!("cannot connect to {}: {e}", self.addr)),
                );
            }
            let sender = self.sender.as_mut().expect("connected just above");
            match send(sender, request()).await {
                Ok((status, headers, body)) => {
                    return Reply {
                        status,
                        headers,
                        body,
                    };
                }
                Err(e) if attempt == 0 => {
                    eprintln!(
                        "bench: connection to {} lost ({e}); reconnecting",
                        self.addr
                    );
                    self.sender = None;
                }
                Err(e) => panic!("request to {} failed: {e}", self.addr),
            }
        }
        unreachable!("the loop returns or panics")
    }

    pub async fn get(&mut self, path: &str, token: Option<&str>) -> Reply {
        self.call(|| request(Method::GET, path, token, None)).await
    }

    pub async fn post(&mut self, path: &str, body: &Value, token: Option<&str>) -> Reply {
        let bytes = Bytes::from(body.to_string());
        self.call(|| request(Method::POST, path, token, Some(bytes.clone())))
            .await
    }
}

/// How to drive a server.
#[derive(Clone, Debug)]
pub struct Plan {
    pub connections: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// Stop once this many requests (warm-up included) have been sent.
    pub max_requests: Option<u64>,
    /// Paced: requests per second over all connections.
    pub rate: Option<f64>,
    /// Label error answers with their contract code (`503 SVC001`).
    pub codes: bool,
    /// Keep every request's send and completion times.
    pub timeline: bool,
    /// The server's process, to tell its CPU use from other work's.
    pub server_pid: Option<u32>,
}

impl Plan {
    pub fn closed(connections: usize, warmup: Duration, duration: Duration) -> Self {
        Self {
            connections: connections.max(1),
            warmup,
            duration,
            max_requests: None,
            rate: None,
            codes: false,
            timeline: false,
            server_pid: None,
        }
    }

    /// Measures how busy the machine was with anything but this bench and `pid`.
    pub fn server(mut self, pid: u32) -> Self {
        self.server_pid = Some(pid);
        self
    }

    pub fn paced(mut self, rate: f64) -> Self {
        self.rate = Some(rate);
        self
    }

    pub fn max_requests(mut self, n: u64) -> Self {
        self.max_requests = Some(n);
        self
    }

    pub fn codes(mut self) -> Self {
        self.codes = true;
        self
    }

    pub fn timeline(mut self) -> Self {
        self.timeline = true;
        self
    }
}

/// One request, for scenarios that look at the order of events. Times are
/// since [`Outcome::origin`].
#[derive(Debug, Clone)]
pub struct Event {
    pub sent: Duration,
    pub done: Duration,
    pub status: u16,
    pub code: String,
}

/// Answers of one kind (`200`, `429 RATE001`…) inside the measured window.
#[derive(Clone)]
pub struct Stats {
    pub count: u64,
    pub latency: Histogram<u64>,
}

/// What a run measured.
pub struct Outcome {
    pub origin: Instant,
    pub connections: usize,
    pub rate: Option<f64>,
    /// Length of the measured window (shorter when `max_requests` ended it).
    pub window: Duration,
    /// Requests completed inside the window.
    pub completed: u64,
    /// Sum of the connections' completion rates (see the module docs).
    pub rate_estimate: f64,
    /// Their latencies, in microseconds.
    pub latency: Histogram<u64>,
    pub labels: BTreeMap<String, Stats>,
    /// Connect, send or read failures inside the window.
    pub transport_errors: u64,
    pub timeline: Vec<Event>,
    /// CPU cores kept busy by other work during the run (neither the bench
    /// nor the server), when the server's pid was given.
    pub background_cores: Option<f64>,
    /// The server's own CPU time (user + system) over the whole run, warm-up
    /// included, when its pid was given.
    pub server_cpu_s: Option<f64>,
    /// Requests sent over the whole run, warm-up included.
    pub sent: u64,
}

impl Outcome {
    pub fn rps(&self) -> f64 {
        self.rate_estimate
    }

    /// The server's CPU time per request, in microseconds: a figure that
    /// does not move with the other load on the machine as throughput does.
    pub fn server_cpu_us(&self) -> Option<f64> {
        self.server_cpu_s
            .filter(|_| self.sent > 0)
            .map(|s| s * 1e6 / self.sent as f64)
    }

    /// Latency quantile `q` (0..1) in milliseconds.
    pub fn ms(&self, q: f64) -> f64 {
        quantile_ms(&self.latency, q)
    }

    /// Answers whose label is not among `expected`, plus transport errors.
    pub fn unexpected(&self, expected: &[&str]) -> u64 {
        self.labels
            .iter()
            .filter(|(label, _)| !expected.contains(&label.as_str()))
            .map(|(_, s)| s.count)
            .sum::<u64>()
            + self.transport_errors
    }

    pub fn summary(&self) -> Value {
        let labels: serde_json::Map<String, Value> = self
            .labels
            .iter()
            .map(|(label, s)| {
                (
                    label.clone(),
                    json!({
                        "count": s.count,
                        "p50_ms": quantile_ms(&s.latency, 0.5),
                        "p99_ms": quantile_ms(&s.latency, 0.99),
                    }),
                )
            })
            .collect();
        json!({
            "connections": self.connections,
            "paced_rate": self.rate,
            "window_s": self.window.as_secs_f64(),
            "completed": self.completed,
            "rps": self.rps(),
            "completed_per_window_s": self.completed as f64 / self.window.as_secs_f64().max(1e-9),
            "p50_ms": self.ms(0.5),
            "p90_ms": self.ms(0.9),
            "p99_ms": self.ms(0.99),
            "p999_ms": self.ms(0.999),
            "max_ms": self.latency.max() as f64 / 1000.0,
            "transport_errors": self.transport_errors,
            "background_cores": self.background_cores,
            "answers": labels,
        })
    }
}

pub fn quantile_ms(h: &Histogram<u64>, q: f64) -> f64 {
    if h.is_empty() {
        return f64::NAN;
    }
    h.value_at_quantile(q) as f64 / 1000.0
}

/// What one connection saw.
struct Partial {
    completed: u64,
    latency: Histogram<u64>,
    labels: BTreeMap<String, Stats>,
    transport_errors: u64,
    timeline: Vec<Event>,
    first_done: Option<Instant>,
    last_done: Option<Instant>,
}

/// Drives `addr` as `plan` says, with requests from `make`.
pub async fn run(addr: SocketAddr, plan: &Plan, make: MakeRequest) -> Outcome {
    let plan = Arc::new(plan.clone());
    let counter = Arc::new(AtomicU64::new(0));
    let cpu = plan.server_pid.map(CpuWatch::start);
    let origin = Instant::now();
    let tasks: Vec<_> = (0..plan.connections)
        .map(|i| {
            let plan = Arc::clone(&plan);
            let make = Arc::clone(&make);
            let counter = Arc::clone(&counter);
            tokio::spawn(connection(i, addr, plan, make, counter, origin))
        })
        .collect();
    let mut outcome = Outcome {
        origin,
        connections: plan.connections,
        rate: plan.rate,
        window: plan.duration,
        completed: 0,
        rate_estimate: 0.0,
        latency: histogram(),
        labels: BTreeMap::new(),
        transport_errors: 0,
        timeline: Vec::new(),
        background_cores: None,
        server_cpu_s: None,
        sent: 0,
    };
    let mut parts = Vec::with_capacity(plan.connections);
    let mut last_done: Option<Instant> = None;
    for task in tasks {
        let part = task.await.expect("a load connection task panicked");
        parts.push((part.completed, part.first_done, part.last_done));
        outcome.completed += part.completed;
        outcome
            .latency
            .add(&part.latency)
            .expect("histograms with the same bounds");
        for (label, stats) in part.labels {
            match outcome.labels.get_mut(&label) {
                Some(s) => {
                    s.count += stats.count;
                    s.latency
                        .add(&stats.latency)
                        .expect("histograms with the same bounds");
                }
                None => {
                    outcome.labels.insert(label, stats);
                }
            }
        }
        outcome.transport_errors += part.transport_errors;
        outcome.timeline.extend(part.timeline);
        last_done = last_done.max(part.last_done);
    }
    if plan.max_requests.is_some() {
        let start = origin + plan.warmup;
        if let Some(last) = last_done.filter(|&t| t > start) {
            outcome.window = outcome.window.min(last - start);
        }
    }
    let window = outcome.window.as_secs_f64().max(1e-9);
    outcome.rate_estimate = parts
        .into_iter()
        .map(|(n, first, last)| match (first, last) {
            (Some(first), Some(last)) if n >= 2 && last > first => {
                (n - 1) as f64 / (last - first).as_secs_f64()
            }
            _ => n as f64 / window,
        })
        .sum();
    outcome.timeline.sort_by_key(|e| e.sent);
    outcome.sent = counter.load(Ordering::Relaxed);
    if let Some(max) = plan.max_requests {
        outcome.sent = outcome.sent.min(max);
    }
    outcome.server_cpu_s = cpu.as_ref().and_then(CpuWatch::server_seconds);
    outcome.background_cores = cpu.and_then(CpuWatch::background_cores);
    outcome
}

/// Linux reports CPU times in clock ticks of this many per second (USER_HZ).
const TICKS_PER_S: f64 = 100.0;

/// CPU time of the whole machine and of our processes, between two instants.
pub struct CpuWatch {
    pids: [Option<u32>; 2],
    machine: u64,
    ours: u64,
    server: u64,
    at: Instant,
}

impl CpuWatch {
    /// Starts watching; `server` is the process under test (this one is
    /// always counted as ours).
    pub fn start(server: u32) -> Self {
        let pids = [None, Some(server)];
        Self {
            pids,
            machine: machine_busy_ticks().unwrap_or(0),
            ours: pids.iter().filter_map(|&p| process_ticks(p)).sum(),
            server: process_ticks(Some(server)).unwrap_or(0),
            at: Instant::now(),
        }
    }

    /// CPU seconds the server has used since `start`.
    pub fn server_seconds(&self) -> Option<f64> {
        let now = process_ticks(self.pids[1])?;
        Some(now.checked_sub(self.server)? as f64 / TICKS_PER_S)
    }

    /// Cores busy with other work since `start`, or None when /proc says nothing.
    pub fn background_cores(self) -> Option<f64> {
        let machine = machine_busy_ticks()?.checked_sub(self.machine)?;
        let ours: u64 = self.pids.iter().filter_map(|&p| process_ticks(p)).sum();
        let ours = ours.saturating_sub(self.ours);
        let seconds = self.at.elapsed().as_secs_f64().max(1e-3);
        Some((machine.saturating_sub(ours) as f64 / TICKS_PER_S / seconds).max(0.0))
    }
}

/// Busy ticks of all CPUs, from the first line of /proc/stat.
fn machine_busy_ticks() -> Option<u64> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let fields: Vec<u64> = stat
        .lines()
        .next()?
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal: all but idle and iowait.
    let busy = [0, 1, 2, 5, 6, 7]
        .iter()
        .filter_map(|&i| fields.get(i))
        .sum();
    Some(busy)
}

/// User + system ticks of a process (all its threads); `None` = this process.
fn process_ticks(pid: Option<u32>) -> Option<u64> {
    let path = match pid {
        Some(pid) => format!("/proc/{pid}/stat"),
        None => "/proc/self/stat".to_owned(),
    };
    let stat = std::fs::read_to_string(path).ok()?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

async fn connection(
    index: usize,
    addr: SocketAddr,
    plan: Arc<Plan>,
    make: MakeRequest,
    counter: Arc<AtomicU64>,
    origin: Instant,
) -> Partial {
    let measure_from = origin + plan.warmup;
    let end = measure_from + plan.duration;
    let interval = plan
        .rate
        .map(|rate| Duration::from_secs_f64(plan.connections as f64 / rate.max(1e-3)));
    // Paced connections are spread evenly over one interval.
    let mut due = origin
        + interval.map_or(Duration::ZERO, |iv| {
            iv.mul_f64(index as f64 / plan.connections as f64)
        });
    let mut part = Partial {
        completed: 0,
        latency: histogram(),
        labels: BTreeMap::new(),
        transport_errors: 0,
        timeline: Vec::new(),
        first_done: None,
        last_done: None,
    };
    let mut sender: Option<SendRequest<Body>> = None;
    loop {
        if interval.is_some() {
            if due >= end {
                break;
            }
            tokio::time::sleep_until(due.into()).await;
        }
        if Instant::now() >= end {
            break;
        }
        let seq = counter.fetch_add(1, Ordering::Relaxed);
        if plan.max_requests.is_some_and(|max| seq >= max) {
            break;
        }
        let request = make(seq);
        let start = if interval.is_some() {
            due
        } else {
            Instant::now()
        };
        let sent = Instant::now();
        let result = match sender.as_mut() {
            Some(s) => send(s, request).await,
            None => match connect(addr).await {
                Ok(mut s) => {
                    let r = send(&mut s, request).await;
                    sender = Some(s);
                    r
                }
                Err(e) => Err(e),
            },
        };
        let done = Instant::now();
        let in_window = done >= measure_from && done <= end;
        match result {
            Ok((status, _, body)) => {
                let code = if plan.codes && !status.is_success() {
                    serde_json::from_slice::<Value>(&body)
                        .ok()
                        .and_then(|v| v["error"]["code"].as_str().map(str::to_owned))
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                if plan.timeline {
                    part.timeline.push(Event {
                        sent: sent - origin,
                        done: done - origin,
                        status: status.as_u16(),
                        code: code.clone(),
                    });
                }
                if in_window {
                    let micros = u64::try_from((done - start).as_micros()).unwrap_or(u64::MAX);
                    part.completed += 1;
                    part.latency.saturating_record(micros);
                    let label = if code.is_empty() {
                        status.as_u16().to_string()
                    } else {
                        format!("{} {code}", status.as_u16())
                    };
                    let stats = part.labels.entry(label).or_insert_with(|| Stats {
                        count: 0,
                        latency: histogram(),
                    });
                    stats.count += 1;
                    stats.latency.saturating_record(micros);
                    part.first_done.get_or_insert(done);
                    part.last_done = Some(done);
                }
            }
            Err(_) => {
                if in_window {
                    part.transport_errors += 1;
                }
                sender = None;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        if let Some(iv) = interval {
            due += iv;
        }
    }
    part
}
