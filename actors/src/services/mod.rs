//! The use cases, one service per capability. Each is a plain struct that
//! names what it depends on (actor handles, the password hasher, the clock)
//! and reads `now` from the clock at its edge, passing it down.
//!
//! * [`auth`]: logging in and exchanging refresh tokens.
//! * [`accounts`]: registering, the profile, the password, deactivation.
//! * [`recovery`]: verification and password-reset links.
//! * [`email`]: the messages the others queue in the outbox.
//! * [`mfa`]: the second factor (TOTP and recovery codes).
//! * [`sessions`]: authenticating a bearer token, listing and ending sessions.
//! * [`edge`]: the per-client rate limits every route passes.
//! * [`operations`]: health, breakers, actors, metrics, chaos.
//! * [`admin`]: admin keys, their check, token introspection.
//!
//! [`crate::Gatehouse`] builds them all from one set of handles.

pub mod accounts;
pub mod admin;
pub mod auth;
pub mod edge;
pub mod email;
pub mod mfa;
pub mod operations;
pub mod recovery;
pub mod sessions;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};

use crate::breaker::{BreakerId, Breakers, PermitGuard};
use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::rate_limiter::{OnBackendFailure, Unshared};
use crate::user_repo::Repo;

/// The repository, with every request passed through the database breaker:
/// one call as a route makes it, however many statements it runs.
#[derive(Clone)]
pub struct Database {
    pub repo: Repo,
    pub breakers: Breakers,
}

impl Database {
    /// Runs one repository request as one call through the database breaker.
    pub async fn call<T>(&self, request: impl Future<Output = Result<T>>) -> Result<T> {
        self.breakers.run(BreakerId::Database, request).await
    }

    /// Runs `work`, which passes each repository result through the permit's
    /// `track`, as one call through the database breaker (a route that reads
    /// and then writes is still one call).
    pub async fn within<T>(
        &self,
        work: impl AsyncFnOnce(&mut PermitGuard) -> Result<T>,
    ) -> Result<T> {
        let mut call = self.breakers.admit(BreakerId::Database).await?;
        let outcome = work(&mut call).await;
        call.finish().await;
        outcome
    }
}

/// What stands in for the shared limiter's decision when Redis cannot be
/// asked: `rate_limit.on_backend_failure`, logged loudly but at most every
/// ten seconds.
#[derive(Clone)]
pub struct LimiterPolicy {
    policy: OnBackendFailure,
    clock: SharedClock,
    /// When the last "rate limiting unavailable" line was written.
    logged: Arc<AtomicI64>,
}

impl LimiterPolicy {
    pub fn new(policy: OnBackendFailure, clock: SharedClock) -> Self {
        Self {
            policy,
            clock,
            logged: Arc::new(AtomicI64::new(i64::MIN)),
        }
    }

    /// This process's own decision (`local`), none (`allow`), or the error (`deny`).
    pub fn fall_back<T>(&self, unshared: Unshared<T>) -> Result<Option<T>, Error> {
        let now = self.clock.now_ms();
        let last = self.logged.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 10_000
            && self
                .logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let consequence = match self.policy {
                OnBackendFailure::Local => "limited by this instance alone",
                OnBackendFailure::Allow => "allowed without limits",
                OnBackendFailure::Deny => "refused",
            };
            tracing::error!(error = %unshared.error, policy = ?self.policy,
                "rate limiting unavailable; requests are {consequence} until it recovers");
        }
        match self.policy {
            OnBackendFailure::Local => Ok(Some(unshared.local)),
            OnBackendFailure::Allow => Ok(None),
            OnBackendFailure::Deny => Err(unshared.error),
        }
    }
}
