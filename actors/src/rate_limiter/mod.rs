//! The `RateLimiter` actor: per-client windows ([`window`]), the per-account
//! login throttle ([`throttle`]) and burst detection ([`bursts`]), all owned
//! by the actor, which creates them when it starts. Callers ask it through
//! [`RateLimits`]; a decision is one message (a microsecond), and sweeping
//! idle keys goes one shard at a time, so no request ever waits on a sweep.
//!
//! With `backend = "redis"` the windows and the throttle are decided by Redis
//! ([`redis`]), behind their own circuit breaker, and shared by every
//! instance; this process still counts every request itself, which is what
//! `on_backend_failure = "local"` falls back to while Redis cannot be asked,
//! so an outage hands out no fresh budget. Bursts are always counted here.
//!
//! A restart starts from empty windows and throttle with the memory backend
//! (there is no durable source for them); with Redis the shared state is
//! untouched.

pub mod bursts;
pub mod redis;
mod shards;
pub mod throttle;
pub mod window;

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Deserialize;

use crate::breaker::{BreakerId, Breakers};
use crate::error::{Error, Result};
use crate::system::{self, ActorKind, Names};
pub use bursts::{SUSPICION_WINDOW_MS, Suspicion};
use redis::RedisLimiter;
pub use throttle::{AttemptDecision, ThrottleKey, ThrottleRule};
pub use window::{Decision, RouteClass, RouteLimit, RouteLimits, Window};

/// Where windows and the throttle are decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Memory,
    Redis,
}

/// What happens to a request when Redis cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBackendFailure {
    /// Decide with this instance's own windows and throttle.
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

/// The shared backend could not decide; what this process alone decided.
#[derive(Debug)]
pub struct Unshared<T> {
    pub error: Error,
    pub local: T,
}

/// A decision: the shared backend's, or why it has none and this process's.
pub type Checked<T> = std::result::Result<T, Unshared<T>>;

/// How a counted login attempt ended, when it did not stay a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settlement {
    /// The password was right: the count is forgiven.
    Succeeded,
    /// No verdict (the database failed, the client left): the attempt stops counting.
    Released,
}

/// Messages the `RateLimiter` accepts. Times come from the caller's clock.
pub enum RateLimiterMsg {
    /// Count one request of `class` from `client`.
    Check {
        class: RouteClass,
        client: IpAddr,
        now: i64,
        reply: RpcReplyPort<Checked<Decision>>,
    },
    /// Start a login attempt against `key`.
    Attempt {
        key: ThrottleKey,
        now: i64,
        reply: RpcReplyPort<Checked<AttemptDecision>>,
    },
    /// A counted attempt ended otherwise than as a failure; `shared` says
    /// whether Redis had counted it.
    Settle {
        key: ThrottleKey,
        settlement: Settlement,
        shared: bool,
    },
    /// An operator lifts `key`'s lock and forgives its failures.
    Unlock {
        key: ThrottleKey,
        reply: RpcReplyPort<Checked<()>>,
    },
    /// Until when each of `keys` is locked, if it is.
    LockedUntil {
        keys: Vec<ThrottleKey>,
        now: i64,
        reply: RpcReplyPort<Checked<Vec<Option<i64>>>>,
    },
    /// A login of `login` (normalized) from `client` failed; the reply says
    /// whether that makes a burst worth flagging.
    LoginFailed {
        client: IpAddr,
        login: String,
        now: i64,
        reply: RpcReplyPort<Option<Suspicion>>,
    },
    /// Forget idle keys in the next shard.
    Sweep { now: i64 },
    /// Fail on purpose (chaos testing): the supervisor must restart us.
    Crash,
}

/// What the `RateLimiter` is started with: settings only; it builds its state.
#[derive(Clone)]
pub struct RateLimiterArgs {
    pub settings: RateLimitSettings,
    pub throttle: ThrottleRule,
    /// For the `redis` breaker, which Redis calls pass through.
    pub breakers: Breakers,
    pub clock: crate::clock::SharedClock,
}

/// Where the shared decisions come from.
enum Shared {
    /// Nowhere: this process decides alone.
    Nothing,
    /// Redis, through the `redis` breaker.
    Redis {
        redis: Arc<RedisLimiter>,
        breakers: Breakers,
    },
}

impl Shared {
    /// Asks Redis off the mailbox and answers `reply` with its decision, or
    /// with `local` when it could not decide.
    fn decide<T, F>(
        &self,
        local: T,
        reply: RpcReplyPort<Checked<T>>,
        ask: impl FnOnce(Arc<RedisLimiter>) -> F,
    ) where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let Self::Redis { redis, breakers } = self else {
            let _ = reply.send(Ok(local));
            return;
        };
        let asked = ask(Arc::clone(redis));
        let breakers = breakers.clone();
        tokio::spawn(async move {
            let decided = breakers.run(BreakerId::Redis, asked).await;
            let _ = reply.send(decided.map_err(|error| Unshared { error, local }));
        });
    }

    /// Tells Redis something nobody waits for; a failure only leaves strikes to expire.
    fn tell<F>(&self, tell: impl FnOnce(Arc<RedisLimiter>) -> F)
    where
        F: Future<Output = Result<()>> + Send + 'static,
    {
        if let Self::Redis { redis, breakers } = self {
            let told = tell(Arc::clone(redis));
            let breakers = breakers.clone();
            tokio::spawn(async move {
                let _ = breakers.run(BreakerId::Redis, told).await;
            });
        }
    }
}

/// The actor's state: this process's counts and the shared backend.
pub struct Limiter {
    windows: window::Windows,
    throttle: throttle::Throttle,
    bursts: bursts::Bursts,
    shared: Shared,
    /// The shard the next sweep forgets idle keys in.
    sweep_cursor: usize,
}

/// How often a full sweep of idle keys completes (one shard per tick).
const SWEEP_EVERY: Duration = Duration::from_secs(10);

pub struct RateLimiter;

impl Actor for RateLimiter {
    type Msg = RateLimiterMsg;
    type State = Limiter;
    type Arguments = RateLimiterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: RateLimiterArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let settings = &args.settings;
        let keys = settings.max_tracked_keys;
        let shared = match settings.backend {
            Backend::Memory => Shared::Nothing,
            Backend::Redis => Shared::Redis {
                redis: Arc::new(RedisLimiter::new(
                    &settings.redis_url,
                    &settings.redis_prefix,
                    settings.routes,
                    args.throttle,
                )?),
                breakers: args.breakers.clone(),
            },
        };
        let clock = args.clock;
        myself.send_interval(SWEEP_EVERY / shards::SHARDS as u32, move || {
            RateLimiterMsg::Sweep {
                now: clock.now_ms(),
            }
        });
        Ok(Limiter {
            windows: window::Windows::new(settings.routes, keys),
            throttle: throttle::Throttle::new(args.throttle, keys),
            bursts: bursts::Bursts::new(keys),
            shared,
            sweep_cursor: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RateLimiterMsg::Check {
                class,
                client,
                now,
                reply,
            } => {
                let local = state.windows.check(class, client, now);
                state.shared.decide(local, reply, move |redis| async move {
                    redis.check(class, client, now).await
                });
            }
            RateLimiterMsg::Attempt { key, now, reply } => {
                let local = state.throttle.attempt(&key, now);
                state.shared.decide(local, reply, move |redis| async move {
                    redis.attempt(&key, now).await
                });
            }
            RateLimiterMsg::Settle {
                key,
                settlement,
                shared,
            } => match settlement {
                Settlement::Succeeded => {
                    state.throttle.succeeded(&key);
                    state
                        .shared
                        .tell(move |redis| async move { redis.succeeded(&key).await });
                }
                Settlement::Released => {
                    state.throttle.release(&key);
                    if shared {
                        state
                            .shared
                            .tell(move |redis| async move { redis.release(&key).await });
                    }
                }
            },
            RateLimiterMsg::Unlock { key, reply } => {
                state.throttle.succeeded(&key);
                state.shared.decide((), reply, move |redis| async move {
                    redis.succeeded(&key).await
                });
            }
            RateLimiterMsg::LockedUntil { keys, now, reply } => {
                let local = keys
                    .iter()
                    .map(|key| state.throttle.locked_until(key, now))
                    .collect();
                state.shared.decide(local, reply, move |redis| async move {
                    redis.locked_until(&keys, now).await
                });
            }
            RateLimiterMsg::LoginFailed {
                client,
                login,
                now,
                reply,
            } => {
                let _ = reply.send(state.bursts.failed(client, &login, now));
            }
            RateLimiterMsg::Sweep { now } => {
                let shard = state.sweep_cursor;
                state.windows.sweep(shard, now);
                state.throttle.sweep(shard, now);
                state.bursts.sweep(shard, now);
                state.sweep_cursor = (shard + 1) % shards::SHARDS;
            }
            RateLimiterMsg::Crash => return Err("crash requested through the chaos route".into()),
        }
        Ok(())
    }
}

/// The callers' handle to the `RateLimiter`, valid across its restarts.
#[derive(Clone)]
pub struct RateLimits {
    names: Arc<Names>,
    timeout: Duration,
    shared: bool,
}

impl RateLimits {
    pub fn new(names: Arc<Names>, timeout: Duration, settings: &RateLimitSettings) -> Self {
        Self {
            names,
            timeout,
            shared: settings.backend == Backend::Redis,
        }
    }

    fn actor(&self) -> &str {
        self.names.get(ActorKind::RateLimiter)
    }

    /// Counts one request of `class` from `client`. The outer error means
    /// the limiter itself could not be asked (it is restarting).
    pub async fn check(
        &self,
        class: RouteClass,
        client: IpAddr,
        now: i64,
    ) -> Result<Checked<Decision>> {
        system::call(self.actor(), self.timeout, |reply| RateLimiterMsg::Check {
            class,
            client,
            now,
            reply,
        })
        .await
    }

    /// Starts a login attempt against `key`.
    pub async fn attempt(&self, key: ThrottleKey, now: i64) -> Result<Checked<AttemptDecision>> {
        system::call(self.actor(), self.timeout, |reply| {
            RateLimiterMsg::Attempt { key, now, reply }
        })
        .await
    }

    /// Lifts `key`'s lock, here and in Redis, before it answers.
    pub async fn unlock(&self, key: ThrottleKey) -> Result<Checked<()>> {
        system::call(self.actor(), self.timeout, |reply| RateLimiterMsg::Unlock {
            key,
            reply,
        })
        .await
    }

    /// Until when each of `keys` is locked, if it is.
    pub async fn locked_until(
        &self,
        keys: Vec<ThrottleKey>,
        now: i64,
    ) -> Result<Checked<Vec<Option<i64>>>> {
        system::call(self.actor(), self.timeout, |reply| {
            RateLimiterMsg::LockedUntil { keys, now, reply }
        })
        .await
    }

    /// A counted attempt ended otherwise than as a failure.
    pub fn settle(&self, key: ThrottleKey, settlement: Settlement, shared: bool) {
        system::cast(
            self.actor(),
            RateLimiterMsg::Settle {
                key,
                settlement,
                shared,
            },
        );
    }

    /// A login from `client` failed; `Some` once per burst from one address.
    pub async fn login_failed(&self, client: IpAddr, login: String, now: i64) -> Option<Suspicion> {
        system::call(self.actor(), self.timeout, |reply| {
            RateLimiterMsg::LoginFailed {
                client,
                login,
                now,
                reply,
            }
        })
        .await
        .ok()
        .flatten()
    }

    /// Whether decisions are shared through Redis.
    pub fn is_shared(&self) -> bool {
        self.shared
    }
}
