//! The only place that reads a clock.
//!
//! Rules that depend on time (tokens, lockouts, the breaker, rate windows,
//! session lifetimes) take `now` as a parameter; services read it from a
//! [`Clock`] at their edge and pass it down, so tests replace the clock with a
//! [`ManualClock`] and move time on without sleeping. `clippy.toml` forbids
//! reading the system clock anywhere else.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use time::OffsetDateTime;

/// Wall-clock time as the rules see it, in Unix milliseconds.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;

    /// Unix seconds, rounded down.
    fn now_s(&self) -> i64 {
        self.now_ms().div_euclid(1000)
    }
}

/// The clock every service shares.
pub type SharedClock = Arc<dyn Clock>;

/// The machine's clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    #[allow(clippy::disallowed_methods)] // the one sanctioned reading
    fn now_ms(&self) -> i64 {
        i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
            .unwrap_or(i64::MAX)
    }
}

impl SystemClock {
    pub fn shared() -> SharedClock {
        Arc::new(Self)
    }
}

/// A clock that moves only when told to: for tests of time rules.
#[derive(Debug)]
pub struct ManualClock(AtomicI64);

impl ManualClock {
    pub fn starting_at(ms: i64) -> Arc<Self> {
        Arc::new(Self(AtomicI64::new(ms)))
    }

    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        self.0.fetch_add(ms, Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::Acquire)
    }
}

/// Measures how long something took (monotonic, unaffected by clock changes).
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(Instant);

impl Stopwatch {
    #[allow(clippy::disallowed_methods)] // monotonic, for measuring only
    pub fn start() -> Self {
        Self(Instant::now())
    }

    pub fn elapsed(&self) -> Duration {
        self.0.elapsed()
    }
}

/// The monotonic now, for deadlines of I/O (request and connection timeouts),
/// never for rules.
#[allow(clippy::disallowed_methods)]
pub fn monotonic() -> tokio::time::Instant {
    tokio::time::Instant::now()
}

/// A timestamp in milliseconds as a UTC date-time (the epoch if out of range).
pub fn datetime(ms: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

/// Whole seconds from `now` until `then`, rounded up, at least 1: what `Retry-After` wants.
pub fn seconds_until(now_ms: i64, then_ms: i64) -> u64 {
    let ms = then_ms.saturating_sub(now_ms).max(1);
    u64::try_from((ms + 999) / 1000).unwrap_or(1)
}

/// Seconds as milliseconds, saturating.
pub fn secs_to_ms(s: u64) -> i64 {
    i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
}
