//! The only place that reads the wall clock.
//!
//! Logic that depends on time (tokens, lockouts, the breaker, rate windows)
//! takes `now` as a parameter; the actors call these functions at their edge.

use time::OffsetDateTime;

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> i64 {
    i64::try_from(OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// Seconds since the Unix epoch.
pub fn unix_s() -> i64 {
    OffsetDateTime::now_utc().unix_timestamp()
}

/// Measures how long something took (monotonic, unaffected by clock changes).
#[derive(Debug, Clone, Copy)]
pub struct Stopwatch(std::time::Instant);

impl Stopwatch {
    pub fn start() -> Self {
        Self(std::time::Instant::now())
    }

    pub fn elapsed(&self) -> std::time::Duration {
        self.0.elapsed()
    }
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

/// Serializes millisecond timestamps as RFC 3339 UTC strings.
pub mod rfc3339_ms {
    use serde::Serializer;

    pub fn serialize<S: Serializer>(ms: &i64, s: S) -> Result<S::Ok, S::Error> {
        time::serde::rfc3339::serialize(&super::datetime(*ms), s)
    }

    pub mod option {
        use serde::Serializer;

        pub fn serialize<S: Serializer>(ms: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
            match ms {
                Some(ms) => super::serialize(ms, s),
                None => s.serialize_none(),
            }
        }
    }
}
