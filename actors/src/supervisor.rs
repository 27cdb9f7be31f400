//! The root supervisor: starts every actor linked to itself and restarts any
//! that fails.
//!
//! ractor has no restart strategy of its own (its default is to stop the
//! supervisor when a child exits), so this one keeps, per child, how to spawn
//! it and when it last restarted. A child that exits is respawned at once
//! under the same registry name; one that cannot start is retried with a short
//! back-off. More than `max_restarts` restarts inside `window` escalate: the
//! child is left stopped, the failure is logged, and health reports
//! `unhealthy` until an operator restarts the process.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use ractor::{Actor, ActorCell, ActorProcessingErr, ActorRef, SpawnErr, SupervisionEvent};

use crate::audit::SECURITY_TARGET;
use crate::clock::SharedClock;
use crate::system::{ActorKind, Names};

/// Starts one incarnation of a child, linked to the given supervisor.
pub type SpawnFn = Arc<
    dyn Fn(ActorCell) -> Pin<Box<dyn Future<Output = Result<ActorCell, SpawnErr>> + Send>>
        + Send
        + Sync,
>;

pub struct ChildSpec {
    pub kind: ActorKind,
    pub spawn: SpawnFn,
}

/// How many restarts are tolerated in how long before giving up on a child.
#[derive(Debug, Clone, Copy)]
pub struct RestartPolicy {
    pub max_restarts: usize,
    pub window: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActorStatus {
    Running,
    Restarting,
    Stopped,
}

impl ActorStatus {
    pub fn name(self) -> &'static str {
        match self {
            Self::Running => "running",
            Self::Restarting => "restarting",
            Self::Stopped => "stopped",
        }
    }
}

/// What operators see of one actor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorReport {
    pub status: ActorStatus,
    pub restarts: u64,
    /// When it last failed (Unix ms); the reason is in the log, not here.
    pub last_failure: Option<i64>,
}

/// Every actor's status as the supervisor last published it: written by the
/// supervisor alone, read without locks by monitoring.
#[derive(Default)]
pub struct ActorBoard {
    reports: ArcSwap<BTreeMap<ActorKind, ActorReport>>,
}

impl ActorBoard {
    pub fn all(&self) -> Vec<(ActorKind, ActorReport)> {
        self.reports
            .load()
            .iter()
            .map(|(k, r)| (*k, r.clone()))
            .collect()
    }

    /// True when every actor is running.
    pub fn all_running(&self) -> bool {
        let reports = self.reports.load();
        reports.len() == ActorKind::ALL.len()
            && reports.values().all(|r| r.status == ActorStatus::Running)
    }

    /// Publishes a change to one report (only the supervisor calls this).
    fn update(&self, kind: ActorKind, change: impl FnOnce(&mut ActorReport)) {
        let mut reports = BTreeMap::clone(&self.reports.load());
        let report = reports.entry(kind).or_insert(ActorReport {
            status: ActorStatus::Restarting,
            restarts: 0,
            last_failure: None,
        });
        change(report);
        self.reports.store(Arc::new(reports));
    }
}

pub enum SupervisorMsg {
    /// Try again to start a child whose last start failed.
    Respawn(ActorKind),
}

pub struct SupervisorArgs {
    pub children: Vec<ChildSpec>,
    pub names: Arc<Names>,
    pub board: Arc<ActorBoard>,
    pub policy: RestartPolicy,
    pub clock: SharedClock,
}

pub struct SupervisorState {
    children: HashMap<ActorKind, SpawnFn>,
    /// When each child was last restarted (Unix ms), within the policy's window.
    restarts: HashMap<ActorKind, VecDeque<i64>>,
    names: Arc<Names>,
    board: Arc<ActorBoard>,
    policy: RestartPolicy,
    clock: SharedClock,
}

/// Back-off before retrying a child that failed to start.
const RETRY_START_AFTER: Duration = Duration::from_millis(200);

pub struct Supervisor;

impl Supervisor {
    fn kind_of(state: &SupervisorState, cell: &ActorCell) -> Option<ActorKind> {
        let name = cell.get_name()?;
        ActorKind::ALL
            .into_iter()
            .find(|k| state.names.get(*k) == name)
    }

    /// A child is down: restart it, unless it has used up its restarts.
    async fn restart(
        myself: &ActorRef<SupervisorMsg>,
        kind: ActorKind,
        state: &mut SupervisorState,
    ) {
        let now = state.clock.now_ms();
        let window = state.policy.window;
        let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
        let history = state.restarts.entry(kind).or_default();
        while history
            .front()
            .is_some_and(|t| now.saturating_sub(*t) > window_ms)
        {
            history.pop_front();
        }
        if history.len() >= state.policy.max_restarts {
            state
                .board
                .update(kind, |r| r.status = ActorStatus::Stopped);
            tracing::error!(
                event = "actor.escalated",
                actor = kind.name(),
                restarts = history.len(),
                window_s = window.as_secs(),
                "actor keeps failing; left stopped, restart the service"
            );
            return;
        }
        history.push_back(now);
        state
            .board
            .update(kind, |r| r.status = ActorStatus::Restarting);
        let Some(spawn) = state.children.get(&kind).cloned() else {
            return;
        };
        match spawn(myself.get_cell()).await {
            Ok(_) => {
                state.board.update(kind, |r| {
                    r.status = ActorStatus::Running;
                    r.restarts += 1;
                });
                metrics::counter!("gatehouse_actor_restarts_total", "actor" => kind.name())
                    .increment(1);
                tracing::warn!(
                    target: SECURITY_TARGET, event = "actor.restarted",
                    actor = kind.name(),
                    "actor restarted"
                );
            }
            Err(e) => {
                tracing::error!(actor = kind.name(), error = %e, "actor failed to restart; retrying");
                myself.send_after(RETRY_START_AFTER, move || SupervisorMsg::Respawn(kind));
            }
        }
    }
}

impl Actor for Supervisor {
    type Msg = SupervisorMsg;
    type State = SupervisorState;
    type Arguments = SupervisorArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: SupervisorArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        let mut children = HashMap::new();
        for child in args.children {
            (child.spawn)(myself.get_cell()).await?;
            args.board
                .update(child.kind, |r| r.status = ActorStatus::Running);
            metrics::counter!("gatehouse_actor_restarts_total", "actor" => child.kind.name())
                .absolute(0);
            children.insert(child.kind, child.spawn);
        }
        Ok(SupervisorState {
            children,
            restarts: HashMap::new(),
            names: args.names,
            board: args.board,
            policy: args.policy,
            clock: args.clock,
        })
    }

    async fn post_stop(
        &self,
        myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        myself
            .stop_children_and_wait(None, Some(Duration::from_secs(5)))
            .await;
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SupervisorMsg::Respawn(kind) => Self::restart(&myself, kind, state).await,
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<Self::Msg>,
        event: SupervisionEvent,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, reason) = match &event {
            SupervisionEvent::ActorFailed(cell, err) => (cell, err.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                (cell, reason.clone().unwrap_or_else(|| "stopped".into()))
            }
            _ => return Ok(()),
        };
        let Some(kind) = Self::kind_of(state, cell) else {
            return Ok(());
        };
        state.board.update(kind, |r| {
            r.status = ActorStatus::Restarting;
            r.last_failure = Some(state.clock.now_ms());
        });
        tracing::error!(event = "actor.failed", actor = kind.name(), reason = %reason, "actor failed");
        Self::restart(&myself, kind, state).await;
        Ok(())
    }
}
