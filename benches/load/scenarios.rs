//! The scenarios. Each starts the Gatehouse instance(s) it needs, so that
//! one cannot disturb another, and adds its rows and details to the report.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gatehouse_testkit::{PgDatabase, WriteLock};
use hyper::header::HeaderValue;
use hyper::{Method, StatusCode};
use serde_json::{Value, json};

use crate::Knobs;
use crate::loadgen::{self, Client, MakeRequest, Plan, Reply, histogram, quantile_ms};
use crate::procs::{self, Gatehouse, PASSWORD};
use crate::report::{Report, Row, fmt_ms, fmt_rps, mib};

pub(crate) const ME: &str = "/api/v1/users/me";
pub(crate) const HEALTH: &str = "/api/v1/monitoring/health";
pub(crate) const LOGIN: &str = "/api/v1/auth/login";
const REGISTER: &str = "/api/v1/auth/register";
const REFRESH: &str = "/api/v1/auth/refresh";
const LOGOUT: &str = "/api/v1/auth/logout";
const BREAKERS: &str = "/api/v1/monitoring/circuit-breakers";
const MIB: u64 = 1024 * 1024;

/// Figures later scenarios are compared with.
pub struct Bounds {
    /// Hashes that may run at once (Gatehouse's default: one per CPU).
    pub cores: usize,
    /// Median time of one scrypt hash at the default parameters, seconds.
    pub hash_s: Option<f64>,
    /// Baseline req/s per connection count.
    pub baseline: BTreeMap<usize, f64>,
}

impl Bounds {
    /// Logins per second the CPUs can hash: cores / time of one hash.
    pub fn hashing(&self) -> Option<f64> {
        self.hash_s.map(|s| self.cores as f64 / s)
    }
}

fn register_body(username: &str) -> Value {
    json!({"email": format!("{username}@example.com"), "username": username, "password": PASSWORD})
}

pub(crate) fn login_body(username: &str) -> Bytes {
    Bytes::from(json!({"username": username, "password": PASSWORD}).to_string())
}

#[track_caller]
fn expect_status(reply: &Reply, status: u16, what: &str) {
    assert_eq!(
        reply.status.as_u16(),
        status,
        "{what}: unexpected answer {}",
        String::from_utf8_lossy(&reply.body)
    );
}

/// Registers `username` and logs in; returns the access token.
pub(crate) async fn user(c: &mut Client, username: &str) -> String {
    expect_status(
        &c.post(REGISTER, &register_body(username), None).await,
        201,
        "register",
    );
    login(c, username).await
}

/// Logs `username` in; returns the access token.
pub(crate) async fn login(c: &mut Client, username: &str) -> String {
    let login = c
        .post(
            LOGIN,
            &json!({"username": username, "password": PASSWORD}),
            None,
        )
        .await;
    expect_status(&login, 200, "login");
    login.json()["access_token"]
        .as_str()
        .expect("an access token in the login answer")
        .to_owned()
}

pub(crate) fn get(path: &'static str, token: Option<String>) -> MakeRequest {
    let auth = token.map(|t| {
        HeaderValue::from_str(&format!("Bearer {t}")).expect("a token is a valid header value")
    });
    Arc::new(move |_| {
        let mut request = loadgen::request(Method::GET, path, None, None);
        if let Some(auth) = &auth {
            request.headers_mut().insert("authorization", auth.clone());
        }
        request
    })
}

pub(crate) fn post_fixed(path: &'static str, body: Bytes) -> MakeRequest {
    Arc::new(move |_| loadgen::request(Method::POST, path, None, Some(body.clone())))
}

/// Registrations with distinct usernames `{prefix}{seq}`.
pub(crate) fn registrations(prefix: String) -> MakeRequest {
    Arc::new(move |seq| {
        let body = register_body(&format!("{prefix}{seq}")).to_string();
        loadgen::request(Method::POST, REGISTER, None, Some(Bytes::from(body)))
    })
}

fn ratio(value: f64, bound: Option<f64>) -> Option<f64> {
    bound.filter(|b| *b > 0.0).map(|b| value / b)
}

/// Baseline, `/users/me` and health at each connection count; login and
/// registration at default scrypt at each hashing connection count.
pub async fn main_instance(k: &Knobs, bounds: &mut Bounds, report: &mut Report) {
    let gh = Gatehouse::start("main", &[]);
    let addr = gh.addr();
    let pid = gh.proc.pid();
    let mut c = Client::new(addr);
    let token = user(&mut c, "bench_main").await;
    let me = c.get(ME, Some(&token)).await;
    expect_status(&me, 200, "GET /users/me");
    let body_bytes = me.body.len();
    report.detail(
        "users_me_answer",
        json!({"bytes": body_bytes, "body": me.json()}),
    );
    let mut detail = serde_json::Map::new();

    if k.runs("throughput") {
        // The same routes with the per-request access line off (level warn),
        // to show what that line costs.
        let quiet = Gatehouse::start("quiet", &[("GATEHOUSE__LOGGING__LEVEL", "warn".to_owned())]);
        let mut quiet_client = Client::new(quiet.addr());
        let quiet_token = user(&mut quiet_client, "bench_quiet").await;
        let base = procs::start_baseline(body_bytes);
        let probe = Client::new(base.addr).get("/", None).await;
        assert_eq!(probe.body.len(), body_bytes, "baseline body size");
        for &conns in &k.connections {
            let plan = Plan::closed(conns, k.warmup, k.duration).server(base.pid());
            let o = loadgen::run(base.addr, &plan, get("/", None)).await;
            let plan = plan.server(pid);
            bounds.baseline.insert(conns, o.rps());
            report.row(
                Row::load("baseline: bare hyper", &o, &["200"])
                    .with(format!("{} B body, same runtime", body_bytes)),
            );
            detail.insert(format!("baseline_c{conns}"), o.summary());

            let base_rps = bounds.baseline.get(&conns).copied();
            let o = loadgen::run(addr, &plan, get(ME, Some(token.clone()))).await;
            let r = ratio(o.rps(), base_rps).unwrap_or(f64::NAN);
            report.row(
                Row::load("GET /users/me (authenticated)", &o, &["200"])
                    .with(format!("{r:.2} × baseline"))
                    .target("≥ 0.50 × baseline", r >= 0.5),
            );
            detail.insert(format!("users_me_c{conns}"), o.summary());

            let o = loadgen::run(addr, &plan, get(HEALTH, None)).await;
            let r = ratio(o.rps(), base_rps).unwrap_or(f64::NAN);
            report.row(
                Row::load("GET /monitoring/health", &o, &["200"])
                    .with(format!("{r:.2} × baseline"))
                    .target("≥ 0.70 × baseline", r >= 0.7),
            );
            detail.insert(format!("health_c{conns}"), o.summary());

            let plan = plan.server(quiet.proc.pid());
            let o = loadgen::run(quiet.addr(), &plan, get(ME, Some(quiet_token.clone()))).await;
            let r = ratio(o.rps(), base_rps).unwrap_or(f64::NAN);
            report.row(
                Row::load("GET /users/me, logging warn", &o, &["200"])
                    .with(format!("{r:.2} × baseline"))
                    .target("≥ 0.50 × baseline", r >= 0.5),
            );
            detail.insert(format!("users_me_warn_c{conns}"), o.summary());

            let o = loadgen::run(quiet.addr(), &plan, get(HEALTH, None)).await;
            let r = ratio(o.rps(), base_rps).unwrap_or(f64::NAN);
            report.row(
                Row::load("GET /monitoring/health, logging warn", &o, &["200"])
                    .with(format!("{r:.2} × baseline"))
                    .target("≥ 0.70 × baseline", r >= 0.7),
            );
            detail.insert(format!("health_warn_c{conns}"), o.summary());
        }
    }

    if k.runs("hashing") {
        let bound = bounds.hashing();
        let bound_text = bound.map_or("-".to_owned(), |b| format!("{b:.2}/s"));
        for &conns in &k.hash_connections {
            let plan = Plan::closed(conns, k.warmup, k.hash_duration).server(pid);
            let o = loadgen::run(addr, &plan, post_fixed(LOGIN, login_body("bench_main"))).await;
            let r = ratio(o.rps(), bound).unwrap_or(f64::NAN);
            report.row(
                Row::load("POST /auth/login (scrypt 17,8,1)", &o, &["200"])
                    .with(format!("{r:.2} × hashing bound {bound_text}"))
                    .target("≥ 0.90 × cores/hash", r >= 0.9),
            );
            detail.insert(format!("login_c{conns}"), o.summary());
        }
        for &conns in &k.hash_connections {
            let plan = Plan::closed(conns, k.warmup, k.hash_duration).server(pid);
            let o = loadgen::run(addr, &plan, registrations(format!("reg{conns}_"))).await;
            let r = ratio(o.rps(), bound).unwrap_or(f64::NAN);
            report.row(
                Row::load("POST /auth/register (distinct names)", &o, &["201"])
                    .with(format!("{r:.2} × hashing bound {bound_text}")),
            );
            detail.insert(format!("register_c{conns}"), o.summary());
        }
    }
    report.detail("main", Value::Object(detail));
}

/// `/users/me` and login with the PostgreSQL store, beside the SQLite figures,
/// on a database of its own on the machine's PostgreSQL (the testkit's:
/// `GATEHOUSE_TEST_POSTGRES_URL`, default 127.0.0.1:5432).
pub async fn postgres(k: &Knobs, bounds: &Bounds, report: &mut Report) {
    if let Some(reason) = gatehouse_testkit::Service::Postgres.unavailable() {
        println!("  postgres: skipped, {reason}");
        return;
    }
    let db = match PgDatabase::try_create("gatehouse_bench") {
        Ok(db) => db,
        Err(e) => {
            println!("  postgres: skipped, {e}");
            return;
        }
    };
    {
        let gh = Gatehouse::start("postgres", &[("GATEHOUSE__DATABASE__URL", db.url())]);
        let addr = gh.addr();
        let pid = gh.proc.pid();
        let mut c = Client::new(addr);
        let token = user(&mut c, "bench_pg").await;
        let mut detail = serde_json::Map::new();
        for &conns in &k.connections {
            let plan = Plan::closed(conns, k.warmup, k.duration).server(pid);
            let o = loadgen::run(addr, &plan, get(ME, Some(token.clone()))).await;
            let base_rps = bounds.baseline.get(&conns).copied();
            let r =
                ratio(o.rps(), base_rps).map_or("-".to_owned(), |r| format!("{r:.2} × baseline"));
            report.row(Row::load("GET /users/me, PostgreSQL", &o, &["200"]).with(r));
            detail.insert(format!("users_me_c{conns}"), o.summary());
        }
        let bound = bounds.hashing();
        for &conns in &k.hash_connections {
            let plan = Plan::closed(conns, k.warmup, k.hash_duration).server(pid);
            let o = loadgen::run(addr, &plan, post_fixed(LOGIN, login_body("bench_pg"))).await;
            let figure =
                ratio(o.rps(), bound).map_or("-".to_owned(), |r| format!("{r:.2} × hashing bound"));
            report.row(
                Row::load("POST /auth/login, PostgreSQL (scrypt 17,8,1)", &o, &["200"])
                    .with(figure),
            );
            detail.insert(format!("login_c{conns}"), o.summary());
        }
        report.detail("postgres", Value::Object(detail));
    }
    // The server is gone; the database goes now.
    drop(db);
}

/// Samples a process's RSS every 20 ms until stopped; returns the peak.
fn rss_sampler(pid: u32) -> (Arc<AtomicBool>, tokio::task::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let task = tokio::spawn(async move {
        let mut peak = 0;
        while !flag.load(Ordering::Relaxed) {
            peak = peak.max(procs::rss_bytes(pid).unwrap_or(0));
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        peak
    });
    (stop, task)
}

/// `/users/me` at a paced rate while logins keep every hashing slot busy,
/// with the process's peak RSS.
pub async fn storm(k: &Knobs, bounds: &Bounds, report: &mut Report) {
    let gh = Gatehouse::start("storm", &[]);
    let addr = gh.addr();
    let mut c = Client::new(addr);
    let token = user(&mut c, "storm_reader").await;
    expect_status(
        &c.post(REGISTER, &register_body("storm_login"), None).await,
        201,
        "register",
    );
    expect_status(&c.get(ME, Some(&token)).await, 200, "GET /users/me");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = gh.proc.rss_bytes().unwrap_or(0);
    let slots = bounds.cores;

    let (stop, sampler) = rss_sampler(gh.proc.pid());
    let lead = Duration::from_secs(1);
    let pid = gh.proc.pid();
    let storm_plan = Plan::closed(k.storm_logins, lead, k.warmup + k.duration).server(pid);
    let me_plan = Plan::closed(4, k.warmup, k.duration)
        .paced(k.storm_rate)
        .server(pid);
    let (storm, me) = tokio::join!(
        loadgen::run(
            addr,
            &storm_plan,
            post_fixed(LOGIN, login_body("storm_login"))
        ),
        async {
            tokio::time::sleep(lead).await;
            loadgen::run(addr, &me_plan, get(ME, Some(token.clone()))).await
        }
    );
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.await.expect("the RSS sampler");

    let p99 = me.ms(0.99);
    report.row(
        Row::load(
            format!(
                "GET /users/me during login storm, paced {} req/s",
                k.storm_rate
            ),
            &me,
            &["200"],
        )
        .with(format!("p99 {} ms", fmt_ms(p99)))
        .target("p99 ≤ 20 ms", p99 <= 20.0),
    );
    let r = ratio(storm.rps(), bounds.hashing()).unwrap_or(f64::NAN);
    report.row(
        Row::load("  login storm meanwhile (scrypt 17,8,1)", &storm, &["200"])
            .with(format!("{r:.2} × hashing bound")),
    );
    let limit = idle + (slots as u64 + 1) * 128 * MIB;
    report.row(
        Row::figure(
            "peak RSS during login storm",
            format!(
                "{:.0} MiB (idle {:.0} MiB, {slots} slots)",
                mib(peak),
                mib(idle)
            ),
        )
        .target(
            format!("< idle + {} × 128 MiB = {:.0} MiB", slots + 1, mib(limit)),
            peak > 0 && peak < limit,
        ),
    );
    report.detail(
        "storm",
        json!({
            "users_me": me.summary(),
            "logins": storm.summary(),
            "rss_idle_bytes": idle,
            "rss_peak_bytes": peak,
            "hash_slots": slots,
            "rss_limit_bytes": limit,
        }),
    );
}

/// RSS idle, with many open connections, and the rate limiter's state for
/// many distinct client addresses.
pub async fn memory(k: &Knobs, report: &mut Report) {
    let gh = Gatehouse::start(
        "memory",
        &[(
            "GATEHOUSE__SERVER__TRUSTED_PROXIES",
            r#"["127.0.0.0/8"]"#.to_owned(),
        )],
    );
    let addr = gh.addr();
    let mut c = Client::new(addr);
    expect_status(&c.get(HEALTH, None).await, 200, "health");
    // X-Forwarded-For from the trusted loopback proxy picks the rate-limit bucket.
    let remaining = |r: &Reply| r.header("ratelimit-remaining").map(str::to_owned);
    let xff = |ip: &str| {
        let mut r = loadgen::request(Method::GET, ME, None, None);
        r.headers_mut()
            .insert("x-forwarded-for", HeaderValue::from_str(ip).expect("an IP"));
        r
    };
    let a1 = c.call(|| xff("203.0.113.7")).await;
    let a2 = c.call(|| xff("203.0.113.7")).await;
    let b1 = c.call(|| xff("203.0.113.8")).await;
    assert!(
        remaining(&a1).is_some() && remaining(&a1) != remaining(&a2),
        "one address must share one window"
    );
    assert_eq!(
        remaining(&a1),
        remaining(&b1),
        "X-Forwarded-For from a trusted proxy must select the client's window"
    );
    drop(c);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle = gh.proc.rss_bytes().unwrap_or(0);
    report.row(
        Row::figure("RSS idle", format!("{:.1} MiB", mib(idle)))
            .target("≤ 40 MiB", idle > 0 && idle <= 40 * MIB),
    );

    // Many idle keep-alive connections, each having made one request.
    let n = k.idle_connections;
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..n {
        tasks.spawn(async move {
            let mut sender = loadgen::connect(addr).await?;
            let (status, _, _) = loadgen::send(
                &mut sender,
                loadgen::request(Method::GET, HEALTH, None, None),
            )
            .await?;
            Ok::<_, loadgen::BoxError>((sender, status))
        });
    }
    let mut open = Vec::with_capacity(n);
    let mut failed = 0;
    while let Some(joined) = tasks.join_next().await {
        match joined {
            Ok(Ok((sender, StatusCode::OK))) => open.push(sender),
            _ => failed += 1,
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let with_conns = gh.proc.rss_bytes().unwrap_or(0);
    report.row(
        Row::figure(
            format!("RSS with {n} open keep-alive connections"),
            format!(
                "{:.1} MiB ({} open, {failed} failed)",
                mib(with_conns),
                open.len()
            ),
        )
        .target(
            "≤ 120 MiB",
            failed == 0 && with_conns > 0 && with_conns <= 120 * MIB,
        ),
    );
    drop(open);
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Distinct client addresses from 198.18.0.0/15 (reserved for benchmarks).
    let before = gh.proc.rss_bytes().unwrap_or(0);
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0));
    let make: MakeRequest = Arc::new(move |seq| {
        let ip = Ipv4Addr::from(base + u32::try_from(seq).unwrap_or(0));
        let mut r = loadgen::request(Method::GET, ME, None, None);
        r.headers_mut().insert(
            "x-forwarded-for",
            HeaderValue::from_str(&ip.to_string()).expect("an IP"),
        );
        r
    });
    let plan = Plan::closed(32, Duration::ZERO, Duration::from_secs(600))
        .max_requests(k.ips)
        .server(gh.proc.pid());
    let o = loadgen::run(addr, &plan, make).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = gh.proc.rss_bytes().unwrap_or(0);
    report.row(
        Row::load(
            format!("GET /users/me without token, {} distinct IPs", k.ips),
            &o,
            &["401"],
        )
        .with("every request counted by the limiter"),
    );
    let grown = after.saturating_sub(before);
    report.row(
        Row::figure(
            format!("rate-limiter state for {} IPs", k.ips),
            format!(
                "{:.1} MiB ({:.1} → {:.1} MiB)",
                mib(grown),
                mib(before),
                mib(after)
            ),
        )
        .target("≤ 32 MiB", before > 0 && grown <= 32 * MIB),
    );
    report.detail(
        "memory",
        json!({
            "rss_idle_bytes": idle,
            "connections": n,
            "connections_failed": failed,
            "rss_with_connections_bytes": with_conns,
            "distinct_ips": k.ips,
            "rss_before_ips_bytes": before,
            "rss_after_ips_bytes": after,
            "ips_phase": o.summary(),
        }),
    );
}

/// The most allowed requests whose server-side decisions certainly fell
/// within one window: a set of requests all sent at or after `s` and all
/// answered before `s + window` was decided inside that span.
fn most_in_any_window(allowed: &[(Duration, Duration)], window: Duration) -> usize {
    allowed
        .iter()
        .map(|&(start, _)| {
            allowed
                .iter()
                .filter(|&&(sent, done)| sent >= start && done < start + window)
                .count()
        })
        .max()
        .unwrap_or(0)
}

/// 50 clients from one address hammer login against a low limit.
pub async fn rate_limit(k: &Knobs, report: &mut Report) {
    let (limit, window_s, clients) = (100u32, 2u64, 50usize);
    let run_for = k.ratelimit_duration;
    let gh = Gatehouse::start(
        "ratelimit",
        &[
            ("GATEHOUSE__PASSWORD__SCRYPT_LOG_N", "10".to_owned()),
            (
                "GATEHOUSE__RATE_LIMIT__ROUTES__LOGIN__LIMIT",
                limit.to_string(),
            ),
            (
                "GATEHOUSE__RATE_LIMIT__ROUTES__LOGIN__WINDOW_S",
                window_s.to_string(),
            ),
        ],
    );
    let body = Bytes::from(
        json!({"username": "nobody_at_all", "password": "not the password at all"}).to_string(),
    );
    let plan = Plan::closed(clients, Duration::ZERO, run_for)
        .server(gh.proc.pid())
        .codes()
        .timeline();
    let o = loadgen::run(gh.addr(), &plan, post_fixed(LOGIN, body)).await;
    let window = Duration::from_secs(window_s);
    let allowed: Vec<(Duration, Duration)> = o
        .timeline
        .iter()
        .filter(|e| e.status == 401)
        .map(|e| (e.sent, e.done))
        .collect();
    let refused = o.timeline.iter().filter(|e| e.code == "RATE001").count();
    let other = o.timeline.len() - allowed.len() - refused;
    let most = most_in_any_window(&allowed, window);
    let elapsed = o.timeline.iter().map(|e| e.done).max().unwrap_or_default();
    let windows = (elapsed.as_secs_f64() / window_s as f64).ceil() as usize;
    let cap = limit as usize * windows.max(1);
    let held = most <= limit as usize && allowed.len() <= cap && other == 0;
    report.row(
        Row::load(
            format!("POST /auth/login, {clients} clients, one IP, limit {limit}/{window_s} s"),
            &o,
            &["401 AUTH001", "429 RATE001"],
        )
        .with(format!(
            "allowed {}, refused {refused}; most in any {window_s} s: {most}; total ≤ {cap}",
            allowed.len()
        ))
        .target(format!("≤ {limit} per window"), held),
    );
    report.detail(
        "rate_limit",
        json!({
            "limit": limit,
            "window_s": window_s,
            "clients": clients,
            "elapsed_s": elapsed.as_secs_f64(),
            "allowed": allowed.len(),
            "refused": refused,
            "other": other,
            "most_allowed_in_any_window": most,
            "allowed_cap_for_elapsed": cap,
            "held": held,
            "load": o.summary(),
        }),
    );
}

async fn breaker_state(c: &mut Client) -> String {
    c.get(BREAKERS, None).await.json()["circuit_breakers"]["database"]["state"]
        .as_str()
        .unwrap_or("?")
        .to_owned()
}

/// The database breaker under a registration flood while another
/// connection holds SQLite's write lock, then after it lets go.
pub async fn breaker(k: &Knobs, report: &mut Report) {
    let (threshold, busy_ms, reset_ms, conns) = (5u32, 200u32, 1000u64, 16usize);
    let gh = Gatehouse::start(
        "breaker",
        &[
            ("GATEHOUSE__PASSWORD__SCRYPT_LOG_N", "10".to_owned()),
            ("GATEHOUSE__DATABASE__BUSY_TIMEOUT_MS", busy_ms.to_string()),
            (
                "GATEHOUSE__CIRCUIT_BREAKER__DATABASE__FAILURE_THRESHOLD",
                threshold.to_string(),
            ),
            (
                "GATEHOUSE__CIRCUIT_BREAKER__DATABASE__RESET_TIMEOUT_MS",
                reset_ms.to_string(),
            ),
        ],
    );
    let addr = gh.addr();
    let mut c = Client::new(addr);
    expect_status(
        &c.post(REGISTER, &register_body("breaker_warm"), None).await,
        201,
        "register",
    );
    assert_eq!(breaker_state(&mut c).await, "closed");

    // The full request rate of this route when it is refused before any
    // hash or database call (a password the policy refuses).
    let refused_body = Bytes::from(
        json!({"email": "short@example.com", "username": "short_pw", "password": "short"})
            .to_string(),
    );
    let plan = Plan::closed(
        conns,
        k.warmup.min(Duration::from_millis(500)),
        k.breaker_reference,
    )
    .codes()
    .server(gh.proc.pid());
    let reference = loadgen::run(addr, &plan, post_fixed(REGISTER, refused_body)).await;
    let validation_label = reference
        .labels
        .iter()
        .max_by_key(|(_, s)| s.count)
        .map(|(l, _)| l.clone())
        .unwrap_or_default();
    report.row(
        Row::load(
            "POST /auth/register refused by policy (reference)",
            &reference,
            &[validation_label.as_str()],
        )
        .with(format!("answers {validation_label}")),
    );

    let lock = WriteLock::sqlite(&gh.db);
    let locked_at = Instant::now();

    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let stop = Arc::clone(&stop);
        tokio::spawn(async move {
            let mut c = Client::new(addr);
            let mut seen: Vec<(Instant, String)> = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let state = breaker_state(&mut c).await;
                if seen.last().is_none_or(|(_, s)| *s != state) {
                    seen.push((Instant::now(), state));
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            seen
        })
    };
    let hold = k.breaker_hold;
    let plan = Plan::closed(conns, Duration::ZERO, hold + k.breaker_after)
        .server(gh.proc.pid())
        .codes()
        .timeline();
    let (o, released_at) = tokio::join!(
        loadgen::run(addr, &plan, registrations("brk_".to_owned())),
        async {
            tokio::time::sleep_until((locked_at + hold).into()).await;
            drop(lock);
            Instant::now()
        }
    );
    stop.store(true, Ordering::Relaxed);
    let seen = poller.await.expect("the breaker poller");

    let opened_at = seen
        .iter()
        .find(|(at, s)| *at >= locked_at && s == "open")
        .map(|(at, _)| *at);
    let closed_at = seen
        .iter()
        .find(|(at, s)| *at >= released_at && s == "closed")
        .map(|(at, _)| *at);
    let first_created = o
        .timeline
        .iter()
        .map(|e| (o.origin + e.done, e.status))
        .filter(|&(at, status)| at >= released_at && status == 201)
        .map(|(at, _)| at)
        .min();
    let recovered_at = match (closed_at, first_created) {
        (Some(a), Some(b)) => Some(a.max(b)),
        _ => None,
    };

    // Fail-fast answers while the breaker was open (or refusing beyond its trial).
    let mut fast = histogram();
    let mut fast_count = 0u64;
    for e in o.timeline.iter().filter(|e| e.code == "SVC001") {
        fast_count += 1;
        let micros = u64::try_from((e.done - e.sent).as_micros()).unwrap_or(u64::MAX);
        fast.saturating_record(micros);
    }
    let open_span = opened_at.map_or(Duration::ZERO, |at| {
        released_at.saturating_duration_since(at)
    });
    let fast_in_span = opened_at.map_or(0, |at| {
        o.timeline
            .iter()
            .filter(|e| e.code == "SVC001")
            .filter(|e| {
                let done = o.origin + e.done;
                done >= at && done <= released_at
            })
            .count()
    });
    let fast_rps = fast_in_span as f64 / open_span.as_secs_f64().max(1e-9);
    let fast_ratio = ratio(fast_rps, Some(reference.rps())).unwrap_or(f64::NAN);
    // The best whole second of fail-fast answers: once the calls admitted
    // before the breaker opened have drained, every connection is answered fast.
    let mut per_second: BTreeMap<u64, u64> = BTreeMap::new();
    for e in o.timeline.iter().filter(|e| e.code == "SVC001") {
        *per_second.entry(e.done.as_secs()).or_default() += 1;
    }
    let best_second = per_second
        .iter()
        .filter(|&(&s, _)| {
            let start = o.origin + Duration::from_secs(s);
            opened_at.is_some_and(|at| start >= at) && start + Duration::from_secs(1) <= released_at
        })
        .map(|(_, &n)| n)
        .max()
        .unwrap_or(0);
    let best_ratio = ratio(best_second as f64, Some(reference.rps())).unwrap_or(f64::NAN);

    let to_open = opened_at.map(|at| at - locked_at);
    report.row(
        Row::figure(
            format!("breaker opens: DB locked, register ×{conns}"),
            match to_open {
                Some(t) => format!(
                    "open after {} ms (threshold {threshold} × busy {busy_ms} ms)",
                    t.as_millis()
                ),
                None => "never opened".to_owned(),
            },
        )
        .target("opens", to_open.is_some()),
    );
    report.row(
        Row {
            scenario: "  fail-fast answers (503 SVC001) while open".to_owned(),
            connections: Some(conns),
            rps: Some(fast_rps),
            p50_ms: Some(quantile_ms(&fast, 0.5)),
            p99_ms: Some(quantile_ms(&fast, 0.99)),
            unexpected: Some(o.unexpected(&["201", "503 SVC001", "503 SVC003"])),
            background_cores: o.background_cores,
            ..Row::default()
        }
        .with(format!(
            "{fast_ratio:.2} × reference rate (best second {best_ratio:.2} ×)"
        ))
        .target(
            format!("p99 < busy timeout {busy_ms} ms"),
            fast_count > 0 && quantile_ms(&fast, 0.99) < f64::from(busy_ms),
        ),
    );
    let to_recover = recovered_at.map(|at| at - released_at);
    report.row(
        Row::figure(
            "  recovery after the lock is released",
            match to_recover {
                Some(t) => format!("closed and 201 after {} ms", t.as_millis()),
                None => "did not recover".to_owned(),
            },
        )
        .target(
            format!("recovers (reset {reset_ms} ms)"),
            to_recover.is_some(),
        ),
    );
    let labels: BTreeMap<&str, u64> = o
        .labels
        .iter()
        .map(|(l, s)| (l.as_str(), s.count))
        .collect();
    report.detail(
        "breaker",
        json!({
            "failure_threshold": threshold,
            "busy_timeout_ms": busy_ms,
            "reset_timeout_ms": reset_ms,
            "connections": conns,
            "hold_s": hold.as_secs_f64(),
            "ms_to_open": to_open.map(|t| t.as_secs_f64() * 1000.0),
            "fail_fast": {
                "count": fast_count,
                "rps_while_open": fast_rps,
                "best_second_rps": best_second,
                "p50_ms": quantile_ms(&fast, 0.5),
                "p99_ms": quantile_ms(&fast, 0.99),
                "reference_rps": reference.rps(),
            },
            "ms_to_recover": to_recover.map(|t| t.as_secs_f64() * 1000.0),
            "states_seen": seen
                .iter()
                .map(|(at, s)| json!({"ms": at.saturating_duration_since(locked_at).as_secs_f64() * 1000.0, "state": s}))
                .collect::<Vec<_>>(),
            "answers": labels,
            "reference": reference.summary(),
        }),
    );
}

/// What one virtual user went through.
struct Journey {
    client: Client,
    failed_at: Option<&'static str>,
    requests: u64,
    server_errors: u64,
    latency: hdrhistogram::Histogram<u64>,
}

impl Journey {
    /// One request; the answer if it had the expected status.
    async fn step(
        &mut self,
        what: &'static str,
        method: Method,
        path: &'static str,
        token: Option<&str>,
        body: Option<Value>,
        expected: u16,
    ) -> Option<Reply> {
        let body = body.map(|b| Bytes::from(b.to_string()));
        let started = Instant::now();
        let reply = self
            .client
            .call(|| loadgen::request(method.clone(), path, token, body.clone()))
            .await;
        let micros = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
        self.latency.saturating_record(micros);
        self.requests += 1;
        if reply.status.is_server_error() {
            self.server_errors += 1;
        }
        if reply.status.as_u16() == expected {
            Some(reply)
        } else {
            self.failed_at.get_or_insert(what);
            None
        }
    }

    async fn flow(&mut self, name: &str, me_calls: usize) -> Option<()> {
        let login = json!({"username": name, "password": PASSWORD});
        self.step(
            "register",
            Method::POST,
            REGISTER,
            None,
            Some(register_body(name)),
            201,
        )
        .await?;
        let tokens = self
            .step("login", Method::POST, LOGIN, None, Some(login), 200)
            .await?
            .json();
        let access = tokens["access_token"].as_str()?.to_owned();
        let refresh = json!({"refresh_token": tokens["refresh_token"].as_str()?});
        for _ in 0..me_calls {
            self.step("me", Method::GET, ME, Some(&access), None, 200)
                .await?;
        }
        let rotated = self
            .step("refresh", Method::POST, REFRESH, None, Some(refresh), 200)
            .await?
            .json();
        let access = rotated["access_token"].as_str()?.to_owned();
        self.step(
            "me after refresh",
            Method::GET,
            ME,
            Some(&access),
            None,
            200,
        )
        .await?;
        self.step("logout", Method::POST, LOGOUT, Some(&access), None, 204)
            .await?;
        self.step("me after logout", Method::GET, ME, Some(&access), None, 401)
            .await?;
        Some(())
    }
}

async fn journey(addr: SocketAddr, index: usize, me_calls: usize) -> Journey {
    let mut j = Journey {
        client: Client::new(addr),
        failed_at: None,
        requests: 0,
        server_errors: 0,
        latency: histogram(),
    };
    if j.flow(&format!("vu_{index}"), me_calls).await.is_none() {
        j.failed_at.get_or_insert("reading tokens");
    }
    j
}

/// Many users at once, each through a whole session's life.
pub async fn users(k: &Knobs, report: &mut Report) {
    let me_calls = 5;
    let gh = Gatehouse::start(
        "users",
        &[("GATEHOUSE__PASSWORD__SCRYPT_LOG_N", "10".to_owned())],
    );
    let addr = gh.addr();
    let cpu = loadgen::CpuWatch::start(gh.proc.pid());
    let started = Instant::now();
    let tasks: Vec<_> = (0..k.users)
        .map(|i| tokio::spawn(journey(addr, i, me_calls)))
        .collect();
    let mut completed = 0;
    let mut failures: BTreeMap<&'static str, usize> = BTreeMap::new();
    let mut requests = 0;
    let mut server_errors = 0;
    let mut latency = histogram();
    for task in tasks {
        match task.await {
            Ok(j) => {
                requests += j.requests;
                server_errors += j.server_errors;
                latency.add(&j.latency).expect("same bounds");
                match j.failed_at {
                    None => completed += 1,
                    Some(step) => *failures.entry(step).or_default() += 1,
                }
            }
            Err(_) => *failures.entry("panicked").or_default() += 1,
        }
    }
    let elapsed = started.elapsed();
    let background_cores = cpu.background_cores();
    let ok = completed == k.users && server_errors == 0;
    report.row(
        Row {
            scenario: format!(
                "{} virtual users: register, login, me ×{me_calls}, refresh, me, logout",
                k.users
            ),
            connections: Some(k.users),
            rps: Some(requests as f64 / elapsed.as_secs_f64().max(1e-9)),
            p50_ms: Some(quantile_ms(&latency, 0.5)),
            p99_ms: Some(quantile_ms(&latency, 0.99)),
            unexpected: Some(failures.values().sum::<usize>() as u64),
            background_cores,
            ..Row::default()
        }
        .with(format!(
            "{completed}/{} completed in {:.1} s, {server_errors} 5xx",
            k.users,
            elapsed.as_secs_f64()
        ))
        .target("all complete, no 5xx", ok),
    );
    report.detail(
        "users",
        json!({
            "users": k.users,
            "completed": completed,
            "failed_at": failures,
            "requests": requests,
            "server_errors": server_errors,
            "elapsed_s": elapsed.as_secs_f64(),
            "rps": requests as f64 / elapsed.as_secs_f64().max(1e-9),
            "p50_ms": quantile_ms(&latency, 0.5),
            "p99_ms": quantile_ms(&latency, 0.99),
        }),
    );
}

/// Shown under the table: what a figure was compared with.
pub fn bounds_note(bounds: &Bounds) -> String {
    let mut s = format!("cores (hash slots): {}", bounds.cores);
    if let (Some(h), Some(b)) = (bounds.hash_s, bounds.hashing()) {
        s.push_str(&format!(
            "; one scrypt hash (17, 8, 1): {} ms median, hashing bound {}/s",
            fmt_ms(h * 1000.0),
            fmt_rps(b)
        ));
    }
    s
}

/// The HS256 key of the `sessions` scenario's server, which the bench also
/// signs its access tokens with.
const SESSIONS_SECRET: &str = "gatehouse-bench-sessions-scenario-hs256-key-0123456789";
/// The `default` route class's limit there: never reached.
const SESSIONS_LIMIT: &str = "1000000000";
/// The one account every session of the `sessions` scenario belongs to.
const SESSIONS_USER: &str = "bench_sessions";
/// Far enough ahead that no session expires during the run: ten years, in ms.
const SESSIONS_LIFETIME_MS: i64 = 10 * 365 * 86_400_000;
/// How long the server keeps a cached session (`user_repo::cache::MAX_AGE_MS`).
const CACHE_MAX_AGE: Duration = Duration::from_secs(60);

fn unix_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// A UUID-shaped id (36 characters, as long as the server's own), unique per `i`.
fn uuid_shaped(tag: u32, i: usize) -> String {
    format!("{tag:08x}-0000-4000-8000-{i:012x}")
}

/// splitmix64 of `seq`: request number → a uniformly spread 64-bit value.
fn spread(seq: u64) -> u64 {
    let mut z = seq.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A SQLite file holding one account (registered through the server, so
/// that it has the schema and a real password hash) and `n` active sessions
/// of it (inserted directly, in one transaction).
struct SessionFixture {
    /// Holds the database; removed on drop.
    _dir: tempfile::TempDir,
    db: std::path::PathBuf,
    user_id: String,
    session_ids: Vec<String>,
}

async fn session_fixture(n: usize) -> SessionFixture {
    let dir = tempfile::Builder::new()
        .prefix("gatehouse-bench-sessions-")
        .tempdir()
        .expect("create a temp dir");
    let db = dir.path().join("gatehouse.db");
    {
        let gh = Gatehouse::start_on(&format!("sessions-setup-{n}"), &db, &[]);
        let mut c = Client::new(gh.addr());
        expect_status(
            &c.post(REGISTER, &register_body(SESSIONS_USER), None).await,
            201,
            "register",
        );
        // The client goes first, then the server: SIGTERM, and wait for it.
    }
    let mut conn = rusqlite::Connection::open(&db).expect("open the bench's SQLite file");
    conn.busy_timeout(Duration::from_secs(5))
        .expect("set a busy timeout");
    let user_id: String = conn
        .query_row(
            "SELECT id FROM users WHERE username = ?1",
            [SESSIONS_USER],
            |row| row.get(0),
        )
        .expect("the registered user in the database");
    let session_ids: Vec<String> = (0..n).map(|i| uuid_shaped(0x5e55_10e0, i)).collect();
    let now = unix_ms();
    let expires = now + SESSIONS_LIFETIME_MS;
    let tx = conn.transaction().expect("begin a transaction");
    {
        let mut insert = tx
            .prepare(
                "INSERT INTO sessions (id, user_id, refresh_digest, created_at, last_used_at,
                                       expires_at, absolute_expires_at, ip, user_agent)
                 VALUES (?1, ?2, ?3, ?4, ?4, ?5, ?5, '127.0.0.1', 'gatehouse-bench')",
            )
            .expect("prepare the session insert");
        for (i, id) in session_ids.iter().enumerate() {
            insert
                .execute(rusqlite::params![
                    id,
                    user_id,
                    format!("{i:064x}"),
                    now,
                    expires
                ])
                .expect("insert a session");
        }
    }
    tx.commit().expect("commit the sessions");
    drop(conn);
    SessionFixture {
        _dir: dir,
        db,
        user_id,
        session_ids,
    }
}

/// One `Authorization` header per session: an HS256 access token with the
/// claims and header the server signs (`token_issuer::Signer::sign`).
fn forge_tokens(user_id: &str, session_ids: &[String]) -> Vec<HeaderValue> {
    let key = jsonwebtoken::EncodingKey::from_secret(SESSIONS_SECRET.as_bytes())
        .expect("an HS256 key from the secret");
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
    header.typ = Some("JWT".into());
    let now = unix_ms().div_euclid(1000);
    session_ids
        .iter()
        .enumerate()
        .map(|(i, sid)| {
            // Builds before signing keys ignore the last three claims.
            let claims = json!({
                "sub": user_id,
                "sid": sid,
                "iat": now,
                "nbf": now,
                "exp": now + 3600,
                "iss": "gatehouse",
                "aud": "gatehouse-clients",
                "jti": uuid_shaped(0x0b0b_0b0b, i),
                "token_use": "access",
                "auth_time": now,
                "amr": ["pwd"],
                "roles": [],
            });
            let token = jsonwebtoken::encode(&header, &claims, &key).expect("HS256 signs");
            HeaderValue::from_str(&format!("Bearer {token}"))
                .expect("a token is a valid header value")
        })
        .collect()
}

/// `GET /users/me` with token `pick(seq)` of `tokens`.
fn me_with(tokens: Arc<Vec<HeaderValue>>, pick: fn(u64, usize) -> usize) -> MakeRequest {
    Arc::new(move |seq| {
        let mut request = loadgen::request(Method::GET, ME, None, None);
        let auth = tokens[pick(seq, tokens.len())].clone();
        request.headers_mut().insert("authorization", auth);
        request
    })
}

fn in_order(seq: u64, n: usize) -> usize {
    usize::try_from(seq).unwrap_or(usize::MAX) % n
}

fn uniform(seq: u64, n: usize) -> usize {
    usize::try_from(spread(seq) % n as u64).unwrap_or(0)
}

/// `/users/me` with one active session, then with `k.sessions` of them, all
/// in the session cache: each request carries a token drawn uniformly from
/// all sessions, so every cached entry stays in use. The bound: the many-
/// session rate is at least 0.9 × the one-session rate.
pub async fn sessions(k: &Knobs, report: &mut Report) {
    let counts = [1, k.sessions.max(1)];
    let mut detail = serde_json::Map::new();
    // req/s of the one-session server, per connection count.
    let mut single: BTreeMap<usize, f64> = BTreeMap::new();
    for (index, &n) in counts.iter().enumerate() {
        let fixture = session_fixture(n).await;
        let gh = Gatehouse::start_on(
            &format!("sessions-{n}"),
            &fixture.db,
            &[
                hs256(SESSIONS_SECRET),
                [(
                    "GATEHOUSE__RATE_LIMIT__ROUTES__DEFAULT__LIMIT",
                    SESSIONS_LIMIT.to_owned(),
                )]
                .into(),
            ]
            .concat(),
        );
        let addr = gh.addr();
        let pid = gh.proc.pid();
        let tokens = Arc::new(forge_tokens(&fixture.user_id, &fixture.session_ids));
        let probe = Client::new(addr)
            .call(|| me_with(Arc::clone(&tokens), in_order)(0))
            .await;
        expect_status(&probe, 200, "GET /users/me with a forged token");

        // Every token once: fills the cache.
        let conns = k.connections.iter().copied().max().unwrap_or(8);
        let plan = Plan::closed(conns, Duration::ZERO, Duration::from_secs(3600))
            .max_requests(n as u64)
            .server(pid);
        let warm_started = Instant::now();
        let warm = loadgen::run(addr, &plan, me_with(Arc::clone(&tokens), in_order)).await;
        let warm_s = warm_started.elapsed().as_secs_f64();
        let rss = gh.proc.rss_bytes().unwrap_or(0);
        report.row(
            Row::load(
                format!("  warm-up: each of {n} session tokens once"),
                &warm,
                &["200"],
            )
            .with(format!("{warm_s:.1} s, RSS after {:.0} MiB", mib(rss))),
        );
        let mut points = serde_json::Map::new();
        for &conns in &k.connections {
            let plan = Plan::closed(conns, k.warmup, k.duration).server(pid);
            let o = loadgen::run(addr, &plan, me_with(Arc::clone(&tokens), uniform)).await;
            let label = format!(
                "GET /users/me, {n} active session{}, tokens uniform",
                if n == 1 { "" } else { "s" }
            );
            let row = if index == 0 {
                single.insert(conns, o.rps());
                Row::load(label, &o, &["200"])
            } else {
                let r = ratio(o.rps(), single.get(&conns).copied()).unwrap_or(f64::NAN);
                points.insert(format!("ratio_c{conns}"), json!(r));
                Row::load(label, &o, &["200"])
                    .with(format!("{r:.2} × 1-session rate"))
                    .target("≥ 0.90 × 1 session", r >= 0.9)
            };
            report.row(row);
            points.insert(format!("users_me_c{conns}"), o.summary());
        }
        let oldest = warm_started.elapsed();
        if n > 1 && oldest > CACHE_MAX_AGE {
            println!(
                "  sessions: the first cached entries were {:.0} s old by the end, past the \
                 server's {} s cache age; some lookups went to the database",
                oldest.as_secs_f64(),
                CACHE_MAX_AGE.as_secs()
            );
        }
        points.insert("warmup".into(), warm.summary());
        points.insert("warmup_s".into(), json!(warm_s));
        points.insert("rss_after_warmup_bytes".into(), json!(rss));
        points.insert("rss_end_bytes".into(), json!(gh.proc.rss_bytes()));
        points.insert(
            "oldest_cache_entry_s_at_end".into(),
            json!(oldest.as_secs_f64()),
        );
        detail.insert(format!("sessions_{n}"), Value::Object(points));
    }
    report.detail("sessions", Value::Object(detail));
}

/// The settings that make a server sign and accept HS256 tokens under
/// `secret`; `auth.signing_algorithm` only where the binary knows it.
fn hs256(secret: &str) -> Vec<(&'static str, String)> {
    let mut settings = vec![("GATEHOUSE__AUTH__JWT_SECRET", secret.to_owned())];
    if procs::has_signing_keys() {
        settings.push(("GATEHOUSE__AUTH__SIGNING_ALGORITHM", "HS256".to_owned()));
    }
    settings
}

/// `/users/me` with tokens of each signing algorithm, beside the bare hyper
/// baseline: an Ed25519 or P-256 verify costs many HMACs, and the cache of
/// verified tokens is what keeps the asymmetric rows near the HS256 one. The
/// bound: EdDSA at least 0.9 × HS256.
pub async fn signing(k: &Knobs, report: &mut Report) {
    if !procs::has_signing_keys() {
        println!("  signing: skipped, the binary under test has no signing keys");
        return;
    }
    let algorithms = [
        ("HS256", hs256(SESSIONS_SECRET)),
        (
            "EdDSA",
            vec![("GATEHOUSE__AUTH__SIGNING_ALGORITHM", "EdDSA".to_owned())],
        ),
        (
            "ES256",
            vec![("GATEHOUSE__AUTH__SIGNING_ALGORITHM", "ES256".to_owned())],
        ),
    ];
    let mut servers = Vec::new();
    for (alg, settings) in &algorithms {
        let gh = Gatehouse::start(&format!("signing-{alg}"), settings);
        let token = user(&mut Client::new(gh.addr()), &format!("bench_{alg}")).await;
        servers.push((*alg, gh, token));
    }
    let me = Client::new(servers[0].1.addr())
        .get(ME, Some(&servers[0].2))
        .await;
    expect_status(&me, 200, "GET /users/me");
    let base = procs::start_baseline(me.body.len());
    let mut detail = serde_json::Map::new();
    for &conns in &k.connections {
        let plan = Plan::closed(conns, k.warmup, k.duration).server(base.pid());
        let o = loadgen::run(base.addr, &plan, get("/", None)).await;
        let base_rps = o.rps();
        report.row(Row::load("baseline: bare hyper", &o, &["200"]));
        detail.insert(format!("baseline_c{conns}"), o.summary());
        let mut hs_rps = None;
        for (alg, gh, token) in &servers {
            let plan = plan.clone().server(gh.proc.pid());
            let o = loadgen::run(gh.addr(), &plan, get(ME, Some(token.clone()))).await;
            let vs_base = ratio(o.rps(), Some(base_rps)).unwrap_or(f64::NAN);
            let mut row = Row::load(format!("GET /users/me, {alg} token"), &o, &["200"]);
            if *alg == "HS256" {
                hs_rps = Some(o.rps());
                row = row.with(format!("{vs_base:.2} × baseline"));
            } else {
                let vs_hs = ratio(o.rps(), hs_rps).unwrap_or(f64::NAN);
                row = row.with(format!("{vs_hs:.2} × HS256, {vs_base:.2} × baseline"));
                if *alg == "EdDSA" {
                    row = row.target("≥ 0.90 × HS256", vs_hs >= 0.9);
                }
                detail.insert(format!("{alg}_vs_hs256_c{conns}"), json!(vs_hs));
            }
            report.row(row);
            detail.insert(format!("users_me_{alg}_c{conns}"), o.summary());
        }
    }
    report.detail("signing", Value::Object(detail));
}
