//! Accounts: registering, reading and changing one's own profile and
//! password, deactivating. Every change is written for the caller's session
//! and checked against it inside the write.

use secrecy::{ExposeSecret, SecretString};
use tracing::Level;

use super::Database;
use super::email::Composer;
use crate::audit::{self, Event, SECURITY_TARGET};
use crate::breaker::BreakerId;
use crate::clock::{SharedClock, secs_to_ms};
use crate::error::{Error, FieldError, Result};
use crate::mailer::MailKind;
use crate::metrics::MetricsHandle;
use crate::model::{EmailChangeMail, NewUser, Principal, ProfileChange, User};
use crate::names::{normalize_email, username_problem};
use crate::passwords::Passwords;

/// A registration as the front end received it.
pub struct Registration {
    pub email: String,
    pub username: String,
    pub password: SecretString,
}

#[derive(Clone)]
pub struct Accounts {
    pub db: Database,
    pub passwords: Passwords,
    pub metrics: MetricsHandle,
    pub mail: Composer,
    pub clock: SharedClock,
    /// Email changes and deactivation need a password check this recent.
    pub reauth_window_s: u64,
}

impl Accounts {
    /// Creates an account, and (unless verification is off) queues the
    /// link that verifies its address.
    pub async fn register(&self, r: Registration) -> Result<User> {
        let username = r.username.trim().to_owned();
        let mut problems = Vec::new();
        let email = normalize_email(&r.email).unwrap_or_else(|p| {
            problems.push(p);
            String::new()
        });
        problems.extend(username_problem(&username));
        problems.extend(
            self.passwords
                .check_policy(r.password.expose_secret(), &username, &email),
        );
        if !problems.is_empty() {
            return Err(Error::Validation(problems));
        }
        // Ask the breaker first: while it is open, refuse before paying for a hash.
        let mut call = self.db.breakers.admit(BreakerId::Database).await?;
        let password_hash = self.passwords.hash(r.password).await?;
        let now = self.clock.now_ms();
        let new = NewUser {
            id: uuid::Uuid::now_v7().to_string(),
            verify: self.mail.verify_link(&username, None, now)?,
            email,
            username,
            password_hash,
            now,
        };
        let queued = new.verify.is_some();
        let events = vec![Event::new("user.registered", now).user(&new.id)];
        let user = call.track(self.db.repo.create_user(new, events.clone()).await);
        call.finish().await;
        let user = user?;
        if queued {
            self.mail.wake();
        }
        self.metrics.registration();
        audit::log_all(&events, Level::INFO, "account created");
        Ok(user)
    }

    /// The caller's own account.
    pub async fn me(&self, who: &Principal) -> Result<User> {
        let now = self.clock.now_ms();
        let user = match self.db.repo.cached_user(&who.user_id, now) {
            Some(user) => Some(user),
            None => self.db.call(self.db.repo.user(&who.user_id, now)).await?,
        };
        user.filter(|u| u.is_active).ok_or(Error::SessionRevoked)
    }

    /// Changes the caller's email and/or username under the registration
    /// rules. A new email is announced to the old address; with verification
    /// on it waits as `pending_email` for the link sent to it.
    pub async fn update_profile(&self, who: &Principal, change: ProfileChange) -> Result<User> {
        let mut problems: Vec<FieldError> = Vec::new();
        if change.email.is_none() && change.username.is_none() {
            problems.push(FieldError::new(
                "email",
                "give an email, a username, or both",
            ));
        }
        let email = change
            .email
            .as_deref()
            .and_then(|e| normalize_email(e).map_err(|p| problems.push(p)).ok());
        let username = change.username.map(|u| u.trim().to_owned());
        problems.extend(username.as_deref().and_then(username_problem));
        if !problems.is_empty() {
            return Err(Error::Validation(problems));
        }
        let now = self.clock.now_ms();
        let mail = match &email {
            Some(_) => {
                let current = self.me(who).await?;
                Some(EmailChangeMail {
                    notice: self
                        .mail
                        .notice(MailKind::EmailChangeRequested, &current.username)?,
                    verify: self.mail.verify_link(&current.username, None, now)?,
                })
            }
            None => None,
        };
        let change = ProfileChange {
            email,
            username,
            mail,
        };
        let mailed = change.mail.is_some();
        // A new address is where recovery links go: privileged.
        let by = match mailed {
            true => who.privileged(now, secs_to_ms(self.reauth_window_s)),
            false => who.clone(),
        };
        let events = vec![Event::new("profile.changed", now).user(&who.user_id)];
        let (user, _) = self
            .db
            .call(self.db.repo.update_profile(by, change, now, events.clone()))
            .await?;
        if mailed {
            self.mail.wake();
        }
        audit::log_all(&events, Level::INFO, "profile updated");
        Ok(user)
    }

    /// Changes the caller's password; every other session is revoked.
    pub async fn change_password(
        &self,
        who: &Principal,
        current: SecretString,
        new: SecretString,
    ) -> Result<()> {
        let mut call = self.db.breakers.admit(BreakerId::Database).await?;
        let credentials = call
            .track(self.db.repo.credentials_by_id(who.user_id.clone()).await)?
            .filter(|c| c.user.is_active)
            .ok_or(Error::SessionRevoked)?;
        let user = &credentials.user;
        let verdict = self
            .passwords
            .verify(current.clone(), Some(credentials.password_hash.clone()))
            .await?;
        if !verdict.matches {
            call.finish().await;
            tracing::warn!(target: SECURITY_TARGET, event = "password.change_refused",
                user_id = %user.id,
                "current password did not match");
            return Err(Error::WrongCurrentPassword);
        }
        let new_password = new.expose_secret();
        if let Some(problem) =
            self.passwords
                .check_policy(new_password, &user.username, &user.email)
        {
            call.finish().await;
            return Err(Error::Validation(vec![FieldError {
                field: "new_password",
                ..problem
            }]));
        }
        if new_password == current.expose_secret() {
            call.finish().await;
            return Err(Error::validation(
                "new_password",
                "must differ from the current password",
            ));
        }
        let hash = self.passwords.hash(new).await?;
        let now = self.clock.now_ms();
        let verified = credentials.password_hash.clone();
        let notice = self
            .mail
            .notice(MailKind::PasswordChanged, &user.username)?;
        let events = vec![Event::new("password.changed", now).user(&user.id)];
        let changes = call.track(
            self.db
                .repo
                .set_password(
                    who.clone(),
                    verified,
                    hash,
                    Some(notice),
                    now,
                    events.clone(),
                )
                .await,
        )?;
        call.finish().await;
        self.mail.wake();
        audit::log_all(&events, Level::INFO, "password changed");
        if !changes.is_empty() {
            tracing::info!(target: SECURITY_TARGET, event = "session.revoked",
                user_id = %user.id, session_id = "*",
                reason = "password_change", count = changes.len(), "other sessions revoked");
        }
        Ok(())
    }

    /// Deactivates the caller's account and revokes all its sessions.
    pub async fn deactivate(&self, who: &Principal) -> Result<()> {
        let now = self.clock.now_ms();
        let by = who.privileged(now, secs_to_ms(self.reauth_window_s));
        let events = [
            Event::new("account.deactivated", now).user(&who.user_id),
            Event::new("session.revoked", now)
                .user(&who.user_id)
                .detail("session_id", "*")
                .detail("reason", "deactivation"),
        ];
        self.db
            .call(self.db.repo.deactivate(by, now, events.to_vec()))
            .await?;
        events[0].log(Level::WARN, "account deactivated");
        events[1].log(Level::INFO, "all sessions revoked");
        Ok(())
    }
}
