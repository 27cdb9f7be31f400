//! # Gatehouse actors
//!
//! Everything behind the HTTP front end: the supervised actors, the state
//! each one owns, the use cases built on them, and the storage. Nothing here
//! knows about HTTP or JSON.
//!
//! ## Supervision tree
//!
//! ```text
//! Supervisor ─┬─ Breaker       owns the breaker state machines (database, redis); publishes snapshots
//!             ├─ RateLimiter   owns the per-client windows, the account throttle, burst counts; talks to Redis
//!             ├─ UserRepo      owns the store (connections) and the session cache; serializes writes
//!             ├─ TokenIssuer   owns the key ring (or the HS256 key); publishes the verifier and JWKS
//!             └─ Metrics       owns the service tallies
//! ```
//!
//! Each actor creates its state when it starts, so a restart rebuilds it
//! (the store reopened, the cache empty and untrusted until the first poll,
//! the key rebuilt, the breakers resumed from their last published state).
//! Callers reach actors by registry name ([`system`]) with typed messages, so
//! a restart is invisible to them beyond the calls that were in flight; what
//! the hot path reads without a message (breaker snapshots, the verifier,
//! the session cache) the owning actor publishes, and only it writes.
//!
//! ## Layout
//!
//! * [`gatehouse`]: the composition root: starts the tree, builds the services.
//! * [`services`]: the use cases, by capability: `auth` (where a login goes),
//!   `accounts`, `sessions`, `edge`, `operations`.
//! * [`supervisor`], [`system`]: restarts, names, call helpers.
//! * [`breaker`], [`rate_limiter`], [`token_issuer`], [`metrics`], [`user_repo`]:
//!   one actor each, with the state it owns and its pure logic beside it.
//! * [`user_repo::rules`]: the session rules both stores apply.
//! * [`passwords`]: policy and scrypt on blocking threads.
//! * [`sealing`]: secrets at rest, sealed with the key-encryption secret.
//! * [`names`]: emails, usernames and login names, validated and canonical.
//! * [`model`], [`error`], [`clock`]: records, the one error type, the one clock.
#![cfg_attr(
    not(test),
    deny(clippy::unwrap_used, clippy::expect_used, clippy::panic)
)]
#![deny(clippy::await_holding_lock)]

pub mod audit;
pub mod breaker;
pub mod clock;
pub mod error;
pub mod gatehouse;
pub mod mailer;
pub mod metrics;
pub mod mfa;
pub mod model;
pub mod names;
pub mod passwords;
pub mod rate_limiter;
pub mod sealing;
pub mod services;
pub mod supervisor;
pub mod system;
pub mod token_issuer;
pub mod user_repo;

pub use error::{Error, FieldError, RateLimitInfo, Result, Taken};
pub use gatehouse::{Gatehouse, Settings};
pub use model::Principal;
