//! Proving an address and recovering an account through email links:
//! asking for a verification link, following it, asking for a reset link,
//! and setting a new password with it.

use secrecy::{ExposeSecret, SecretString};
use tracing::Level;

use super::Database;
use super::email::Composer;
use crate::audit::Event;
use crate::clock::SharedClock;
use crate::error::{Error, FieldError, Result};
use crate::mailer::MailKind;
use crate::model::{LinkPurpose, Principal, User};
use crate::names::normalize_email;
use crate::passwords::Passwords;
use crate::token_issuer::{MAX_TOKEN_BYTES, token_digest};

#[derive(Clone)]
pub struct Recovery {
    pub db: Database,
    pub passwords: Passwords,
    pub mail: Composer,
    pub clock: SharedClock,
}

/// The digest a link token is stored as; `BadLink` for what no link holds.
fn link_digest(token: &str) -> Result<String> {
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
        return Err(Error::BadLink);
    }
    Ok(token_digest(token))
}

impl Recovery {
    /// Sends a new verification link to the caller's pending address, else
    /// to the current one; nothing when there is nothing to verify (or
    /// verification is off, or the address had its hourly share).
    pub async fn request_verification(&self, who: &Principal) -> Result<()> {
        if !self.mail.verifies() {
            return Ok(());
        }
        let now = self.clock.now_ms();
        let repo = &self.db.repo;
        let queued = self
            .db
            .within(async |call| {
                let user = call
                    .track(repo.user(&who.user_id, now).await)?
                    .filter(|u| u.is_active)
                    .ok_or(Error::SessionRevoked)?;
                let link = self
                    .mail
                    .link(LinkPurpose::Verify, &user.username, None, now)?;
                call.track(repo.request_verification(who.clone(), link, now).await)
            })
            .await?;
        if queued {
            self.mail.wake();
        }
        Ok(())
    }

    /// Whether a link of `purpose` could be followed now (reads only: a
    /// page opened by a mail scanner changes nothing).
    pub async fn link_usable(&self, token: &str, purpose: LinkPurpose) -> Result<bool> {
        let Ok(digest) = link_digest(token) else {
            return Ok(false);
        };
        let now = self.clock.now_ms();
        let owner = self
            .db
            .call(self.db.repo.link_owner(digest, purpose, now))
            .await?;
        Ok(owner.is_some())
    }

    /// Follows a verification link: the address it was sent to is verified
    /// (a pending one becomes the account's email).
    pub async fn verify_email(&self, token: &str) -> Result<()> {
        let digest = link_digest(token)?;
        let now = self.clock.now_ms();
        // The link names the user: the write stores the event for them.
        let event = Event::new("email.verified", now);
        let (user, _) = self
            .db
            .call(self.db.repo.confirm_email(digest, now, vec![event.clone()]))
            .await?
            .ok_or(Error::BadLink)?;
        event
            .user(&user.id)
            .log(Level::INFO, "email address verified");
        Ok(())
    }

    /// Takes a reset request and answers at once, whoever the address
    /// belongs to: the lookup and the queueing happen on a task of their own,
    /// so neither the answer nor its timing says whether the account exists.
    pub fn request_reset(&self, email: &str) -> Result<()> {
        let email = normalize_email(email).map_err(|p| Error::Validation(vec![p]))?;
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(e) = this.queue_reset(email).await {
                tracing::error!(error = %e, "a password-reset request was not queued");
            }
        });
        Ok(())
    }

    async fn queue_reset(&self, email: String) -> Result<()> {
        let Some(found) = self
            .db
            .call(self.db.repo.credentials(email.clone()))
            .await?
            .filter(|c| c.user.is_active && c.user.email == email)
        else {
            return Ok(());
        };
        self.send_reset(&found.user).await.map(drop)
    }

    /// Queues a reset link to `user`'s address (voiding older ones); `false`
    /// when the address had its hourly share of messages already.
    pub async fn send_reset(&self, user: &User) -> Result<bool> {
        let now = self.clock.now_ms();
        let link = self
            .mail
            .link(LinkPurpose::Reset, &user.username, None, now)?;
        let email = user.email.clone();
        let event = Event::new("password.reset_requested", now).user(&user.id);
        let queued = self
            .db
            .call(
                self.db
                    .repo
                    .request_reset(email, link, now, vec![event.clone()]),
            )
            .await?;
        if queued {
            self.mail.wake();
            event.log(Level::INFO, "password-reset link queued");
        }
        Ok(queued)
    }

    /// Sets a new password through a reset link: every session of the user
    /// is revoked and a notice goes to the address. A password the policy
    /// refuses leaves the link usable.
    pub async fn reset_password(&self, token: &str, new_password: SecretString) -> Result<()> {
        let digest = link_digest(token)?;
        let now = self.clock.now_ms();
        let repo = &self.db.repo;
        let events = [
            Event::new("password.reset", now),
            Event::new("session.revoked", now)
                .detail("session_id", "*")
                .detail("reason", "password_reset"),
        ];
        let (user_id, _) = self
            .db
            .within(async |call| {
                let owner = call
                    .track(
                        repo.link_owner(digest.clone(), LinkPurpose::Reset, now)
                            .await,
                    )?
                    .ok_or(Error::BadLink)?;
                if let Some(problem) = self.passwords.check_policy(
                    new_password.expose_secret(),
                    &owner.username,
                    &owner.email,
                ) {
                    return Err(Error::Validation(vec![FieldError {
                        field: "new_password",
                        ..problem
                    }]));
                }
                let hash = self.passwords.hash(new_password).await?;
                let notice = self
                    .mail
                    .notice(MailKind::PasswordChanged, &owner.username)?;
                call.track(
                    repo.reset_password(digest, hash, notice, now, events.to_vec())
                        .await,
                )?
                .ok_or(Error::BadLink)
            })
            .await?;
        self.mail.wake();
        let [reset, revoked] = events.map(|e| e.user(&user_id));
        reset.log(Level::INFO, "password set through a reset link");
        revoked.log(Level::INFO, "every session revoked");
        Ok(())
    }
}
