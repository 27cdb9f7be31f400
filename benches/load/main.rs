//! Gatehouse under load: `cargo bench --bench load`.
//!
//! Starts the real binary (several instances, so that one scenario cannot
//! disturb another) and a bare hyper baseline server, drives them with the
//! in-process keep-alive load generator in [`loadgen`], and reports every
//! figure beside the bound it was measured against in the same run: a table
//! on stdout, `report.json` and `load.svg` under `<target dir>/bench/`, and
//! (after a run of every scenario) a copy of the chart in
//! `benches/report/load.svg` for the README.
//!
//! Knobs (environment variables):
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `BENCH_DURATION_S` | 5 | measured seconds per throughput point |
//! | `BENCH_WARMUP_S` | 1 | warm-up seconds before each point |
//! | `BENCH_CONNECTIONS` | 8,64 | connection counts for baseline, `/users/me`, health |
//! | `BENCH_HASH_CONNECTIONS` | 2,8 | connection counts for login and registration |
//! | `BENCH_HASH_DURATION_S` | `BENCH_DURATION_S` | measured seconds per login/registration point |
//! | `BENCH_STORM_LOGINS` | 8 | login connections in the login storm |
//! | `BENCH_STORM_RATE` | 200 | paced `/users/me` req/s during the storm |
//! | `BENCH_IDLE_CONNECTIONS` | 1000 | keep-alive connections for the memory figure |
//! | `BENCH_IPS` | 100000 | distinct client addresses (at most 131072) |
//! | `BENCH_USERS` | 200 | virtual users in the simulation |
//! | `BENCH_SESSIONS` | 110000 | active sessions in `sessions`, beside one (more than the 100 000 the session cache of `fe28f6b` held) |
//! | `BENCH_SCENARIOS` | all | `all`, `core`, or a list of `throughput,hashing,storm,memory,ratelimit,breaker,users,sessions,signing,postgres`, and `compare` (only when named) |
//! | `BENCH_GATEHOUSE_BIN` | built | the `gatehouse` binary to measure (say, an older build); unset: `cargo build --release -p gatehouse` first, and `<target dir>/release/gatehouse` |
//! | `BENCH_CONFIG` | `config.toml` | the configuration file the servers start with (an older build wants its own) |
//! | `BENCH_COMPARE_BIN` | unset | `compare`: the build to measure beside the one under test |
//! | `BENCH_COMPARE_CONFIG` | `config.toml` | `compare`: the configuration file that build starts with |
//! | `BENCH_ROUNDS` | 7 | `compare`: rounds of every point on both builds |
//!
//! `sessions` checks the session cache's bound: `/users/me` with
//! `BENCH_SESSIONS` active sessions, all cached, reaches at least 0.9 × its
//! rate with one. For each count it registers one user on a fresh SQLite
//! file, stops the server, inserts the sessions into the file, starts the
//! server again with a JWT secret of the bench's, forges one access token per
//! session, sends each once (filling the cache), then measures at
//! `BENCH_CONNECTIONS` with every request's token drawn uniformly from all.
//! It sets `auth.signing_algorithm = "HS256"` only where the binary knows
//! that key, so it can drive builds from before signing keys too.
//!
//! `compare` (run only when named, with `BENCH_COMPARE_BIN` set) measures
//! the routes of `throughput` and `hashing` on both builds in alternating
//! rounds and reports, per route, the median of the paired ratios after /
//! before (bound 0.95) and the server's CPU time per request; see
//! [`compare`].
//!
//! `signing` measures `/users/me` with HS256, EdDSA and ES256 tokens (one
//! server each) beside the bare hyper baseline; EdDSA's bound is 0.9 × HS256.

#![allow(
    clippy::disallowed_methods,
    reason = "a load bench measures and paces in wall time; the clock rule is for the service's logic"
)]

mod baseline;
mod compare;
mod loadgen;
mod procs;
mod report;
mod scenarios;

use std::collections::BTreeSet;
use std::str::FromStr;
use std::time::{Duration, Instant};

use scrypt::password_hash::PasswordHasher;
use scrypt::{Params, Scrypt};
use serde_json::json;

use report::Report;
use scenarios::Bounds;

const ALL: [&str; 10] = [
    "throughput",
    "hashing",
    "storm",
    "memory",
    "ratelimit",
    "breaker",
    "users",
    "sessions",
    "signing",
    "postgres",
];
/// Run only when named: it needs a second build.
const COMPARE: &str = "compare";
const CORE: [&str; 4] = ["throughput", "hashing", "storm", "memory"];

/// The run's settings, from the environment.
#[derive(Debug)]
pub struct Knobs {
    pub duration: Duration,
    pub warmup: Duration,
    pub connections: Vec<usize>,
    pub hash_connections: Vec<usize>,
    pub hash_duration: Duration,
    pub storm_logins: usize,
    pub storm_rate: f64,
    pub idle_connections: usize,
    pub ips: u64,
    pub users: usize,
    pub sessions: usize,
    pub scenarios: BTreeSet<String>,
    pub ratelimit_duration: Duration,
    pub breaker_reference: Duration,
    pub breaker_hold: Duration,
    pub breaker_after: Duration,
    pub rounds: usize,
}

fn var<T: FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v:?} is not a valid value")),
        _ => default,
    }
}

fn list(name: &str, default: &str) -> Vec<usize> {
    let raw = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let values: Vec<usize> = raw
        .split(',')
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.trim()
                .parse()
                .unwrap_or_else(|_| panic!("{name}={raw:?}: {s:?} is not a count"))
        })
        .collect();
    assert!(
        !values.is_empty() && values.iter().all(|&v| v > 0),
        "{name} needs positive counts"
    );
    values
}

fn seconds(name: &str, default: f64) -> Duration {
    let s: f64 = var(name, default);
    assert!(
        s.is_finite() && s >= 0.0,
        "{name} must be a number of seconds"
    );
    Duration::from_secs_f64(s)
}

impl Knobs {
    fn from_env() -> Self {
        let duration = seconds("BENCH_DURATION_S", 5.0);
        let scenarios = match std::env::var("BENCH_SCENARIOS")
            .unwrap_or_else(|_| "all".into())
            .trim()
        {
            "" | "all" => ALL.iter().map(|s| s.to_string()).collect(),
            "core" => CORE.iter().map(|s| s.to_string()).collect(),
            names => names
                .split(',')
                .map(|n| {
                    let n = n.trim();
                    assert!(
                        ALL.contains(&n) || n == COMPARE,
                        "BENCH_SCENARIOS: unknown scenario {n:?}; known: {ALL:?}, {COMPARE}, \
                         or all, core"
                    );
                    n.to_owned()
                })
                .collect(),
        };
        let ips: u64 = var("BENCH_IPS", 100_000);
        assert!(
            (1..=131_072).contains(&ips),
            "BENCH_IPS must be 1..=131072 (addresses come from 198.18.0.0/15)"
        );
        Self {
            duration,
            warmup: seconds("BENCH_WARMUP_S", 1.0),
            connections: list("BENCH_CONNECTIONS", "8,64"),
            hash_connections: list("BENCH_HASH_CONNECTIONS", "2,8"),
            hash_duration: seconds("BENCH_HASH_DURATION_S", duration.as_secs_f64()),
            storm_logins: var("BENCH_STORM_LOGINS", 8usize).max(1),
            storm_rate: var("BENCH_STORM_RATE", 200.0f64).max(1.0),
            idle_connections: var("BENCH_IDLE_CONNECTIONS", 1000usize),
            ips,
            users: var("BENCH_USERS", 200usize).max(1),
            sessions: var("BENCH_SESSIONS", 110_000usize).max(1),
            scenarios,
            ratelimit_duration: Duration::from_secs(5),
            breaker_reference: Duration::from_secs(2),
            breaker_hold: Duration::from_secs(4),
            breaker_after: Duration::from_secs(3),
            rounds: var("BENCH_ROUNDS", 7usize).max(1),
        }
    }

    pub fn runs(&self, scenario: &str) -> bool {
        self.scenarios.contains(scenario)
    }
}

/// Median wall time of one scrypt hash at Gatehouse's default parameters,
/// in seconds, and every sample.
fn time_hash(samples: usize) -> (f64, Vec<f64>) {
    let params = Params::new(
        Params::RECOMMENDED_LOG_N,
        Params::RECOMMENDED_R,
        Params::RECOMMENDED_P,
    )
    .expect("scrypt's recommended parameters");
    let hasher = Scrypt::new_with_params(params);
    let mut times: Vec<f64> = (0..samples)
        .map(|_| {
            let started = Instant::now();
            let hash = hasher
                .hash_password(b"a long unusual passphrase")
                .expect("scrypt hashes");
            std::hint::black_box(hash);
            started.elapsed().as_secs_f64()
        })
        .collect();
    let samples = times.clone();
    times.sort_by(f64::total_cmp);
    (times[times.len() / 2], samples)
}

fn main() {
    if let Ok(size) = std::env::var(procs::BASELINE_ENV) {
        let size = size.parse().expect("the baseline body size in bytes");
        baseline::serve(size);
        return;
    }
    let knobs = Knobs::from_env();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "Gatehouse load bench: {cores} CPUs, scenarios {:?}",
        knobs.scenarios
    );
    println!(
        "  {:.1} s warm-up + {:.1} s per point; connections {:?}, hashing connections {:?}",
        knobs.warmup.as_secs_f64(),
        knobs.duration.as_secs_f64(),
        knobs.connections,
        knobs.hash_connections
    );
    let started = Instant::now();

    let mut bounds = Bounds {
        cores,
        hash_s: None,
        baseline: Default::default(),
    };
    let mut hash_samples = Vec::new();
    if knobs.runs("hashing") || knobs.runs("storm") {
        let (median, samples) = time_hash(5);
        bounds.hash_s = Some(median);
        hash_samples = samples;
        println!("  {}", scenarios::bounds_note(&bounds));
    }

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime for the load generator");
    let report = runtime.block_on(async {
        let mut report = Report::new();
        if knobs.runs("throughput") || knobs.runs("hashing") {
            scenarios::main_instance(&knobs, &mut bounds, &mut report).await;
        }
        if knobs.runs("storm") {
            scenarios::storm(&knobs, &bounds, &mut report).await;
        }
        if knobs.runs("memory") {
            scenarios::memory(&knobs, &mut report).await;
        }
        if knobs.runs("ratelimit") {
            scenarios::rate_limit(&knobs, &mut report).await;
        }
        if knobs.runs("breaker") {
            scenarios::breaker(&knobs, &mut report).await;
        }
        if knobs.runs("users") {
            scenarios::users(&knobs, &mut report).await;
        }
        if knobs.runs("sessions") {
            scenarios::sessions(&knobs, &mut report).await;
        }
        if knobs.runs("signing") {
            scenarios::signing(&knobs, &mut report).await;
        }
        if knobs.runs("postgres") {
            scenarios::postgres(&knobs, &bounds, &mut report).await;
        }
        if knobs.runs(COMPARE) {
            compare::compare(&knobs, &mut report).await;
        }
        report
    });
    // Connections still closing belong to no one now.
    runtime.shutdown_timeout(Duration::from_secs(1));

    let table = report.table();
    let note = format!(
        "{}\nother CPU: cores kept busy by anything but the bench and the server under test \
         during that run (from /proc/stat); load average now: {}",
        scenarios::bounds_note(&bounds),
        std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!();
    println!("{table}");
    println!("{note}");
    println!("total bench time: {:.0} s", started.elapsed().as_secs_f64());

    let dir = report::report_dir();
    std::fs::create_dir_all(&dir).expect("create the report directory");
    let meta = json!({
        "generated_at": time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        "cpus": cores,
        "hash_s_median": bounds.hash_s,
        "hash_s_samples": hash_samples,
        "hashing_bound_per_s": bounds.hashing(),
        "baseline_rps": bounds.baseline,
        "knobs": {
            "duration_s": knobs.duration.as_secs_f64(),
            "warmup_s": knobs.warmup.as_secs_f64(),
            "connections": knobs.connections,
            "hash_connections": knobs.hash_connections,
            "hash_duration_s": knobs.hash_duration.as_secs_f64(),
            "storm_logins": knobs.storm_logins,
            "storm_rate": knobs.storm_rate,
            "idle_connections": knobs.idle_connections,
            "ips": knobs.ips,
            "users": knobs.users,
            "sessions": knobs.sessions,
            "scenarios": knobs.scenarios,
            "rounds": knobs.rounds,
        },
        "elapsed_s": started.elapsed().as_secs_f64(),
    });
    let json_path = dir.join("report.json");
    let text = serde_json::to_string_pretty(&report.json(meta)).expect("the report as JSON");
    std::fs::write(&json_path, text).expect("write report.json");
    std::fs::write(dir.join("table.md"), format!("{table}\n{note}\n")).expect("write table.md");
    println!("wrote {}", json_path.display());

    let svg = dir.join("load.svg");
    let title = format!("Gatehouse load bench ({cores} CPUs shared with the load generator)");
    match report::chart(&report.rows, &svg, &title) {
        Ok(()) => {
            println!("wrote {}", svg.display());
            // The latest full chart, where the README can show it.
            if knobs.scenarios.len() < ALL.len() {
                return;
            }
            let committed = procs::workspace_root().join("benches/report");
            let copied = std::fs::create_dir_all(&committed)
                .and_then(|()| std::fs::copy(&svg, committed.join("load.svg")));
            if let Err(e) = copied {
                eprintln!(
                    "bench: could not copy the chart to {}: {e}",
                    committed.display()
                );
            }
        }
        Err(e) => eprintln!("bench: could not draw the chart: {e}"),
    }
}
