//! The Redis backend: the same sliding windows and login throttle as
//! [`Windows`](super::window::Windows) and [`Throttle`](super::throttle::Throttle),
//! shared by every instance that points at the same Redis and prefix.
//!
//! Each decision is one atomic server-side script, so one round trip, and two
//! instances racing for the last slot of a window cannot both get it. Every
//! key expires on its own once idle. Login names are hashed into key names,
//! so neither their length nor their content reaches Redis.
//!
//! Time comes from the caller (`now`, Unix ms), exactly as in the memory
//! backend: instances on different hosts need synchronized clocks (NTP), as
//! they do for token expiry anyway.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, Script};

use super::throttle::{AttemptDecision, ThrottleKey, ThrottleRule};
use super::window::{Decision, RouteClass, RouteLimits, bucket};
use crate::clock;
use crate::error::{Error, RateLimitInfo, Result};

/// The sliding log as a sorted set of request times.
/// KEYS: the window, its "refusing" marker. ARGV: now, window_ms, limit, member.
/// Returns {allowed, count after, oldest time in the window, first refusal}.
const WINDOW: &str = r"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local limit = tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local count = redis.call('ZCARD', KEYS[1])
local allowed = 0
local first = 0
if count < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[4])
  count = count + 1
  allowed = 1
  redis.call('DEL', KEYS[2])
elseif redis.call('SET', KEYS[2], '1', 'PX', window, 'NX') then
  first = 1
end
redis.call('PEXPIRE', KEYS[1], window)
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')[2]
return {allowed, count, tonumber(oldest or now), first}
";

/// An attempt that ended without a verdict stops counting; a lock it caused
/// and nobody has been refused by yet is lifted.
/// KEYS: the name's strikes hash. ARGV: max_failures.
const RELEASE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', -1)
if attempts < tonumber(ARGV[1]) and redis.call('HEXISTS', KEYS[1], 'announced') == 0 then
  redis.call('HDEL', KEYS[1], 'locked_until')
end
return 1
";

/// One login attempt against the per-name throttle, counted as it starts.
/// KEYS: the name's strikes hash. ARGV: now, max_failures, lockout_ms.
/// Returns {allowed, ms until unlocked, first refusal of this lock}.
const ATTEMPT: &str = r"
local now = tonumber(ARGV[1])
local lockout = tonumber(ARGV[3])
local locked = tonumber(redis.call('HGET', KEYS[1], 'locked_until') or '0')
if locked > now then
  return {0, locked - now, redis.call('HSETNX', KEYS[1], 'announced', '1')}
end
if locked > 0 then
  redis.call('DEL', KEYS[1])
end
local attempts = redis.call('HINCRBY', KEYS[1], 'attempts', 1)
if attempts >= tonumber(ARGV[2]) then
  redis.call('HSET', KEYS[1], 'locked_until', now + lockout)
end
redis.call('PEXPIRE', KEYS[1], lockout)
return {1, 0, 0}
";

pub struct RedisLimiter {
    connection: ConnectionManager,
    prefix: String,
    routes: RouteLimits,
    throttle: ThrottleRule,
    window: Script,
    attempt: Script,
    release: Script,
    /// Makes each recorded hit a distinct member of its window.
    instance: String,
    hits: AtomicU64,
}

fn unavailable(e: redis::RedisError) -> Error {
    Error::Unavailable(format!("redis: {e}"))
}

impl RedisLimiter {
    /// Connects lazily: an unreachable Redis at start-up is a breaker matter,
    /// not a reason to refuse to start.
    pub fn new(
        url: &str,
        prefix: &str,
        routes: RouteLimits,
        throttle: ThrottleRule,
    ) -> Result<Self> {
        let client = Client::open(url).map_err(|e| Error::Internal(format!("redis url: {e}")))?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_millis(500)))
            .set_response_timeout(Some(Duration::from_millis(500)))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let connection = ConnectionManager::new_lazy_with_config(client, config)
            .map_err(|e| Error::Internal(format!("redis: {e}")))?;
        Ok(Self {
            connection,
            prefix: prefix.to_owned(),
            routes,
            throttle,
            window: Script::new(WINDOW),
            attempt: Script::new(ATTEMPT),
            release: Script::new(RELEASE),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            hits: AtomicU64::new(0),
        })
    }

    fn window_key(&self, class: RouteClass, client: IpAddr) -> String {
        format!("{}rl:{}:{}", self.prefix, class.name(), bucket(client))
    }

    fn strikes_key(&self, key: &ThrottleKey) -> String {
        let digest: String = key.digest().iter().map(|b| format!("{b:02x}")).collect();
        format!("{}throttle:{digest}", self.prefix)
    }

    /// Counts one request of `class` from `client` at `now`.
    pub async fn check(&self, class: RouteClass, client: IpAddr, now: i64) -> Result<Decision> {
        let window = self.routes.window(class);
        let key = self.window_key(class, client);
        let member = format!(
            "{now}:{}:{}",
            self.instance,
            self.hits.fetch_add(1, Ordering::Relaxed)
        );
        let (allowed, count, oldest, first): (i64, i64, i64, i64) = self
            .window
            .key(&key)
            .key(format!("{key}:refusing"))
            .arg(now)
            .arg(window.window_ms)
            .arg(window.limit)
            .arg(member)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        let used = u32::try_from(count).unwrap_or(u32::MAX);
        Ok(Decision {
            allowed: allowed == 1,
            first_refusal: first == 1,
            info: RateLimitInfo {
                limit: window.limit,
                remaining: window.limit.saturating_sub(used),
                reset_s: clock::seconds_until(now, oldest.saturating_add(window.window_ms)),
            },
        })
    }

    /// Starts a login attempt against `key`.
    pub async fn attempt(&self, key: &ThrottleKey, now: i64) -> Result<AttemptDecision> {
        let (allowed, wait_ms, first): (i64, i64, i64) = self
            .attempt
            .key(self.strikes_key(key))
            .arg(now)
            .arg(self.throttle.max_failures)
            .arg(self.throttle.lockout_ms)
            .invoke_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok(if allowed == 1 {
            AttemptDecision::Allowed
        } else {
            AttemptDecision::Locked {
                retry_after_s: clock::seconds_until(0, wait_ms),
                first: first == 1,
            }
        })
    }

    /// An attempt against `key` ended without a verdict.
    pub async fn release(&self, key: &ThrottleKey) -> Result<()> {
        self.release
            .key(self.strikes_key(key))
            .arg(self.throttle.max_failures)
            .invoke_async::<i64>(&mut self.connection.clone())
            .await
            .map(drop)
            .map_err(unavailable)
    }

    /// Until when each of `keys` is locked, if it is at `now`.
    pub async fn locked_until(&self, keys: &[ThrottleKey], now: i64) -> Result<Vec<Option<i64>>> {
        let mut pipe = redis::pipe();
        for key in keys {
            pipe.hget(self.strikes_key(key), "locked_until");
        }
        let until: Vec<Option<i64>> = pipe
            .query_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)?;
        Ok(until
            .into_iter()
            .map(|until| until.filter(|&until| until > now))
            .collect())
    }

    /// A login counted against `key` succeeded: its strikes are forgiven.
    pub async fn succeeded(&self, key: &ThrottleKey) -> Result<()> {
        redis::cmd("DEL")
            .arg(self.strikes_key(key))
            .exec_async(&mut self.connection.clone())
            .await
            .map_err(unavailable)
    }
}

#[cfg(test)]
mod tests {
    //! Against the machine's real Redis on 127.0.0.1:6379, each test under
    //! a prefix of its own.

    use std::collections::VecDeque;

    use super::*;
    use crate::rate_limiter::window::{RouteLimit, Window, Windows};

    fn limiter(routes: RouteLimits) -> RedisLimiter {
        let prefix = format!("gatehouse-test:{}:", uuid::Uuid::new_v4().simple());
        RedisLimiter::new(
            &gatehouse_testkit::redis_url(),
            &prefix,
            routes,
            ThrottleRule {
                max_failures: 3,
                lockout_ms: 300_000,
            },
        )
        .unwrap()
    }

    const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    /// The script and the memory backend decide the same on the same timestamps.
    #[tokio::test]
    async fn lua_window_matches_the_memory_window() {
        gatehouse_testkit::require_redis!();
        let routes = RouteLimits {
            login: RouteLimit {
                limit: Some(5),
                window_s: Some(10),
            },
            ..RouteLimits::default()
        };
        let redis = limiter(routes);
        let mut memory = Windows::new(routes, 1_000);
        let base = 1_800_000_000_000i64;
        let mut t = base;
        for i in 0..400i64 {
            t += (i * 7919) % 1_700; // irregular gaps with bursts, across many windows
            let expected = memory.check(RouteClass::Login, IP, t);
            let got = redis.check(RouteClass::Login, IP, t).await.unwrap();
            assert_eq!(got, expected, "request {i} at +{} ms", t - base);
        }
    }

    #[tokio::test]
    async fn window_boundaries_are_exact() {
        gatehouse_testkit::require_redis!();
        let redis = limiter(RouteLimits::default());
        let w: Window = RouteLimits::default().window(RouteClass::Register);
        let mut hits = VecDeque::new();
        for t in [59_000, 59_500, 59_900, 60_100, 118_999, 119_000, 119_001] {
            let expected = w.decide(&mut hits, t).is_ok();
            let got = redis
                .check(RouteClass::Register, IP, t)
                .await
                .unwrap()
                .allowed;
            assert_eq!(got, expected, "at {t}");
        }
    }

    #[tokio::test]
    async fn throttle_locks_reports_once_and_success_forgives() {
        gatehouse_testkit::require_redis!();
        let redis = limiter(RouteLimits::default());
        let alice = ThrottleKey::account("alice");
        for _ in 0..3 {
            assert_eq!(
                redis.attempt(&alice, 0).await.unwrap(),
                AttemptDecision::Allowed
            );
        }
        assert_eq!(
            redis.attempt(&alice, 1_000).await.unwrap(),
            AttemptDecision::Locked {
                retry_after_s: 299,
                first: true
            }
        );
        assert_eq!(
            redis.attempt(&alice, 2_000).await.unwrap(),
            AttemptDecision::Locked {
                retry_after_s: 298,
                first: false
            }
        );
        assert_eq!(
            redis.attempt(&alice, 300_000).await.unwrap(),
            AttemptDecision::Allowed
        );
        redis.succeeded(&alice).await.unwrap();
        for _ in 0..3 {
            assert_eq!(
                redis.attempt(&alice, 300_001).await.unwrap(),
                AttemptDecision::Allowed
            );
        }
    }

    #[tokio::test]
    async fn an_unreachable_redis_is_unavailable_not_a_panic() {
        let redis = RedisLimiter::new(
            "redis://127.0.0.1:1",
            "x:",
            RouteLimits::default(),
            ThrottleRule {
                max_failures: 3,
                lockout_ms: 1,
            },
        )
        .unwrap();
        let err = redis.check(RouteClass::Login, IP, 0).await.unwrap_err();
        assert!(matches!(err, Error::Unavailable(_)), "{err:?}");
    }
}
