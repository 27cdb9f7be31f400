//! The `Mailer` actor: delivers the outbox.
//!
//! Every second (and whenever a service has just queued a message) it runs a
//! round on a task of its own, so its mailbox never waits on a relay: lease
//! due messages, open each sealed body, send it, record the outcome. A lease
//! outlives the longest send, so several instances never send one message
//! at once, and a message whose sender died is taken up again when its lease
//! runs out. A failed try is retried with exponential back-off (from
//! `email.first_retry_s`, doubling, at most 15 minutes apart) until
//! `email.max_attempts`, then given up (`dead`, logged, counted). The `smtp`
//! breaker stands between the rounds and the relay; the database breaker
//! only pauses them (background work neither trips it nor spends its trials).
//!
//! The actor owns its transport (built again by every incarnation) and the
//! round in flight: a stop aborts it; after a failure it may finish the
//! messages it leased, which no other sender touches until their leases end.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use secrecy::SecretString;
use tokio::task::JoinHandle;

use super::settings::{EmailSettings, MAX_RETRY_S, TransportKind};
use super::templates::Rendered;
use super::transport::{Outbound, SEND_DEADLINE, Transport};
use crate::breaker::{BreakerId, BreakerState, Breakers};
use crate::clock::{SharedClock, secs_to_ms};
use crate::error::{Error, Result};
use crate::model::{Claimed, MailOutcome};
use crate::sealing::Sealer;
use crate::user_repo::Repo;

/// How often the outbox is looked at when nobody says a message waits.
const POLL: Duration = Duration::from_secs(1);

/// How long a sender holds a message: longer than any send may take.
const LEASE_MS: i64 = 2 * SEND_DEADLINE.as_millis() as i64;

/// Messages tried per round at most (one lease at a time).
const BATCH: u32 = 16;

/// How long to wait before try number `attempts + 1` after `attempts`
/// failed ones: `first_ms`, then twice as long each time, at most
/// [`MAX_RETRY_S`].
pub fn backoff_ms(attempts: u32, first_ms: i64) -> i64 {
    first_ms
        .saturating_mul(1_i64 << attempts.saturating_sub(1).min(30))
        .min(secs_to_ms(MAX_RETRY_S))
}

pub enum MailerMsg {
    /// Look at the outbox now (a message was just queued, or the poll ticked).
    Wake,
    /// The round in flight ended.
    RoundDone,
    /// Fail on purpose (the chaos route).
    Crash,
}

#[derive(Clone)]
pub struct MailerArgs {
    pub settings: Arc<EmailSettings>,
    pub smtp_password: Option<SecretString>,
    /// Opens message bodies (purpose `outbox`).
    pub sealer: Arc<Sealer>,
    pub repo: Repo,
    pub breakers: Breakers,
    pub clock: SharedClock,
    /// This process's name as a lease holder.
    pub owner: String,
}

/// What one round needs; shared by the actor and its round task.
struct Courier {
    transport: Transport,
    args: MailerArgs,
}

pub struct MailerState {
    courier: Arc<Courier>,
    round: Option<JoinHandle<()>>,
    /// A wake-up came while a round was in flight: run another after it.
    again: bool,
}

pub struct Mailer;

impl Actor for Mailer {
    type Msg = MailerMsg;
    type State = MailerState;
    type Arguments = MailerArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<Self::Msg>,
        args: MailerArgs,
    ) -> Result<Self::State, ActorProcessingErr> {
        // It may create the file transport's directory: off the runtime.
        let (settings, password) = (Arc::clone(&args.settings), args.smtp_password.clone());
        let transport =
            tokio::task::spawn_blocking(move || Transport::new(&settings, password)).await??;
        myself.send_interval(POLL, || MailerMsg::Wake);
        Ok(MailerState {
            courier: Arc::new(Courier { transport, args }),
            round: None,
            again: true,
        })
    }

    async fn post_start(
        &self,
        myself: ActorRef<Self::Msg>,
        _state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        // Whatever an earlier incarnation or process left is due now.
        myself.send_message(MailerMsg::Wake)?;
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<Self::Msg>,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(round) = state.round.take() {
            round.abort();
        }
        Ok(())
    }

    async fn handle(
        &self,
        myself: ActorRef<Self::Msg>,
        msg: Self::Msg,
        state: &mut Self::State,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            MailerMsg::Wake => state.again = true,
            MailerMsg::RoundDone => state.round = None,
            MailerMsg::Crash => return Err("crash requested".into()),
        }
        if state.round.is_none() && state.again {
            state.again = false;
            let courier = Arc::clone(&state.courier);
            state.round = Some(tokio::spawn(async move {
                if let Err(e) = courier.round().await {
                    tracing::debug!(error = %e, "mail round cut short; the next one retries");
                }
                let _ = myself.send_message(MailerMsg::RoundDone);
            }));
        }
        Ok(())
    }
}

impl Courier {
    fn now(&self) -> i64 {
        self.args.clock.now_ms()
    }

    /// Whether breaker `id` is closed (an absent one counts as closed).
    fn closed(&self, id: BreakerId) -> bool {
        self.args
            .breakers
            .board()
            .get(id)
            .is_none_or(|b| b.state == BreakerState::Closed)
    }

    /// Tries what is due, once each, one lease at a time (so no lease waits
    /// behind other messages' sends), at most [`BATCH`] messages.
    async fn round(&self) -> Result<()> {
        let args = &self.args;
        // Background work takes no part in the database breaker: it neither
        // counts towards opening it nor spends its trials, and while it is
        // not closed it waits for requests to find the database back.
        if !self.closed(BreakerId::Database) {
            return Ok(());
        }
        // Nothing waits: no write (SQLite has a single writer).
        if self.publish_pending().await? == 0 {
            return Ok(());
        }
        let guarded = self.transport.kind() == TransportKind::Smtp;
        for _ in 0..BATCH {
            // While the relay's breaker is not closed only its trial goes,
            // and while it is open nothing does.
            let trial = guarded && !self.closed(BreakerId::Smtp);
            let mut permit = if guarded {
                match args.breakers.admit(BreakerId::Smtp).await {
                    Ok(permit) => Some(permit),
                    Err(Error::BreakerOpen { .. }) => break,
                    Err(e) => return Err(e),
                }
            } else {
                None
            };
            let claimed = args
                .repo
                .claim_mail(args.owner.clone(), self.now(), LEASE_MS, 1)
                .await?;
            let Some(message) = claimed.into_iter().next() else {
                break;
            };
            let outcome = self.deliver(&message, permit.as_mut()).await;
            if let Some(permit) = permit.as_mut() {
                permit.finish().await;
            }
            self.record(&message, outcome).await?;
            if trial {
                break;
            }
        }
        self.publish_pending().await.map(|_| ())
    }

    /// One try of one message; its outcome.
    async fn deliver(
        &self,
        message: &Claimed,
        permit: Option<&mut crate::breaker::PermitGuard>,
    ) -> MailOutcome {
        let rendered = match self.open(message) {
            Ok(rendered) => rendered,
            Err(e) => {
                return MailOutcome::Dead {
                    error: e.to_string(),
                };
            }
        };
        let outbound = Outbound {
            id: message.id.clone(),
            to: message.recipient.clone(),
            rendered,
        };
        let sent = self.transport.send(&outbound).await;
        if let Some(permit) = permit {
            // A refusal is the relay answering: only a relay that cannot be
            // reached counts against its breaker.
            let _ = permit.track(match &sent {
                Err(e) if !e.permanent => Err(Error::Unavailable(e.detail.clone())),
                _ => Ok(()),
            });
        }
        let tries = message.attempts.saturating_add(1);
        match sent {
            Ok(()) => MailOutcome::Sent,
            Err(e) if e.permanent || tries >= self.args.settings.max_attempts => {
                MailOutcome::Dead { error: e.detail }
            }
            Err(e) => MailOutcome::Retry {
                at: self.now().saturating_add(backoff_ms(
                    tries,
                    secs_to_ms(self.args.settings.first_retry_s),
                )),
                error: e.detail,
            },
        }
    }

    fn open(&self, message: &Claimed) -> Result<Rendered> {
        let plain = self.args.sealer.open(&message.id, &message.body)?;
        serde_json::from_slice(&plain)
            .map_err(|_| Error::Internal("the message body is not readable".into()))
    }

    /// Writes how the try ended, and says so in the metrics and the log.
    async fn record(&self, message: &Claimed, outcome: MailOutcome) -> Result<()> {
        let result = match &outcome {
            MailOutcome::Sent => "sent",
            MailOutcome::Retry { .. } => "retry",
            MailOutcome::Dead { .. } => "dead",
        };
        match &outcome {
            MailOutcome::Sent => tracing::info!(event = "email.sent", message_id = %message.id,
                kind = %message.kind, attempts = message.attempts + 1, "message delivered"),
            MailOutcome::Retry { at, error } => tracing::warn!(event = "email.retry",
                message_id = %message.id, kind = %message.kind, attempts = message.attempts + 1,
                retry_in_ms = at - self.now(), error = %error, "delivery failed; will retry"),
            MailOutcome::Dead { error } => tracing::error!(event = "email.dead",
                message_id = %message.id, kind = %message.kind, attempts = message.attempts + 1,
                error = %error, "delivery given up"),
        }
        metrics::counter!("gatehouse_emails_total", "kind" => message.kind.clone(), "result" => result)
            .increment(1);
        let args = &self.args;
        let kept = args
            .repo
            .finish_mail(message.id.clone(), args.owner.clone(), outcome, self.now())
            .await?;
        if !kept {
            tracing::warn!(message_id = %message.id,
                "the lease on a message ran out while it was being sent");
        }
        Ok(())
    }

    /// Sets `gatehouse_outbox_pending` to what waits, and returns it.
    async fn publish_pending(&self) -> Result<u64> {
        let pending = self.args.repo.outbox_pending().await?;
        metrics::gauge!("gatehouse_outbox_pending").set(pending as f64);
        Ok(pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_a_ceiling() {
        assert_eq!(backoff_ms(1, 1_000), 1_000);
        assert_eq!(backoff_ms(2, 1_000), 2_000);
        assert_eq!(backoff_ms(3, 1_000), 4_000);
        assert_eq!(backoff_ms(8, 1_000), 128_000);
        // The default: 30 s, 1, 2, 4, 8 min, then 15 min apart.
        assert_eq!(backoff_ms(5, 30_000), 480_000);
        assert_eq!(backoff_ms(6, 30_000), 900_000);
        assert_eq!(backoff_ms(40, 1_000), 900_000);
        assert_eq!(backoff_ms(u32::MAX, 30_000), 900_000);
    }
}
