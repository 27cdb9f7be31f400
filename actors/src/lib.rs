//! # Gatehouse actors
//!
//! Everything behind the HTTP front end: the supervised actors, the domain
//! rules they enforce and the storage they own. Nothing here knows about HTTP.
//!
//! ## Supervision tree
//!
//! ```text
//! Supervisor ─┬─ RateLimiter   owns the per-IP windows and login throttle (Redis calls, sweeping)
//!             ├─ Breaker       circuit-breaker state machines (database, redis)
//!             ├─ UserRepo      the store: serialized writes, pooled reads, cache invalidation
//!             ├─ TokenIssuer   signs access tokens, mints refresh tokens
//!             └─ Metrics       the JSON summary behind /api/v1/monitoring/metrics
//! ```
//!
//! The supervisor restarts any child that fails. Callers reach actors by
//! registry name ([`system`]), so a restart is invisible to them beyond the
//! calls that were in flight. State that must outlive a restart (session
//! cache, breaker and actor boards, tallies) is created by [`Gatehouse::start`]
//! and handed to each incarnation.
//!
//! ## Layout
//!
//! * [`gatehouse`]: start-up and the use cases (register, login, authenticate…).
//! * [`supervisor`], [`system`]: restarts, names, call helpers.
//! * [`breaker`], [`rate_limiter`], [`token_issuer`], [`metrics`], [`user_repo`]:
//!   one actor each, with its pure logic beside it.
//! * [`passwords`]: policy and scrypt on blocking threads.
//! * [`names`]: emails, usernames and login names, validated and canonical.
//! * [`model`], [`error`], [`clock`]: records, the one error type, the one clock.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]

pub mod breaker;
pub mod clock;
pub mod error;
pub mod gatehouse;
pub mod metrics;
pub mod model;
pub mod names;
pub mod passwords;
pub mod rate_limiter;
pub mod supervisor;
pub mod system;
pub mod token_issuer;
pub mod user_repo;

pub use error::{Error, FieldError, RateLimitInfo, Result, Taken};
pub use gatehouse::{
    Gatehouse, HealthStatus, LoginRequest, Principal, Registration, Settings, Tokens,
};
