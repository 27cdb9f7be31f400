//! Per-IP rate limits and the per-account login throttle: the pure sliding
//! window, the in-memory store, and the `RateLimiter` actor that owns it.
//!
//! The window is a true sliding log: a request is allowed when fewer than
//! `limit` allowed requests happened in the last `window_s`, so "at most
//! `limit` in any window" holds at every instant, with no fixed-window burst
//! at boundaries. Refused requests are not recorded. Idle keys are swept and
//! the number of tracked keys is capped, so a flood of distinct addresses costs
//! bounded memory. With `backend = "redis"`, windows and the throttle live in
//! Redis instead ([`redis`]), behind their own circuit breaker; spotting
//! bursts of failures from one address stays per process.

pub mod redis;

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::{Deserialize, Serialize};

use sha2::{Digest, Sha256};

use crate::breaker::{BreakerId, Breakers};
use crate::clock;
use crate::error::{RateLimitInfo, Result};
use crate::system::{self, ActorKind, Names};
use redis::RedisLimiter;

/// Which allowance a route draws from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RouteClass {
    Login,
    Register,
    Refresh,
    Password,
    Default,
}

impl RouteClass {
    pub fn name(self) -> &'static str {
        match self {
            Self::Login => "login",
            Self::Register => "register",
            Self::Refresh => "refresh",
            Self::Password => "password",
            Self::Default => "default",
        }
    }
}

/// One class's allowance; what is left out keeps the class's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteLimit {
    /// Requests allowed in any window.
    pub limit: Option<u32>,
    /// Window length in seconds.
    pub window_s: Option<u64>,
}

/// The `[rate_limit.routes]` table.
#[derive(Debug, Clone, Copy, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RouteLimits {
    pub login: RouteLimit,
    pub register: RouteLimit,
    pub refresh: RouteLimit,
    pub password: RouteLimit,
    pub default: RouteLimit,
}

impl RouteLimits {
    pub fn window(&self, class: RouteClass) -> Window {
        let (configured, default_limit) = match class {
            RouteClass::Login => (self.login, 5),
            RouteClass::Register => (self.register, 3),
            RouteClass::Refresh => (self.refresh, 30),
            RouteClass::Password => (self.password, 5),
            RouteClass::Default => (self.default, 300),
        };
        let window_s = configured.window_s.unwrap_or(60);
        Window {
            limit: configured.limit.unwrap_or(default_limit),
            window_ms: i64::try_from(window_s.saturating_mul(1000)).unwrap_or(i64::MAX),
        }
    }

    /// Every class with its allowance, for validation and documentation.
    pub fn all(&self) -> [(RouteClass, Window); 5] {
        [
            RouteClass::Login,
            RouteClass::Register,
            RouteClass::Refresh,
            RouteClass::Password,
            RouteClass::Default,
        ]
        .map(|c| (c, self.window(c)))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Memory,
    Redis,
}

/// What happens to a request when Redis cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBackendFailure {
    /// Decide with this instance's own windows and throttle, which count
    /// every request all along so that an outage hands out no fresh budget.
    Local,
    /// Serve without limits.
    Allow,
    /// Refuse limited routes (503).
    Deny,
}

/// The `[rate_limit]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitSettings {
    pub backend: Backend,
    pub redis_url: String,
    pub redis_prefix: String,
    pub on_backend_failure: OnBackendFailure,
    pub routes: RouteLimits,
    /// Most (client, class) windows and login names tracked at once; beyond it
    /// the least recently active are forgotten, but never a locked name.
    pub max_tracked_keys: usize,
}

impl Default for RateLimitSettings {
    fn default() -> Self {
        Self {
            backend: Backend::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "gatehouse:".into(),
            on_backend_failure: OnBackendFailure::Local,
            routes: RouteLimits::default(),
            max_tracked_keys: 250_000,
        }
    }
}

/// A sliding window: at most `limit` allowed requests in any `window_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub limit: u32,
    pub window_ms: i64,
}

impl Window {
    /// Decides one request at `now` against the times of earlier allowed
    /// requests, recording it when allowed. `Ok` and `Err` both carry the
    /// header values.
    pub fn decide(
        self,
        hits: &mut VecDeque<i64>,
        now: i64,
    ) -> std::result::Result<RateLimitInfo, RateLimitInfo> {
        let horizon = now.saturating_sub(self.window_ms);
        while hits.front().is_some_and(|&t| t <= horizon) {
            hits.pop_front();
        }
        let used = u32::try_from(hits.len()).unwrap_or(u32::MAX);
        let allowed = used < self.limit;
        if allowed {
            hits.push_back(now);
        }
        let used = used + u32::from(allowed);
        let info = RateLimitInfo {
            limit: self.limit,
            remaining: self.limit.saturating_sub(used),
            reset_s: hits.front().map_or(0, |&oldest| {
                clock::seconds_until(now, oldest.saturating_add(self.window_ms))
            }),
        };
        if allowed { Ok(info) } else { Err(info) }
    }
}

/// One client's recent allowed requests for one class.
#[derive(Debug, Default)]
struct Hits {
    times: VecDeque<i64>,
    /// The last decision was a refusal (so the next one is not the first).
    refusing: bool,
}

/// The outcome of counting one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Refused, and the first refusal since this client was last allowed:
    /// worth one log line, where the rest are not.
    pub first_refusal: bool,
    pub info: RateLimitInfo,
}

/// Failed-login bookkeeping for one login name.
#[derive(Debug, Clone, Copy, Default)]
struct Strikes {
    /// Attempts since the last success; counted when they start, so parallel
    /// guesses cannot overtake the limit.
    attempts: u32,
    locked_until: Option<i64>,
    /// Whether the lock in force has been logged as `account.throttled`.
    announced: bool,
    last_seen: i64,
}

impl Strikes {
    fn locked_at(&self, now: i64) -> bool {
        self.locked_until.is_some_and(|until| until > now)
    }
}

/// What a login attempt may do, as the throttle sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptDecision {
    Allowed,
    /// Locked; `first` is true for the first refusal of this lock (log it once).
    Locked {
        retry_after_s: u64,
        first: bool,
    },
}

/// Failed logins from one address within the current suspicion window.
#[derive(Debug, Default)]
struct Failures {
    count: u32,
    since: i64,
    /// Distinct login names tried (as [`NameKey`]s), up to [`MAX_NAMES_COUNTED`].
    names: HashSet<NameKey>,
    flagged: bool,
}

/// Failed logins from one address within [`SUSPICION_WINDOW_MS`] that make it suspicious.
pub const SUSPICIOUS_FAILURES: u32 = 20;
pub const SUSPICION_WINDOW_MS: i64 = 60_000;
const MAX_NAMES_COUNTED: usize = 100;

/// A burst of failed logins from one address, reported once per burst.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Suspicion {
    pub failures: u32,
    pub distinct_logins: usize,
}

/// The per-account throttle's rules.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ThrottleRule {
    pub max_failures: u32,
    pub lockout_ms: i64,
}

/// All limiter state of one process.
#[derive(Debug)]
pub struct MemoryLimiter {
    routes: RouteLimits,
    throttle: ThrottleRule,
    max_keys: usize,
    windows: HashMap<(IpAddr, RouteClass), Hits>,
    strikes: HashMap<NameKey, Strikes>,
    failures: HashMap<IpAddr, Failures>,
}

impl MemoryLimiter {
    pub fn new(routes: RouteLimits, throttle: ThrottleRule, max_keys: usize) -> Self {
        Self {
            routes,
            throttle,
            max_keys: max_keys.max(1),
            windows: HashMap::new(),
            strikes: HashMap::new(),
            failures: HashMap::new(),
        }
    }

    pub fn check(&mut self, class: RouteClass, client: IpAddr, now: i64) -> Decision {
        let window = self.routes.window(class);
        let key = (bucket(client), class);
        if self.windows.len() >= self.max_keys && !self.windows.contains_key(&key) {
            self.make_room(now);
        }
        let hits = self.windows.entry(key).or_default();
        let (allowed, info) = match window.decide(&mut hits.times, now) {
            Ok(info) => (true, info),
            Err(info) => (false, info),
        };
        let first_refusal = !allowed && !hits.refusing;
        hits.refusing = !allowed;
        Decision {
            allowed,
            first_refusal,
            info,
        }
    }

    /// Starts a login attempt for `login` (already normalized).
    pub fn attempt(&mut self, login: &str, now: i64) -> AttemptDecision {
        let rule = self.throttle;
        let key = name_key(login);
        if self.strikes.len() >= self.max_keys && !self.strikes.contains_key(&key) {
            self.make_room(now);
        }
        let entry = self.strikes.entry(key).or_default();
        entry.last_seen = now;
        match entry.locked_until {
            Some(until) if now < until => {
                let first = !entry.announced;
                entry.announced = true;
                return AttemptDecision::Locked {
                    retry_after_s: clock::seconds_until(now, until),
                    first,
                };
            }
            Some(_) => {
                *entry = Strikes {
                    last_seen: now,
                    ..Strikes::default()
                }
            }
            None => {}
        }
        entry.attempts += 1;
        if entry.attempts >= rule.max_failures {
            entry.locked_until = Some(now.saturating_add(rule.lockout_ms));
        }
        AttemptDecision::Allowed
    }

    /// A login for `login` succeeded: its failures are forgiven.
    pub fn succeeded(&mut self, login: &str) {
        self.strikes.remove(&name_key(login));
    }

    /// An attempt ended without a verdict on the password (the database was
    /// down, the client left): it is not a failure, so it stops counting.
    pub fn release(&mut self, login: &str) {
        if let Some(entry) = self.strikes.get_mut(&name_key(login)) {
            entry.attempts = entry.attempts.saturating_sub(1);
            if entry.attempts < self.throttle.max_failures && !entry.announced {
                entry.locked_until = None;
            }
        }
    }

    /// A login from `client` failed; says so once when that makes a burst.
    pub fn login_failed(&mut self, client: IpAddr, login: &str, now: i64) -> Option<Suspicion> {
        let client = bucket(client);
        if self.failures.len() >= self.max_keys && !self.failures.contains_key(&client) {
            self.make_room(now);
        }
        let entry = self.failures.entry(client).or_default();
        if now - entry.since >= SUSPICION_WINDOW_MS {
            *entry = Failures {
                since: now,
                ..Failures::default()
            };
        }
        entry.count += 1;
        if entry.names.len() < MAX_NAMES_COUNTED {
            entry.names.insert(name_key(login));
        }
        if entry.count >= SUSPICIOUS_FAILURES && !entry.flagged {
            entry.flagged = true;
            return Some(Suspicion {
                failures: entry.count,
                distinct_logins: entry.names.len(),
            });
        }
        None
    }

    /// Forgets windows with no hit inside them and login names idle for a lockout.
    pub fn sweep(&mut self, now: i64) {
        let routes = self.routes;
        self.windows.retain(|(_, class), hits| {
            hits.times
                .back()
                .is_some_and(|&t| t > now.saturating_sub(routes.window(*class).window_ms))
        });
        let idle = now.saturating_sub(self.throttle.lockout_ms);
        self.strikes
            .retain(|_, s| s.locked_at(now) || s.last_seen > idle);
        self.failures
            .retain(|_, f| now - f.since < SUSPICION_WINDOW_MS);
        self.windows.shrink_to_fit();
        self.strikes.shrink_to_fit();
        self.failures.shrink_to_fit();
    }

    /// At the key cap: sweep, and if that frees nothing, forget the least
    /// recently active tenth. A locked name is never forgotten before its lock
    /// ends, or flooding new names would lift it; locks need no cap of their
    /// own, since each costs `max_failures` verified passwords, and hashing
    /// throughput bounds how many can be alive within one lockout.
    fn make_room(&mut self, now: i64) {
        self.sweep(now);
        if self.windows.len() >= self.max_keys {
            forget_least_recent_tenth(
                &mut self.windows,
                |h| h.times.back().copied().unwrap_or(i64::MIN),
                |_| false,
            );
        }
        if self.strikes.len() >= self.max_keys {
            forget_least_recent_tenth(&mut self.strikes, |s| s.last_seen, |s| s.locked_at(now));
        }
        if self.failures.len() >= self.max_keys {
            forget_least_recent_tenth(&mut self.failures, |f| f.since, |_| false);
        }
    }

    /// Keys tracked now: (client, class) windows and login names.
    pub fn tracked(&self) -> (usize, usize) {
        (self.windows.len(), self.strikes.len())
    }
}

/// Forgets the least recently seen tenth of the entries that `keep` does not protect.
fn forget_least_recent_tenth<K, V>(
    map: &mut HashMap<K, V>,
    last_seen: impl Fn(&V) -> i64,
    keep: impl Fn(&V) -> bool,
) {
    let mut seen: Vec<i64> = map.values().filter(|v| !keep(v)).map(&last_seen).collect();
    if seen.is_empty() {
        return;
    }
    let cut = seen.len() / 10;
    let (_, &mut threshold, _) = seen.select_nth_unstable(cut);
    map.retain(|_, v| keep(v) || last_seen(v) > threshold);
}

/// A login name as the throttle keys it: a digest, so that neither its
/// length nor its content is what the limiter stores.
pub type NameKey = [u8; 16];

pub fn name_key(login: &str) -> NameKey {
    let digest = Sha256::digest(login.as_bytes());
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest[..16]);
    key
}

/// The bucket a client address counts against: itself for IPv4, its /64 for
/// IPv6 (one subscriber usually holds a whole /64, so per-address buckets
/// would hand them millions of allowances).
pub fn bucket(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6((u128::from(v6) & !u128::from(u64::MAX)).into()),
        },
    }
}

/// Messages the `RateLimiter` accepts. Decisions arrive here only with the
/// Redis backend: memory decisions take microseconds under the shared
/// state's lock, so callers make them directly rather than queue behind each
/// other in one mailbox (and never fail open because the actor is restarting).
pub enum RateLimiterMsg {
    /// Count one request of `class` from `client`; `Err` when Redis failed.
    Check {
        class: RouteClass,
        client: IpAddr,
        reply: RpcReplyPort<Result<Decision>>,
    },
    /// Start a login attempt for a (normalized) login name.
    Attempt {
        login: String,
        reply: RpcReplyPort<Result<AttemptDecision>>,
    },
    /// A login for this (normalized) name succeeded.
    Succeeded { login: String },
    /// A login attempt for this (normalized) name ended without a verdict.
    Release { login: String },
    /// Forget idle keys.
    Sweep,
    /// Fail on purpose (chaos testing): the supervisor must restart us.
    Crash,
}

/// What the `RateLimiter` is started with. The state outlives the actor, so
/// that a restart never hands out fresh allowances.
#[derive(Clone)]
pub struct RateLimiterArgs {
    /// This process's limiter: every decision with the memory backend; with
    /// Redis, the spotting of failure bursts. Swept by the actor.
    pub local: Arc<parking_lot::Mutex<MemoryLimiter>>,
    /// Windows and throttle shared through Redis, when that is the backend.
    pub shared: Option<SharedLimiter>,
}

/// The Redis backend and the breakers its calls pass through.
#[derive(Clone)]
pub struct SharedLimiter {
    pub redis: Arc<RedisLimiter>,
    pub breakers: Breakers,
}

impl SharedLimiter {
    /// Runs one Redis call off the mailbox, through the `redis` breaker, and
    /// sends the outcome to `reply` when there is one.
    fn spawn<T, F>(
        &self,
        reply: Option<RpcReplyPort<Result<T>>>,
        call: impl FnOnce(Arc<RedisLimiter>) -> F,
    ) where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let work = call(Arc::clone(&self.redis));
        let breakers = self.breakers.clone();
        tokio::spawn(async move {
            let outcome = breakers.run(BreakerId::Redis, work).await;
            if let Some(reply) = reply {
                let _ = reply.send(outcome);
            }
        });
    }
}

pub struct RateLimiter;

/// How often idle keys are swept.
const SWEEP_EVERY: Duration = Duration::from_secs(10);

impl Actor for RateLimiter {
    type Msg = RateLimiterMsg;
    type State = RateLimiterArgs;
    type Arguments = RateLimiterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RateLimiterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        myself.send_interval(SWEEP_EVERY, || RateLimiterMsg::Sweep);
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = clock::unix_ms();
        let Some(shared) = &state.shared else {
            match msg {
                RateLimiterMsg::Sweep => state.local.lock().sweep(now),
                RateLimiterMsg::Crash => return Err(CRASH.into()),
                // Memory decisions are made by the callers themselves.
                _ => {}
            }
            return Ok(());
        };
        match msg {
            RateLimiterMsg::Check {
                class,
                client,
                reply,
            } => shared.spawn(Some(reply), move |redis| async move {
                redis.check(class, client, now).await
            }),
            RateLimiterMsg::Attempt { login, reply } => shared
                .spawn(Some(reply), move |redis| async move {
                    redis.attempt(&login, now).await
                }),
            // Nobody waits for these; a failure only leaves strikes to expire.
            RateLimiterMsg::Succeeded { login } => {
                shared.spawn(
                    None,
                    move |redis| async move { redis.succeeded(&login).await },
                )
            }
            RateLimiterMsg::Release { login } => shared.spawn(None, move |redis| async move {
                redis.release(&login, now).await
            }),
            RateLimiterMsg::Sweep => state.local.lock().sweep(now),
            RateLimiterMsg::Crash => return Err(CRASH.into()),
        }
        Ok(())
    }
}

const CRASH: &str = "crash requested through the chaos route";

/// The callers' side of rate limiting, valid across restarts of the actor.
/// This process's own windows and throttle count every request; with the
/// Redis backend the shared decision is asked of the `RateLimiter` and wins,
/// and the local one is what `on_backend_failure = "local"` falls back to.
#[derive(Clone)]
pub struct Limits {
    local: Arc<parking_lot::Mutex<MemoryLimiter>>,
    shared: bool,
    names: Arc<Names>,
    timeout: Duration,
}

/// The shared backend could not decide; what this process alone decided.
pub struct Unshared<T> {
    pub error: crate::error::Error,
    pub local: T,
}

impl Limits {
    pub fn new(args: &RateLimiterArgs, names: Arc<Names>, timeout: Duration) -> Self {
        Self {
            local: Arc::clone(&args.local),
            shared: args.shared.is_some(),
            names,
            timeout,
        }
    }

    fn actor(&self) -> &str {
        self.names.get(ActorKind::RateLimiter)
    }

    /// Counts one request of `class` from `client`.
    pub async fn check(
        &self,
        class: RouteClass,
        client: IpAddr,
    ) -> Result<Decision, Unshared<Decision>> {
        let local = self.local.lock().check(class, client, clock::unix_ms());
        if !self.shared {
            return Ok(local);
        }
        let shared = system::call(self.actor(), self.timeout, |reply| RateLimiterMsg::Check {
            class,
            client,
            reply,
        })
        .await;
        shared
            .and_then(|decided| decided)
            .map_err(|error| Unshared { error, local })
    }

    /// Starts a login attempt against the throttle `key`. With the Redis
    /// backend, `Ok` means Redis counted it too.
    pub async fn attempt(
        &self,
        key: &ThrottleKey,
    ) -> Result<AttemptDecision, Unshared<AttemptDecision>> {
        let local = self.local.lock().attempt(key.as_str(), clock::unix_ms());
        if !self.shared {
            return Ok(local);
        }
        let login = key.as_str().to_owned();
        let shared = system::call(self.actor(), self.timeout, |reply| {
            RateLimiterMsg::Attempt { login, reply }
        })
        .await;
        shared
            .and_then(|decided| decided)
            .map_err(|error| Unshared { error, local })
    }

    /// A login counted against `key` succeeded.
    pub fn succeeded(&self, key: &ThrottleKey) {
        self.local.lock().succeeded(key.as_str());
        if self.shared {
            let login = key.as_str().to_owned();
            system::cast(self.actor(), RateLimiterMsg::Succeeded { login });
        }
    }

    /// A login attempt counted against `key` ended without a verdict;
    /// `shared` says whether the shared backend had counted it.
    pub fn release(&self, key: &ThrottleKey, shared: bool) {
        self.local.lock().release(key.as_str());
        if shared {
            let login = key.as_str().to_owned();
            system::cast(self.actor(), RateLimiterMsg::Release { login });
        }
    }

    /// Whether decisions are shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// A login from `client` failed; `Some` once per burst from one address.
    pub fn login_failed(&self, client: IpAddr, login: &str) -> Option<Suspicion> {
        self.local
            .lock()
            .login_failed(client, login, clock::unix_ms())
    }
}

/// What the per-account throttle counts failures against: the account, when
/// the login name is one of its names (its username and its email then share
/// one count), else the name as typed, so that unknown names are throttled
/// like real ones and the answers reveal nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ThrottleKey(String);

impl ThrottleKey {
    pub fn account(user_id: &str) -> Self {
        Self(format!("account:{user_id}"))
    }

    /// An unknown login name, already normalized.
    pub fn name(login: &str) -> Self {
        Self(format!("name:{login}"))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    fn window(limit: u32, window_s: i64) -> Window {
        Window {
            limit,
            window_ms: window_s * 1000,
        }
    }

    #[test]
    fn allows_limit_then_refuses_and_reports_headers() {
        let w = window(3, 60);
        let mut hits = VecDeque::new();
        let r: Vec<_> = (0..4).map(|i| w.decide(&mut hits, i * 1000)).collect();
        assert_eq!(
            r[0],
            Ok(RateLimitInfo {
                limit: 3,
                remaining: 2,
                reset_s: 60
            })
        );
        assert_eq!(r[2].unwrap().remaining, 0);
        assert_eq!(
            r[3],
            Err(RateLimitInfo {
                limit: 3,
                remaining: 0,
                reset_s: 57
            })
        );
        assert_eq!(hits.len(), 3, "refused requests are not recorded");
    }

    #[test]
    fn no_double_burst_at_window_boundaries() {
        // Three at the very end of one minute: a fixed window would allow three
        // more at the start of the next.
        let w = window(3, 60);
        let mut hits = VecDeque::new();
        for t in [59_000, 59_500, 59_900] {
            assert!(w.decide(&mut hits, t).is_ok());
        }
        assert!(w.decide(&mut hits, 60_100).is_err());
        assert!(w.decide(&mut hits, 118_999).is_err());
        assert!(
            w.decide(&mut hits, 119_000).is_ok(),
            "the first hit left the window"
        );
        assert!(w.decide(&mut hits, 119_001).is_err());
    }

    /// Brute force: no interval of window length ever holds more than `limit` allowed hits.
    #[test]
    fn at_most_limit_in_any_window() {
        let w = window(5, 10);
        let mut hits = VecDeque::new();
        let mut allowed = Vec::new();
        let mut t = 0i64;
        for i in 0..2_000i64 {
            t += (i * 7919) % 1_300; // irregular gaps, some bursts
            if w.decide(&mut hits, t).is_ok() {
                allowed.push(t);
            }
        }
        for (i, &start) in allowed.iter().enumerate() {
            let inside = allowed[i..]
                .iter()
                .take_while(|&&x| x < start + w.window_ms)
                .count();
            assert!(inside <= 5, "{inside} hits in the window from {start}");
        }
        assert!(allowed.len() > 100);
    }

    #[test]
    fn classes_and_clients_are_separate() {
        let mut l = MemoryLimiter::new(RouteLimits::default(), rule(), 100);
        for _ in 0..5 {
            assert!(l.check(RouteClass::Login, IP, 0).allowed);
        }
        let refused = l.check(RouteClass::Login, IP, 0);
        assert!(!refused.allowed && refused.first_refusal);
        let again = l.check(RouteClass::Login, IP, 0);
        assert!(
            !again.allowed && !again.first_refusal,
            "logged once, not per request"
        );
        assert!(l.check(RouteClass::Register, IP, 0).allowed);
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(l.check(RouteClass::Login, other, 0).allowed);
        assert!(
            l.check(RouteClass::Login, IP, 60_000).allowed,
            "the window slid"
        );
        for _ in 0..4 {
            l.check(RouteClass::Login, IP, 60_000);
        }
        assert!(
            l.check(RouteClass::Login, IP, 60_000).first_refusal,
            "a new run is logged again"
        );
    }

    fn rule() -> ThrottleRule {
        ThrottleRule {
            max_failures: 3,
            lockout_ms: 300_000,
        }
    }

    #[test]
    fn throttle_locks_after_max_failures_and_success_resets() {
        let mut l = MemoryLimiter::new(RouteLimits::default(), rule(), 100);
        for _ in 0..3 {
            assert_eq!(l.attempt("alice", 0), AttemptDecision::Allowed);
        }
        assert_eq!(
            l.attempt("alice", 1_000),
            AttemptDecision::Locked {
                retry_after_s: 299,
                first: true
            }
        );
        assert_eq!(
            l.attempt("alice", 2_000),
            AttemptDecision::Locked {
                retry_after_s: 298,
                first: false
            }
        );
        assert_eq!(l.attempt("bob", 2_000), AttemptDecision::Allowed);
        // After the lockout the name starts afresh.
        assert_eq!(l.attempt("alice", 300_000), AttemptDecision::Allowed);
        assert_eq!(l.attempt("alice", 300_001), AttemptDecision::Allowed);
        l.succeeded("alice");
        for _ in 0..3 {
            assert_eq!(l.attempt("alice", 300_002), AttemptDecision::Allowed);
        }
        assert!(matches!(
            l.attempt("alice", 300_003),
            AttemptDecision::Locked { .. }
        ));
    }

    #[test]
    fn sweep_and_cap_bound_memory() {
        let mut l = MemoryLimiter::new(RouteLimits::default(), rule(), 1_000);
        for i in 0..5_000u32 {
            let ip = IpAddr::V4(i.into());
            assert!(l.check(RouteClass::Default, ip, i64::from(i)).allowed);
        }
        assert!(l.tracked().0 <= 1_000, "{:?}", l.tracked());
        l.sweep(61_000 + 5_000);
        assert_eq!(l.tracked().0, 0);
        for i in 0..2_000 {
            l.attempt(&format!("user{i}"), 0);
        }
        assert!(l.tracked().1 <= 1_000);
        l.sweep(300_001);
        assert_eq!(l.tracked().1, 0);
    }

    #[test]
    fn flooding_new_names_never_lifts_a_lock() {
        let mut l = MemoryLimiter::new(RouteLimits::default(), rule(), 100);
        for _ in 0..3 {
            l.attempt("victim", 0);
        }
        for i in 0..5_000 {
            l.attempt(&format!("flood{i}"), 1 + i64::from(i));
        }
        assert!(l.tracked().1 <= 101, "{:?}", l.tracked());
        assert!(matches!(
            l.attempt("victim", 10_000),
            AttemptDecision::Locked { .. }
        ));
        // Once it has run out, the lock goes like any idle name.
        l.sweep(300_001);
        assert_eq!(l.attempt("victim", 300_001), AttemptDecision::Allowed);
    }

    #[test]
    fn attempts_without_a_verdict_are_given_back() {
        let mut l = MemoryLimiter::new(RouteLimits::default(), rule(), 100);
        for _ in 0..3 {
            assert_eq!(l.attempt("carol", 0), AttemptDecision::Allowed);
        }
        // The third attempt locked the name provisionally; it never got a verdict.
        l.release("carol");
        assert_eq!(l.attempt("carol", 1), AttemptDecision::Allowed);
        assert!(matches!(
            l.attempt("carol", 2),
            AttemptDecision::Locked { first: true, .. }
        ));
        // Once somebody was refused, the lock stands.
        l.release("carol");
        assert!(matches!(
            l.attempt("carol", 3),
            AttemptDecision::Locked { .. }
        ));
        l.release("nobody-at-all");
    }

    #[test]
    fn ipv6_clients_share_their_slash_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::2".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(bucket(a), bucket(b));
        assert_ne!(bucket(a), bucket(other));
        let mapped: IpAddr = "::ffff:192.0.2.1".parse().unwrap();
        assert_eq!(bucket(mapped), IP);
        let mut l = MemoryLimiter::new(RouteLimits::default(), rule(), 100);
        for _ in 0..5 {
            assert!(l.check(RouteClass::Login, a, 0).allowed);
        }
        assert!(
            !l.check(RouteClass::Login, b, 0).allowed,
            "a new address in the same /64"
        );
        assert!(l.check(RouteClass::Login, other, 0).allowed);
    }

    #[test]
    fn throttle_keys_have_a_fixed_size_whatever_the_name() {
        let mut l = MemoryLimiter::new(RouteLimits::default(), rule(), 100);
        l.attempt(&"x".repeat(60_000), 0);
        assert_eq!(std::mem::size_of::<NameKey>(), 16);
        assert_eq!(l.tracked().1, 1);
    }

    #[test]
    fn a_burst_of_failures_from_one_address_is_flagged_once() {
        let mut l = MemoryLimiter::new(RouteLimits::default(), rule(), 100);
        for i in 0..SUSPICIOUS_FAILURES - 1 {
            assert_eq!(l.login_failed(IP, &format!("name{}", i % 3), 1_000), None);
        }
        let other: IpAddr = "192.0.2.9".parse().unwrap();
        assert_eq!(
            l.login_failed(other, "x", 1_000),
            None,
            "counted per address"
        );
        let flagged = l.login_failed(IP, "name0", 2_000).unwrap();
        assert_eq!(
            flagged,
            Suspicion {
                failures: SUSPICIOUS_FAILURES,
                distinct_logins: 3
            }
        );
        assert_eq!(l.login_failed(IP, "name0", 3_000), None, "once per burst");
        // A new window starts a new count.
        let later = 1_000 + SUSPICION_WINDOW_MS;
        for _ in 0..SUSPICIOUS_FAILURES - 1 {
            assert_eq!(l.login_failed(IP, "again", later), None);
        }
        assert!(l.login_failed(IP, "again", later).is_some());
    }

    #[test]
    fn config_overrides_one_field_and_keeps_class_defaults() {
        let limits: RouteLimits = serde_json::from_str(r#"{"login": {"window_s": 30}}"#).unwrap();
        assert_eq!(
            limits.window(RouteClass::Login),
            Window {
                limit: 5,
                window_ms: 30_000
            }
        );
        assert_eq!(limits.window(RouteClass::Default).limit, 300);
        assert!(serde_json::from_str::<RouteLimits>(r#"{"logn": {}}"#).is_err());
    }
}
