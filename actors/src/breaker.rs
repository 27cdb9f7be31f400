//! Circuit breakers: the pure state machine, the `Breaker` actor that owns it,
//! and [`Breakers`], the handle callers use to pass a unit of work through it.
//!
//! A *call* is one repository request as a route makes it (one registration,
//! one login), however many statements it runs. Infrastructure failures count;
//! domain outcomes (duplicate, not found, wrong password) are successes.
//!
//! While a breaker is closed, callers admit themselves from the published
//! snapshot without a mailbox round trip; only open and half-open breakers
//! are asked, so the actor alone decides who may try in half-open. Every
//! permit carries the breaker's generation, and outcomes from an older
//! generation are ignored: a slow call admitted before the breaker opened
//! cannot close it.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use serde::Deserialize;

use crate::audit::SECURITY_TARGET;
use crate::clock::{self, SharedClock};
use crate::error::{Error, Result};
use crate::system::{self, ActorKind, Names};

/// The `[circuit_breaker.<name>]` section of the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// Consecutive failed calls that open the breaker.
    pub failure_threshold: u32,
    /// How long it stays open before letting trial calls through.
    pub reset_timeout_ms: u64,
    /// Trial calls let through at once while half open.
    pub half_open_max_calls: u32,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            reset_timeout_ms: 30_000,
            half_open_max_calls: 1,
        }
    }
}

/// Which dependency a breaker guards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum BreakerId {
    Database,
    Redis,
    /// The SMTP relay, when `email.transport = "smtp"`.
    Smtp,
}

impl BreakerId {
    pub fn name(self) -> &'static str {
        match self {
            Self::Database => "database",
            Self::Redis => "redis",
            Self::Smtp => "smtp",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerState {
    Closed,
    Open,
    HalfOpen,
}

impl BreakerState {
    /// The value of the `gatehouse_circuit_breaker_state` gauge.
    pub fn gauge(self) -> f64 {
        match self {
            Self::Closed => 0.0,
            Self::HalfOpen => 1.0,
            Self::Open => 2.0,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// What operators and callers see of a breaker (times in Unix ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerSnapshot {
    pub state: BreakerState,
    pub failure_count: u32,
    pub last_failure: Option<i64>,
    pub next_attempt: Option<i64>,
    /// Permits carry it; outcomes from an older generation are ignored.
    pub generation: u64,
}

/// Leave to make one call; hand it back with the outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Permit {
    pub breaker: BreakerId,
    generation: u64,
    trial: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure,
    /// The caller went away before knowing; frees a trial slot, counts for nothing.
    Abandoned,
}

/// A change of state, for the log and the gauge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Transition {
    pub from: BreakerState,
    pub to: BreakerState,
    pub cause: &'static str,
}

/// The state machine. Time is a parameter (`now`, Unix milliseconds).
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    settings: BreakerSettings,
    state: BreakerState,
    generation: u64,
    failures: u32,
    last_failure: Option<i64>,
    next_attempt: Option<i64>,
    trials_in_flight: u32,
}

impl CircuitBreaker {
    pub fn new(settings: BreakerSettings, generation: u64) -> Self {
        Self {
            settings,
            state: BreakerState::Closed,
            generation,
            failures: 0,
            last_failure: None,
            next_attempt: None,
            trials_in_flight: 0,
        }
    }

    /// Picks up where a previous incarnation left off, in a new generation:
    /// a restart must not close a breaker the dependency opened. Trials in
    /// flight are forgotten, so half open resumes as open-until-now.
    pub fn resume(settings: BreakerSettings, last: BreakerSnapshot, now: i64) -> Self {
        let (state, next_attempt) = match last.state {
            BreakerState::Closed => (BreakerState::Closed, None),
            BreakerState::Open => (BreakerState::Open, last.next_attempt),
            BreakerState::HalfOpen => (BreakerState::Open, Some(now)),
        };
        Self {
            settings,
            state,
            generation: last.generation + 1,
            failures: last.failure_count,
            last_failure: last.last_failure,
            next_attempt,
            trials_in_flight: 0,
        }
    }

    pub fn snapshot(&self) -> BreakerSnapshot {
        BreakerSnapshot {
            state: self.state,
            failure_count: self.failures,
            last_failure: self.last_failure,
            next_attempt: self.next_attempt,
            generation: self.generation,
        }
    }

    fn move_to(&mut self, to: BreakerState, cause: &'static str) -> Transition {
        let from = self.state;
        self.state = to;
        self.generation += 1;
        self.trials_in_flight = 0;
        Transition { from, to, cause }
    }

    /// Lets a call through, or says after how many seconds to come back.
    pub fn admit(&mut self, id: BreakerId, now: i64) -> (Result<Permit, u64>, Option<Transition>) {
        let mut transition = None;
        if self.state == BreakerState::Open {
            match self.next_attempt {
                Some(at) if now < at => return (Err(clock::seconds_until(now, at)), None),
                _ => {
                    transition = Some(self.move_to(BreakerState::HalfOpen, "reset timeout elapsed"))
                }
            }
        }
        let trial = self.state == BreakerState::HalfOpen;
        if trial {
            if self.trials_in_flight >= self.settings.half_open_max_calls {
                return (Err(1), transition);
            }
            self.trials_in_flight += 1;
        }
        let permit = Permit {
            breaker: id,
            generation: self.generation,
            trial,
        };
        (Ok(permit), transition)
    }

    /// Takes a finished call's outcome into account.
    pub fn report(&mut self, permit: Permit, outcome: Outcome, now: i64) -> Option<Transition> {
        if permit.generation != self.generation {
            return None;
        }
        if outcome == Outcome::Failure {
            self.last_failure = Some(now);
        }
        match (self.state, outcome) {
            (_, Outcome::Abandoned) => {
                if permit.trial {
                    self.trials_in_flight = self.trials_in_flight.saturating_sub(1);
                }
                None
            }
            (BreakerState::Closed, Outcome::Success) => {
                self.failures = 0;
                None
            }
            (BreakerState::Closed, Outcome::Failure) => {
                self.failures += 1;
                (self.failures >= self.settings.failure_threshold)
                    .then(|| self.open(now, "failure threshold reached"))
            }
            (BreakerState::HalfOpen, Outcome::Success) => {
                self.failures = 0;
                self.next_attempt = None;
                Some(self.move_to(BreakerState::Closed, "trial call succeeded"))
            }
            (BreakerState::HalfOpen, Outcome::Failure) => {
                self.failures += 1;
                Some(self.open(now, "trial call failed"))
            }
            // Permits are never issued while open, and the generation check
            // above drops those from before it opened.
            (BreakerState::Open, _) => None,
        }
    }

    fn open(&mut self, now: i64, cause: &'static str) -> Transition {
        let timeout = i64::try_from(self.settings.reset_timeout_ms).unwrap_or(i64::MAX);
        self.next_attempt = Some(now.saturating_add(timeout));
        self.move_to(BreakerState::Open, cause)
    }
}

/// Where the `Breaker` actor publishes every breaker's state for readers:
/// health, monitoring, and callers admitting themselves while closed. Only
/// the actor writes it; readers take the latest snapshot without a lock.
#[derive(Default)]
pub struct BreakerBoard {
    snapshots: ArcSwap<BTreeMap<BreakerId, BreakerSnapshot>>,
}

impl BreakerBoard {
    pub fn get(&self, id: BreakerId) -> Option<BreakerSnapshot> {
        self.snapshots.load().get(&id).copied()
    }

    /// Every breaker, in a stable order.
    pub fn all(&self) -> Vec<(BreakerId, BreakerSnapshot)> {
        self.snapshots
            .load()
            .iter()
            .map(|(k, v)| (*k, *v))
            .collect()
    }

    fn publish(&self, id: BreakerId, snapshot: BreakerSnapshot) {
        let mut all = BTreeMap::clone(&self.snapshots.load());
        all.insert(id, snapshot);
        self.snapshots.store(Arc::new(all));
    }
}

/// Messages the `Breaker` actor accepts.
pub enum BreakerMsg {
    /// May a call go through? `Err(seconds)` says when to come back.
    Admit(BreakerId, RpcReplyPort<Result<Permit, u64>>),
    /// A call admitted earlier has finished. A failure is acknowledged, so
    /// that the caller's 503 goes out only once the breaker has counted it.
    Report(Permit, Outcome, Option<RpcReplyPort<()>>),
    /// Fail on purpose (chaos testing): the supervisor must restart us.
    Crash,
}

/// What the `Breaker` actor is started with.
#[derive(Clone)]
pub struct BreakerArgs {
    pub breakers: Vec<(BreakerId, BreakerSettings)>,
    /// Where it publishes; also what a new incarnation resumes from, so that
    /// a restart does not close a breaker the dependency opened.
    pub board: Arc<BreakerBoard>,
    pub clock: SharedClock,
}

/// The `Breaker` actor's state: every breaker it owns.
pub struct Circuits {
    breakers: HashMap<BreakerId, CircuitBreaker>,
    board: Arc<BreakerBoard>,
    clock: SharedClock,
}

pub struct Breaker;

impl Breaker {
    fn publish(state: &Circuits, id: BreakerId, transition: Option<Transition>) {
        let Some(breaker) = state.breakers.get(&id) else {
            return;
        };
        let snapshot = breaker.snapshot();
        state.board.publish(id, snapshot);
        if let Some(t) = transition {
            metrics::gauge!("gatehouse_circuit_breaker_state", "breaker" => id.name())
                .set(t.to.gauge());
            tracing::warn!(
                target: SECURITY_TARGET, event = "breaker.transition",
                breaker = id.name(),
                from = t.from.name(),
                to = t.to.name(),
                cause = t.cause,
                failure_count = snapshot.failure_count,
                "circuit breaker changed state"
            );
        }
    }
}

impl Actor for Breaker {
    type Msg = BreakerMsg;
    type State = Circuits;
    type Arguments = BreakerArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        args: BreakerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut breakers = HashMap::new();
        let now = args.clock.now_ms();
        for (id, settings) in args.breakers {
            let breaker = match args.board.get(id) {
                Some(last) => CircuitBreaker::resume(settings, last, now),
                None => CircuitBreaker::new(settings, 0),
            };
            breakers.insert(id, breaker);
        }
        let state = Circuits {
            breakers,
            board: args.board,
            clock: args.clock,
        };
        for (id, breaker) in &state.breakers {
            Self::publish(&state, *id, None);
            metrics::gauge!("gatehouse_circuit_breaker_state", "breaker" => id.name())
                .set(breaker.snapshot().state.gauge());
        }
        Ok(state)
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let now = state.clock.now_ms();
        match msg {
            BreakerMsg::Admit(id, reply) => {
                let Some(breaker) = state.breakers.get_mut(&id) else {
                    let _ = reply.send(Ok(Permit {
                        breaker: id,
                        generation: 0,
                        trial: false,
                    }));
                    return Ok(());
                };
                let (admission, transition) = breaker.admit(id, now);
                if let (Ok(permit), true) = (&admission, reply.is_closed()) {
                    // The caller gave up while queued: do not hold a trial slot for it.
                    breaker.report(*permit, Outcome::Abandoned, now);
                }
                Self::publish(state, id, transition);
                let _ = reply.send(admission);
            }
            BreakerMsg::Report(permit, outcome, counted) => {
                if let Some(breaker) = state.breakers.get_mut(&permit.breaker) {
                    let transition = breaker.report(permit, outcome, now);
                    Self::publish(state, permit.breaker, transition);
                }
                if let Some(counted) = counted {
                    let _ = counted.send(());
                }
            }
            BreakerMsg::Crash => return Err("crash requested through the chaos route".into()),
        }
        Ok(())
    }
}

/// The callers' handle: admits, runs and reports a unit of work.
#[derive(Clone)]
pub struct Breakers {
    names: Arc<Names>,
    board: Arc<BreakerBoard>,
    timeout: Duration,
}

impl Breakers {
    pub fn new(names: Arc<Names>, board: Arc<BreakerBoard>, timeout: Duration) -> Self {
        Self {
            names,
            board,
            timeout,
        }
    }

    pub fn board(&self) -> &Arc<BreakerBoard> {
        &self.board
    }

    /// Runs `work` as one call through breaker `id`.
    pub async fn run<T>(&self, id: BreakerId, work: impl Future<Output = Result<T>>) -> Result<T> {
        let mut call = self.admit(id).await?;
        let result = call.track(work.await);
        call.finish().await;
        result
    }

    /// Leave to make one call through breaker `id`; dropping the guard without
    /// finishing it reports the call as abandoned.
    pub async fn admit(&self, id: BreakerId) -> Result<PermitGuard> {
        let permit = match self.board.get(id) {
            Some(s) if s.state == BreakerState::Closed => Permit {
                breaker: id,
                generation: s.generation,
                trial: false,
            },
            _ => {
                let name = self.names.get(ActorKind::Breaker);
                system::call(name, self.timeout, |reply| BreakerMsg::Admit(id, reply))
                    .await?
                    .map_err(|retry_after_s| Error::BreakerOpen {
                        breaker: id.name(),
                        retry_after_s,
                    })?
            }
        };
        Ok(PermitGuard {
            permit,
            names: Arc::clone(&self.names),
            timeout: self.timeout,
            failed: false,
            cut_short: false,
            finished: false,
        })
    }
}

/// An admitted call in flight. Pass the results of its dependency work
/// through [`PermitGuard::track`]; [`PermitGuard::finish`] then reports a
/// failure if any of them failed for infrastructure reasons (and waits until
/// the breaker has counted it), an abandoned call if some never reached the
/// dependency (an actor was restarting), else a success. Dropped unfinished,
/// it reports the failure it saw, or an abandoned call.
pub struct PermitGuard {
    permit: Permit,
    names: Arc<Names>,
    timeout: Duration,
    failed: bool,
    cut_short: bool,
    finished: bool,
}

impl PermitGuard {
    /// Notes the outcome of one piece of the call's dependency work.
    pub fn track<T>(&mut self, result: Result<T>) -> Result<T> {
        match &result {
            Err(e) if e.is_infrastructure() => self.failed = true,
            Err(Error::ActorUnavailable(_)) => self.cut_short = true,
            _ => {}
        }
        result
    }

    pub async fn finish(&mut self) {
        self.finished = true;
        let name = self.names.get(ActorKind::Breaker);
        let permit = self.permit;
        if self.failed {
            // A breaker that cannot be asked is restarting; it resumes from its snapshot.
            let _ = system::call(name, self.timeout, |counted| {
                BreakerMsg::Report(permit, Outcome::Failure, Some(counted))
            })
            .await;
        } else {
            let outcome = if self.cut_short {
                Outcome::Abandoned
            } else {
                Outcome::Success
            };
            system::cast(name, BreakerMsg::Report(permit, outcome, None));
        }
    }
}

impl Drop for PermitGuard {
    fn drop(&mut self) {
        if !self.finished {
            let outcome = if self.failed {
                Outcome::Failure
            } else {
                Outcome::Abandoned
            };
            system::cast(
                self.names.get(ActorKind::Breaker),
                BreakerMsg::Report(self.permit, outcome, None),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DB: BreakerId = BreakerId::Database;

    fn breaker(threshold: u32, trials: u32) -> CircuitBreaker {
        CircuitBreaker::new(
            BreakerSettings {
                failure_threshold: threshold,
                reset_timeout_ms: 1_000,
                half_open_max_calls: trials,
            },
            0,
        )
    }

    fn call(b: &mut CircuitBreaker, now: i64, outcome: Outcome) -> Option<Transition> {
        let (permit, _) = b.admit(DB, now);
        b.report(permit.unwrap(), outcome, now)
    }

    #[test]
    fn opens_after_consecutive_failures_only() {
        let mut b = breaker(3, 1);
        call(&mut b, 0, Outcome::Failure);
        call(&mut b, 0, Outcome::Failure);
        call(&mut b, 0, Outcome::Success);
        assert_eq!(b.snapshot().failure_count, 0, "a success resets the count");
        call(&mut b, 0, Outcome::Failure);
        call(&mut b, 0, Outcome::Failure);
        let t = call(&mut b, 10, Outcome::Failure).unwrap();
        assert_eq!((t.from, t.to), (BreakerState::Closed, BreakerState::Open));
        let s = b.snapshot();
        assert_eq!(
            (s.failure_count, s.last_failure, s.next_attempt),
            (3, Some(10), Some(1_010))
        );
    }

    #[test]
    fn open_refuses_with_retry_after_until_reset_timeout() {
        let mut b = breaker(1, 1);
        call(&mut b, 0, Outcome::Failure);
        assert_eq!(b.admit(DB, 1).0, Err(1));
        assert_eq!(b.admit(DB, 999).0, Err(1));
        let mut long = breaker(1, 1);
        long.settings.reset_timeout_ms = 30_000;
        call(&mut long, 0, Outcome::Failure);
        assert_eq!(
            long.admit(DB, 500).0,
            Err(30),
            "rounded up to whole seconds"
        );
        let (permit, t) = b.admit(DB, 1_000);
        assert!(permit.unwrap().trial);
        assert_eq!(t.unwrap().to, BreakerState::HalfOpen);
    }

    #[test]
    fn half_open_admits_exactly_max_calls() {
        let mut b = breaker(1, 2);
        call(&mut b, 0, Outcome::Failure);
        let admitted = (0..100).filter(|_| b.admit(DB, 1_000).0.is_ok()).count();
        assert_eq!(admitted, 2);
    }

    #[test]
    fn good_trial_closes_and_resets() {
        let mut b = breaker(1, 1);
        call(&mut b, 0, Outcome::Failure);
        let t = call(&mut b, 1_000, Outcome::Success).unwrap();
        assert_eq!(
            (t.from, t.to),
            (BreakerState::HalfOpen, BreakerState::Closed)
        );
        let s = b.snapshot();
        assert_eq!(
            (s.state, s.failure_count, s.next_attempt),
            (BreakerState::Closed, 0, None)
        );
    }

    #[test]
    fn failed_trial_reopens_with_new_next_attempt() {
        let mut b = breaker(1, 1);
        call(&mut b, 0, Outcome::Failure);
        let t = call(&mut b, 1_500, Outcome::Failure).unwrap();
        assert_eq!((t.from, t.to), (BreakerState::HalfOpen, BreakerState::Open));
        assert_eq!(b.snapshot().next_attempt, Some(2_500));
        assert_eq!(b.admit(DB, 2_000).0, Err(1));
    }

    #[test]
    fn abandoned_trial_frees_its_slot() {
        let mut b = breaker(1, 1);
        call(&mut b, 0, Outcome::Failure);
        let first = b.admit(DB, 1_000).0.unwrap();
        assert!(b.admit(DB, 1_000).0.is_err());
        assert_eq!(b.report(first, Outcome::Abandoned, 1_000), None);
        assert!(b.admit(DB, 1_000).0.is_ok());
        assert_eq!(b.snapshot().state, BreakerState::HalfOpen);
    }

    #[test]
    fn a_restarted_breaker_resumes_open_in_a_new_generation() {
        let mut b = breaker(1, 1);
        let before = b.admit(DB, 0).0.unwrap();
        call(&mut b, 0, Outcome::Failure);
        let mut resumed = CircuitBreaker::resume(b.settings, b.snapshot(), 10);
        assert_eq!(resumed.admit(DB, 10).0, Err(1), "still open");
        assert_eq!(
            resumed.report(before, Outcome::Success, 10),
            None,
            "old permits are stale"
        );
        let trial = resumed.admit(DB, 1_000).0.unwrap();
        let mut again = CircuitBreaker::resume(resumed.settings, resumed.snapshot(), 1_100);
        assert_eq!(
            again.snapshot().state,
            BreakerState::Open,
            "a lost trial is not a success"
        );
        assert_eq!(again.report(trial, Outcome::Success, 1_100), None);
        assert!(again.admit(DB, 1_100).0.unwrap().trial);
    }

    #[test]
    fn outcomes_from_an_older_generation_are_ignored() {
        let mut b = breaker(1, 1);
        let slow = b.admit(DB, 0).0.unwrap();
        call(&mut b, 0, Outcome::Failure);
        // The slow call, admitted while closed, finishes after the breaker opened.
        assert_eq!(b.report(slow, Outcome::Success, 1), None);
        assert_eq!(b.snapshot().state, BreakerState::Open);
        let trial = b.admit(DB, 1_000).0.unwrap();
        assert_eq!(b.report(slow, Outcome::Failure, 1_000), None);
        assert_eq!(b.snapshot().state, BreakerState::HalfOpen);
        assert!(b.report(trial, Outcome::Success, 1_000).is_some());
    }
}
