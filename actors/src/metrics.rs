//! The `Metrics` actor: the tallies of what the services did (logins by
//! result, registrations) behind `/api/v1/monitoring/metrics`, and the one
//! place those Prometheus series are incremented.
//!
//! The tally is the actor's own, created when it starts: a restart counts
//! from zero again, while the Prometheus counters (process-wide, scraped)
//! keep their totals. Per-request figures (request count, latency, rate
//! limiting) are HTTP facts and are kept by the front end, not here.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::error::Result;
use crate::system::{self, ActorKind, Names};

/// What the services did, since the actor started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    pub login_successes: u64,
    pub login_failures: u64,
    pub registrations: u64,
}

/// Messages the `Metrics` actor accepts.
pub enum MetricsMsg {
    Login {
        success: bool,
    },
    Registration,
    Tally(RpcReplyPort<Tally>),
    /// Fail on purpose (chaos testing): the supervisor must restart us.
    Crash,
}

pub struct Metrics;

impl Actor for Metrics {
    type Msg = MetricsMsg;
    type State = Tally;
    type Arguments = ();

    async fn pre_start(
        &self,
        _myself: ActorRef<Self::Msg>,
        (): (),
    ) -> Result<Self::State, ActorProcessingErr> {
        Ok(Tally::default())
    }

    async fn handle(
        &self,
        _myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        tally: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MetricsMsg::Login { success: true } => tally.login_successes += 1,
            MetricsMsg::Login { success: false } => tally.login_failures += 1,
            MetricsMsg::Registration => tally.registrations += 1,
            MetricsMsg::Tally(reply) => {
                let _ = reply.send(*tally);
            }
            MetricsMsg::Crash => return Err("crash requested through the chaos route".into()),
        }
        Ok(())
    }
}

/// Where services report what they did; cheap to clone, valid across restarts.
#[derive(Clone)]
pub struct MetricsHandle {
    names: Arc<Names>,
    timeout: Duration,
}

impl MetricsHandle {
    pub fn new(names: Arc<Names>, timeout: Duration) -> Self {
        Self { names, timeout }
    }

    fn tell(&self, msg: MetricsMsg) {
        // An observation lost while the actor restarts is acceptable.
        system::cast(self.names.get(ActorKind::Metrics), msg);
    }

    pub fn login(&self, success: bool) {
        let result = if success { "success" } else { "failure" };
        metrics::counter!("gatehouse_logins_total", "result" => result).increment(1);
        self.tell(MetricsMsg::Login { success });
    }

    pub fn registration(&self) {
        metrics::counter!("gatehouse_registrations_total").increment(1);
        self.tell(MetricsMsg::Registration);
    }

    pub async fn tally(&self) -> Result<Tally> {
        system::call(
            self.names.get(ActorKind::Metrics),
            self.timeout,
            MetricsMsg::Tally,
        )
        .await
    }
}
