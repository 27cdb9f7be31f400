//! `compare`: the routes of `throughput` and `hashing` on two builds, the one
//! under test ("after") and the one `BENCH_COMPARE_BIN` names ("before", with
//! the configuration `BENCH_COMPARE_CONFIG` names), each with its own
//! shipped configuration.
//!
//! Throughput on a shared machine drifts by more than the 5 % a regression
//! bound cares about, between runs of one binary. So the two builds run side
//! by side (all servers started once, only one loaded at a time), point by
//! point, for `BENCH_ROUNDS` rounds, the order of the two swapped from one
//! point and round to the next; each row reports the median of the paired
//! ratios after / before with their range, the medians of both rates, and the
//! server's CPU time per request, which the other load on the machine hardly
//! moves.

use serde_json::{Value, json};

use crate::Knobs;
use crate::loadgen::{self, Client, MakeRequest, Outcome, Plan};
use crate::procs::{self, Build, Gatehouse};
use crate::report::{Report, Row, fmt_rps};
use crate::scenarios::{
    HEALTH, LOGIN, ME, get, login, login_body, post_fixed, registrations, user,
};

/// The slowest an "after" route may be, as a fraction of "before".
const BOUND: f64 = 0.95;

/// The user both builds' servers serve.
const USER: &str = "bench_compare";

/// One build's servers: the shipped logging (the access line on) and `warn`.
struct Side {
    label: &'static str,
    info: Gatehouse,
    warn: Gatehouse,
    info_token: String,
    warn_token: String,
}

impl Side {
    async fn start(label: &'static str, build: &Build) -> Self {
        println!(
            "  compare {label}: {} with {}",
            build.binary.display(),
            build.config.display()
        );
        let info = Gatehouse::start_build(build, &format!("{label}-info"), &[]);
        let warn = Gatehouse::start_build(
            build,
            &format!("{label}-warn"),
            &[("GATEHOUSE__LOGGING__LEVEL", "warn".to_owned())],
        );
        let info_token = user(&mut Client::new(info.addr()), USER).await;
        let warn_token = user(&mut Client::new(warn.addr()), USER).await;
        Self {
            label,
            info,
            warn,
            info_token,
            warn_token,
        }
    }

    /// New access tokens, so that none expires during a long run (each
    /// round after the first, whose tokens `start` got).
    async fn log_in_again(&mut self) {
        self.info_token = login(&mut Client::new(self.info.addr()), USER).await;
        self.warn_token = login(&mut Client::new(self.warn.addr()), USER).await;
    }
}

#[derive(Clone, Copy)]
enum Route {
    Me,
    Health,
    Login,
    Register,
}

/// One row: a route, a logging level and a connection count.
struct Point {
    route: Route,
    warn: bool,
    connections: usize,
}

impl Point {
    fn name(&self) -> String {
        let route = match self.route {
            Route::Me => "GET /users/me",
            Route::Health => "GET /monitoring/health",
            Route::Login => "POST /auth/login",
            Route::Register => "POST /auth/register",
        };
        if self.warn {
            format!("compare: {route}, logging warn")
        } else {
            format!("compare: {route}")
        }
    }

    fn expected(&self) -> &'static [&'static str] {
        match self.route {
            Route::Register => &["201"],
            _ => &["200"],
        }
    }

    async fn run(&self, k: &Knobs, side: &Side, round: usize) -> Outcome {
        let (gh, token) = if self.warn {
            (&side.warn, &side.warn_token)
        } else {
            (&side.info, &side.info_token)
        };
        let (duration, make): (_, MakeRequest) = match self.route {
            Route::Me => (k.duration, get(ME, Some(token.clone()))),
            Route::Health => (k.duration, get(HEALTH, None)),
            Route::Login => (k.hash_duration, post_fixed(LOGIN, login_body(USER))),
            Route::Register => (
                k.hash_duration,
                registrations(format!("cmp{round}_{}_{}_", side.label, self.connections)),
            ),
        };
        let plan = Plan::closed(self.connections, k.warmup, duration).server(gh.proc.pid());
        loadgen::run(gh.addr(), &plan, make).await
    }
}

/// What one build measured at one point, round by round.
#[derive(Default)]
struct Samples {
    rps: Vec<f64>,
    cpu_us: Vec<f64>,
    background_cores: Vec<f64>,
    unexpected: u64,
}

impl Samples {
    fn add(&mut self, o: &Outcome, expected: &[&str]) {
        self.rps.push(o.rps());
        self.cpu_us.extend(o.server_cpu_us());
        self.background_cores.extend(o.background_cores);
        self.unexpected += o.unexpected(expected);
    }
}

/// The median of the finite values (NaN when there are none).
fn median(values: &[f64]) -> f64 {
    let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
    sorted.sort_by(f64::total_cmp);
    match sorted.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => sorted[n / 2],
        n => (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0,
    }
}

/// The smallest and the largest finite value.
fn range(values: &[f64]) -> (f64, f64) {
    let finite = || values.iter().copied().filter(|v| v.is_finite());
    let min = finite().min_by(f64::total_cmp);
    let max = finite().max_by(f64::total_cmp);
    (min.unwrap_or(f64::NAN), max.unwrap_or(f64::NAN))
}

/// CPU time per request, given in microseconds.
fn fmt_cpu(us: f64) -> String {
    if us >= 10_000.0 {
        format!("{:.0} ms", us / 1000.0)
    } else {
        format!("{us:.0} µs")
    }
}

pub async fn compare(k: &Knobs, report: &mut Report) {
    let Some(before) = Build::compared() else {
        println!(
            "  compare: skipped, {} names no build to compare with",
            procs::COMPARE_BIN_ENV
        );
        return;
    };
    let mut sides = [
        Side::start("before", &before).await,
        Side::start("after", &Build::under_test()).await,
    ];
    let mut points = Vec::new();
    for &connections in &k.connections {
        for route in [Route::Me, Route::Health] {
            for warn in [false, true] {
                points.push(Point {
                    route,
                    warn,
                    connections,
                });
            }
        }
    }
    for &connections in &k.hash_connections {
        for route in [Route::Login, Route::Register] {
            points.push(Point {
                route,
                warn: false,
                connections,
            });
        }
    }

    let mut samples: Vec<[Samples; 2]> = points.iter().map(|_| Default::default()).collect();
    for round in 0..k.rounds {
        println!("  compare: round {} of {}", round + 1, k.rounds);
        if round > 0 {
            for side in &mut sides {
                side.log_in_again().await;
            }
        }
        for (i, point) in points.iter().enumerate() {
            let order = if (round + i) % 2 == 0 { [0, 1] } else { [1, 0] };
            for side in order {
                let o = point.run(k, &sides[side], round).await;
                samples[i][side].add(&o, point.expected());
            }
        }
    }

    let mut detail = serde_json::Map::new();
    for (point, [before, after]) in points.iter().zip(&samples) {
        let ratios: Vec<f64> = after
            .rps
            .iter()
            .zip(&before.rps)
            .map(|(a, b)| a / b)
            .collect();
        let ratio = median(&ratios);
        let (low, high) = range(&ratios);
        let cpu = [median(&before.cpu_us), median(&after.cpu_us)];
        let unexpected = before.unexpected + after.unexpected;
        let background: Vec<f64> = [&before.background_cores, &after.background_cores]
            .into_iter()
            .flatten()
            .copied()
            .collect();
        report.row(
            Row {
                connections: Some(point.connections),
                unexpected: Some(unexpected),
                background_cores: Some(median(&background)),
                ..Row::figure(
                    point.name(),
                    format!(
                        "{ratio:.3} × before ({low:.2}–{high:.2}); {} → {} req/s; \
                         CPU {} → {} per request",
                        fmt_rps(median(&before.rps)),
                        fmt_rps(median(&after.rps)),
                        fmt_cpu(cpu[0]),
                        fmt_cpu(cpu[1]),
                    ),
                )
            }
            .target(
                format!("≥ {BOUND:.2} × before, all answered"),
                ratio >= BOUND && unexpected == 0,
            ),
        );
        detail.insert(
            format!("{}_c{}", point.name(), point.connections),
            json!({
                "ratio_median": ratio,
                "ratios": ratios,
                "before_rps": before.rps,
                "after_rps": after.rps,
                "before_cpu_us": before.cpu_us,
                "after_cpu_us": after.cpu_us,
                "before_unexpected": before.unexpected,
                "after_unexpected": after.unexpected,
            }),
        );
    }
    report.detail("compare", Value::Object(detail));
}
