//! Naming and addressing: which actors exist and how callers reach them.
//!
//! Callers never hold an `ActorRef` across requests, because a restarted
//! actor is a new actor with a new ref. They hold [`Names`] and look the
//! actor up in ractor's registry on every message, which is one concurrent
//! map read and always finds the current incarnation. Each running Gatehouse
//! gets its own name prefix, so several can share one process (tests do).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use ractor::rpc::CallResult;
use ractor::{ActorRef, Message, RpcReplyPort};

use crate::error::{Error, Result};

/// The supervised actors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ActorKind {
    RateLimiter,
    Breaker,
    UserRepo,
    TokenIssuer,
    Metrics,
    Mailer,
}

impl ActorKind {
    pub const ALL: [Self; 6] = [
        Self::RateLimiter,
        Self::Breaker,
        Self::UserRepo,
        Self::TokenIssuer,
        Self::Metrics,
        Self::Mailer,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::RateLimiter => "rate_limiter",
            Self::Breaker => "breaker",
            Self::UserRepo => "user_repo",
            Self::TokenIssuer => "token_issuer",
            Self::Metrics => "metrics",
            Self::Mailer => "mailer",
        }
    }

    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == name)
    }
}

/// Registry names of one Gatehouse's actors.
#[derive(Debug)]
pub struct Names {
    supervisor: String,
    actors: [String; ActorKind::ALL.len()],
}

impl Names {
    pub fn unique() -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        Self {
            supervisor: format!("gatehouse{n}/supervisor"),
            actors: ActorKind::ALL.map(|k| format!("gatehouse{n}/{}", k.name())),
        }
    }

    pub fn get(&self, kind: ActorKind) -> &str {
        &self.actors[kind as usize]
    }

    pub fn supervisor(&self) -> &str {
        &self.supervisor
    }
}

fn lookup<M: Message>(name: &str) -> Result<ActorRef<M>> {
    ActorRef::where_is(name)
        .ok_or_else(|| Error::ActorUnavailable(format!("{name} is not running")))
}

/// Sends without waiting for an answer; reports whether the actor was there.
pub fn send<M: Message>(name: &str, msg: M) -> Result<()> {
    lookup::<M>(name)?
        .send_message(msg)
        .map_err(|e| Error::ActorUnavailable(format!("{name}: {e}")))
}

/// Sends without waiting; an observation lost while the actor restarts is acceptable.
pub fn cast<M: Message>(name: &str, msg: M) {
    let _ = send(name, msg);
}

/// Asks and waits at most `timeout` for the answer.
pub async fn call<M: Message, R: Send + 'static>(
    name: &str,
    timeout: Duration,
    build: impl FnOnce(RpcReplyPort<R>) -> M,
) -> Result<R> {
    let unavailable = |why: String| Error::ActorUnavailable(format!("{name}: {why}"));
    match lookup::<M>(name)?.call(build, Some(timeout)).await {
        Ok(CallResult::Success(reply)) => Ok(reply),
        Ok(CallResult::Timeout) => Err(unavailable("timed out".into())),
        Ok(CallResult::SenderError) => Err(unavailable("dropped the call".into())),
        Err(e) => Err(unavailable(e.to_string())),
    }
}
