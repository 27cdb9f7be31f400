//! The `Mailer` actor: delivers the outbox.
//!
//! Every second (and whenever a service has just queued a message) it runs a
//! round on a task of its own, so its mailbox never waits on a relay: lease
//! due messages, open each sealed body, send it, record the outcome. A lease
//! outlives the longest send, so several instances never send one message
//! at once, and a message whose sender died is taken up again when its lease
//! runs out. A failed try is retried with exponential back-off until
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

use super::settings::{EmailSettings, TransportKind};
use super::templates::Rendered;
use super::transport::{Outbound, SEND_DEADLINE, Transport};
use crate::breaker::{BreakerId, BreakerState, Breakers};
use crate::clock::SharedClock;
use crate::error::{Error, Result};
use crate::model::{Claimed, MailOutcome};
use crate::sealing::Sealer;
use crate::user_repo::Repo;

/// How often the outbox is looked at when nobody says a message waits.
const POLL: Duration = Duration::from_secs(1);

/// How long a sender holds a message: longer than any send may take.
const LEASE_MS: i64 = 2 * SEND_DEADLINE.as_millis() as i64;

/// Messages leased per round.
const BATCH: u32 = 16;

/// The first retry waits this long; each further one twice as long as the last.
const FIRST_RETRY_MS: i64 = 1_000;

/// No retry waits longer than this.
const MAX_RETRY_MS: i64 = 15 * 60 * 1_000;

/// How long to wait before try number `attempts + 1` after `attempts` failed ones.
pub fn backoff_ms(attempts: u32) -> i64 {
    FIRST_RETRY_MS
        .saturating_mul(1_i64 << attempts.saturating_sub(1).min(30))
        .min(MAX_RETRY_MS)
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
        let transport = Transport::new(&args.settings, args.smtp_password.clone())?;
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

    /// Leases what is due and tries each message once.
    async fn round(&self) -> Result<()> {
        let args = &self.args;
        // Background work takes no part in the database breaker: it neither
        // counts towards opening it nor spends its trials, and while it is
        // not closed it waits for requests to find the database back.
        if !self.closed(BreakerId::Database) {
            return Ok(());
        }
        let guarded = self.transport.kind() == TransportKind::Smtp;
        // While the relay's breaker is not closed, one message at a time
        // goes, as the breaker's trial; while it is open, none.
        let trial = guarded && !self.closed(BreakerId::Smtp);
        let mut permit = if trial {
            match args.breakers.admit(BreakerId::Smtp).await {
                Ok(permit) => Some(permit),
                Err(Error::BreakerOpen { .. }) => return self.publish_pending().await,
                Err(e) => return Err(e),
            }
        } else {
            None
        };
        let limit = if trial { 1 } else { BATCH };
        let claimed = args
            .repo
            .claim_mail(args.owner.clone(), self.now(), LEASE_MS, limit)
            .await?;
        for message in claimed {
            let outcome = match permit.take() {
                Some(mut permit) => {
                    let outcome = self.deliver(&message, Some(&mut permit)).await;
                    permit.finish().await;
                    outcome
                }
                None if guarded => {
                    let mut permit = args.breakers.admit(BreakerId::Smtp).await?;
                    let outcome = self.deliver(&message, Some(&mut permit)).await;
                    permit.finish().await;
                    outcome
                }
                None => self.deliver(&message, None).await,
            };
            self.record(&message, outcome).await?;
        }
        self.publish_pending().await
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
                at: self.now().saturating_add(backoff_ms(tries)),
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

    async fn publish_pending(&self) -> Result<()> {
        let pending = self.args.repo.outbox_pending().await?;
        metrics::gauge!("gatehouse_outbox_pending").set(pending as f64);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_exponentially_up_to_a_ceiling() {
        assert_eq!(backoff_ms(1), 1_000);
        assert_eq!(backoff_ms(2), 2_000);
        assert_eq!(backoff_ms(3), 4_000);
        assert_eq!(backoff_ms(8), 128_000);
        assert_eq!(backoff_ms(40), MAX_RETRY_MS);
        assert_eq!(backoff_ms(u32::MAX), MAX_RETRY_MS);
    }
}
