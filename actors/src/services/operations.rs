//! What operators read and do: health, breakers, actors, the service tallies,
//! and the chaos kill.

use std::time::Duration;

use crate::breaker::{BreakerBoard, BreakerId, BreakerMsg, BreakerSnapshot, BreakerState};
use crate::clock::{SharedClock, Stopwatch};
use crate::error::Result;
use crate::mailer::MailerMsg;
use crate::metrics::{MetricsHandle, MetricsMsg, Tally};
use crate::rate_limiter::RateLimiterMsg;
use crate::supervisor::{ActorBoard, ActorReport, ActorStatus};
use crate::system::{self, ActorKind, Names};
use crate::token_issuer::TokenIssuerMsg;
use crate::user_repo::{Repo, UserRepoMsg};

/// How long a kill waits for an actor that is restarting, and for its
/// supervisor to see it fail.
const KILL_WAIT: Duration = Duration::from_secs(5);

/// How long after start-up the store may take to answer its first poll
/// before health says so.
const STORE_GRACE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

impl HealthStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Healthy => "healthy",
            Self::Degraded => "degraded",
            Self::Unhealthy => "unhealthy",
        }
    }
}

#[derive(Clone)]
pub struct Operations {
    pub names: std::sync::Arc<Names>,
    pub actors: std::sync::Arc<ActorBoard>,
    pub breakers: std::sync::Arc<BreakerBoard>,
    pub repo: Repo,
    pub metrics: MetricsHandle,
    pub clock: SharedClock,
    pub started: Stopwatch,
}

impl Operations {
    /// Every breaker's state.
    pub fn breakers(&self) -> Vec<(BreakerId, BreakerSnapshot)> {
        self.breakers.all()
    }

    /// Every actor's status.
    pub fn actors(&self) -> Vec<(ActorKind, ActorReport)> {
        self.actors.all()
    }

    /// Unhealthy while an actor is down; degraded while a breaker is not
    /// closed, or while the store has not answered the invalidation poll for
    /// a while (which no breaker sees when no request needs the store).
    pub fn health(&self) -> HealthStatus {
        let store_silent =
            self.started.elapsed() > STORE_GRACE && !self.repo.trusted(self.clock.now_ms());
        if !self.actors.all_running() {
            HealthStatus::Unhealthy
        } else if store_silent
            || self
                .breakers()
                .iter()
                .any(|(_, b)| b.state != BreakerState::Closed)
        {
            HealthStatus::Degraded
        } else {
            HealthStatus::Healthy
        }
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// What the services did since the metrics actor started.
    pub async fn tally(&self) -> Result<Tally> {
        self.metrics.tally().await
    }

    /// Makes one actor fail for real, so that its supervisor restarts it,
    /// and returns once the supervisor has seen the failure. An actor still
    /// restarting from an earlier kill is waited for (up to [`KILL_WAIT`]),
    /// so that every kill hits a running incarnation of its own.
    pub async fn kill(&self, kind: ActorKind) -> Result<()> {
        let name = self.names.get(kind);
        let crash = || match kind {
            ActorKind::RateLimiter => system::send(name, RateLimiterMsg::Crash),
            ActorKind::Breaker => system::send(name, BreakerMsg::Crash),
            ActorKind::UserRepo => system::send(name, UserRepoMsg::Crash),
            ActorKind::TokenIssuer => system::send(name, TokenIssuerMsg::Crash),
            ActorKind::Metrics => system::send(name, MetricsMsg::Crash),
            ActorKind::Mailer => system::send(name, MailerMsg::Crash),
        };
        let report = || {
            self.actors
                .all()
                .into_iter()
                .find_map(|(k, r)| (k == kind).then_some(r))
        };
        let killed = tokio::time::timeout(KILL_WAIT, async {
            loop {
                // Between the look and the send the incarnation may have
                // gone: then look again.
                if let Some(before) = report().filter(|r| r.status == ActorStatus::Running)
                    && crash().is_ok()
                {
                    while report().is_some_and(|now| {
                        now.status == ActorStatus::Running && now.restarts == before.restarts
                    }) {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await;
        killed.map_err(|_| crate::error::Error::ActorUnavailable(format!("{name} is not running")))
    }
}
