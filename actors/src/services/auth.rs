//! Logging in (password → session and tokens) and exchanging a refresh token
//! for a new pair.

use std::net::IpAddr;

use secrecy::SecretString;

use super::email::Composer;
use super::{Database, LimiterPolicy};
use crate::breaker::BreakerId;
use crate::clock::{SharedClock, secs_to_ms};
use crate::error::{Error, Result};
use crate::metrics::MetricsHandle;
use crate::model::{LinkPurpose, NewSession, Rotation};
use crate::names::{MAX_LOGIN_CHARS, loggable, normalize_login};
use crate::passwords::Passwords;
use crate::rate_limiter::{
    AttemptDecision, RateLimits, SUSPICION_WINDOW_MS, Settlement, ThrottleKey,
};
use crate::token_issuer::{AuthSettings, Grant, MAX_TOKEN_BYTES, Tokens, token_digest};

/// A login attempt as the front end received it.
pub struct LoginRequest {
    /// Username or email, as typed.
    pub login: String,
    pub password: SecretString,
    pub ip: IpAddr,
    pub user_agent: Option<String>,
}

/// What a successful login or refresh hands the client.
pub struct Issued {
    pub access_token: SecretString,
    pub expires_in: u64,
    pub refresh_token: SecretString,
}

#[derive(Clone)]
pub struct Auth {
    pub db: Database,
    pub limits: RateLimits,
    pub policy: LimiterPolicy,
    pub passwords: Passwords,
    pub tokens: Tokens,
    pub metrics: MetricsHandle,
    pub mail: Composer,
    pub clock: SharedClock,
    pub settings: AuthSettings,
}

impl Auth {
    /// Verifies a login and opens a session.
    pub async fn login(&self, req: LoginRequest) -> Result<Issued> {
        if req.login.chars().count() > MAX_LOGIN_CHARS {
            // No account has such a name; refuse at the cost of one verify, like any unknown name.
            self.passwords.verify(req.password.clone(), None).await?;
            return Err(self.refuse(&req, "unknown_user").await);
        }
        let name = normalize_login(&req.login);
        let mut call = self.db.breakers.admit(BreakerId::Database).await?;
        let found = call.track(self.db.repo.credentials(name.clone()).await)?;
        // The account's names share one count; an unknown name counts alone.
        let key = match &found {
            Some(c) => ThrottleKey::account(&c.user.id),
            None => ThrottleKey::name(&name),
        };
        let mut attempt = match self.attempt(&req, key).await {
            Ok(attempt) => attempt,
            Err(e) => {
                call.finish().await;
                return Err(e);
            }
        };
        let (stored, user) = match found {
            Some(c) => (Some(c.password_hash), Some(c.user)),
            None => (None, None),
        };
        let verdict = self
            .passwords
            .verify(req.password.clone(), stored.clone())
            .await?;
        let (user, verified_hash) = match (user, stored) {
            (Some(user), Some(hash)) if verdict.matches && user.is_active => (user, hash),
            (user, _) => {
                call.finish().await;
                attempt.settle();
                let reason = match user {
                    None => "unknown_user",
                    Some(u) if !u.is_active => "inactive",
                    Some(_) => "wrong_password",
                };
                return Err(self.refuse(&req, reason).await);
            }
        };
        if self.mail.requires_verified() && !user.email_verified {
            let now_ms = self.clock.now_ms();
            // Only the right password learns this, so nothing is enumerated.
            call.finish().await;
            attempt.settle();
            attempt.forgive();
            self.metrics.login(false);
            tracing::warn!(event = "login.failure", login = %loggable(&req.login), ip = %req.ip,
                reason = "email_unverified", "login refused until the address is verified");
            // Without a session there is no other way to ask for a new link
            // (the per-recipient cap bounds how many this sends).
            let link = self
                .mail
                .link(LinkPurpose::Verify, &user.username, None, now_ms)?;
            let (db, mail) = (self.db.clone(), self.mail.clone());
            tokio::spawn(async move {
                match db
                    .call(db.repo.resend_verification(user.id, link, now_ms))
                    .await
                {
                    Ok(true) => mail.wake(),
                    Ok(false) => {}
                    Err(e) => tracing::warn!(error = %e, "a new verification link was not queued"),
                }
            });
            return Err(Error::EmailNotVerified);
        }

        // Tokens are made before the session is written: if that write fails
        // they are simply never handed out, and nothing is left half done.
        let now = self.clock.now_ms();
        let session_id = uuid::Uuid::now_v7().to_string();
        let amr = vec!["pwd".to_owned()];
        let grant = Grant {
            user_id: user.id.clone(),
            session_id: session_id.clone(),
            auth_time: now.div_euclid(1000),
            amr: amr.clone(),
            roles: user.roles.clone(),
        };
        let issued = self.tokens.issue(grant, now.div_euclid(1000)).await?;
        let rehash = if verdict.needs_rehash {
            Some(self.passwords.hash(req.password.clone()).await?)
        } else {
            None
        };
        let absolute = now.saturating_add(secs_to_ms(self.settings.session_max_lifetime_s));
        let session = NewSession {
            id: session_id,
            user_id: user.id.clone(),
            refresh_digest: issued.refresh.digest.clone(),
            ip: Some(req.ip.to_string()),
            user_agent: req.user_agent.clone(),
            now,
            expires_at: now
                .saturating_add(secs_to_ms(self.settings.refresh_token_ttl_s))
                .min(absolute),
            absolute_expires_at: absolute,
            auth_time: now,
            amr,
        };
        let created = call.track(
            self.db
                .repo
                .create_session(session, verified_hash, rehash)
                .await,
        )?;
        call.finish().await;
        attempt.settle();
        let Some(session) = created else {
            // The password was changed, or the account deactivated, while we checked.
            return Err(self.refuse(&req, "credentials_changed").await);
        };
        attempt.forgive();
        self.metrics.login(true);
        tracing::info!(event = "login.success", login = %loggable(&req.login), ip = %req.ip,
            user_id = %user.id, "login accepted");
        tracing::info!(event = "session.created", user_id = %user.id, session_id = %session.id,
            "session opened");
        Ok(Issued {
            access_token: issued.access.token,
            expires_in: issued.access.expires_in,
            refresh_token: issued.refresh.token,
        })
    }

    /// Starts a throttled attempt against `key`; refuses it while that is locked.
    async fn attempt(&self, req: &LoginRequest, key: ThrottleKey) -> Result<Attempt> {
        let now = self.clock.now_ms();
        let (decision, shared) = match self.limits.attempt(key.clone(), now).await? {
            Ok(decision) => (decision, self.limits.is_shared()),
            Err(unshared) => (
                self.policy
                    .fall_back(unshared)?
                    .unwrap_or(AttemptDecision::Allowed),
                false,
            ),
        };
        match decision {
            AttemptDecision::Allowed => Ok(Attempt {
                limits: self.limits.clone(),
                key,
                shared,
                settled: false,
            }),
            AttemptDecision::Locked {
                retry_after_s,
                first,
            } => {
                if first {
                    tracing::warn!(event = "account.throttled", login = %loggable(&req.login),
                        ip = %req.ip, retry_after_s, "login name locked after repeated failures");
                }
                Err(Error::AccountThrottled { retry_after_s })
            }
        }
    }

    /// Records a refused login (metrics, burst detection, the log) and says so.
    async fn refuse(&self, req: &LoginRequest, reason: &'static str) -> Error {
        self.metrics.login(false);
        let login = normalize_login(&req.login);
        let now = self.clock.now_ms();
        if let Some(burst) = self.limits.login_failed(req.ip, login, now).await {
            tracing::warn!(event = "suspicious", ip = %req.ip, failures = burst.failures,
                distinct_logins = burst.distinct_logins, window_s = SUSPICION_WINDOW_MS / 1000,
                "burst of failed logins from one address");
        }
        tracing::warn!(event = "login.failure", login = %loggable(&req.login), ip = %req.ip,
            reason, "login refused");
        Error::InvalidCredentials
    }

    /// Exchanges a refresh token for a new pair; a spent one revokes its session.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Issued> {
        if refresh_token.is_empty() || refresh_token.len() > MAX_TOKEN_BYTES {
            return Err(Error::SessionRevoked);
        }
        let old = token_digest(refresh_token);
        // The new pair is made before the old token is spent, so a failure
        // between the two never leaves the client holding only a spent token.
        let owner = self
            .db
            .call(self.db.repo.refresh_owner(old.clone()))
            .await?;
        let Some(owner) = owner else {
            // Unknown, or spent: the rotation below tells which.
            return self.spend(old, None).await;
        };
        // The session's way of authenticating stays; the roles are the user's now.
        let now = self.clock.now_ms();
        let grant = Grant {
            user_id: owner.user_id,
            session_id: owner.session_id.clone(),
            auth_time: owner.auth_time.div_euclid(1000),
            amr: owner.amr,
            roles: owner.roles,
        };
        let issued = self.tokens.issue(grant, now.div_euclid(1000)).await?;
        self.spend(old, Some((owner.session_id, issued))).await
    }

    /// Presents the old token's digest to the store with the new pair made
    /// for `expected` (the session the token belonged to when looked up).
    async fn spend(
        &self,
        old: String,
        expected: Option<(String, crate::token_issuer::Issued)>,
    ) -> Result<Issued> {
        let now = self.clock.now_ms();
        let new = match &expected {
            Some((_, issued)) => issued.refresh.digest.clone(),
            // Nothing will be handed out; a digest nobody holds keeps the
            // exchange one code path.
            None => crate::token_issuer::OpaqueToken::generate()?.digest,
        };
        let ttl = secs_to_ms(self.settings.refresh_token_ttl_s);
        let grace = secs_to_ms(self.settings.refresh_reuse_grace_s);
        let rotation = self
            .db
            .call(self.db.repo.rotate_refresh(old, new, now, ttl, grace))
            .await?;
        match (rotation, expected) {
            (
                Rotation::Rotated {
                    session_id,
                    user_id,
                },
                Some((expected_session, issued)),
            ) if expected_session == session_id => {
                tracing::info!(event = "session.refreshed", user_id = %user_id,
                    session_id = %session_id, "refresh token rotated");
                Ok(Issued {
                    access_token: issued.access.token,
                    expires_in: issued.access.expires_in,
                    refresh_token: issued.refresh.token,
                })
            }
            (
                Rotation::Reused {
                    session_id,
                    user_id,
                    ..
                },
                _,
            ) => {
                tracing::warn!(event = "refresh.reuse_detected", user_id = %user_id,
                    session_id = %session_id, "a spent refresh token was presented");
                tracing::warn!(event = "session.revoked", user_id = %user_id,
                    session_id = %session_id, reason = "refresh_reuse", "session revoked");
                Err(Error::SessionRevoked)
            }
            // Unknown, expired, revoked, or spent within the grace window; or it
            // changed hands between our two looks (then the other exchange won,
            // and this one must not).
            _ => Err(Error::SessionRevoked),
        }
    }
}

/// A counted login attempt. One that ends without a verdict on the password
/// (the database failed, the client went away) is given back on drop, so
/// outages do not lock accounts.
struct Attempt {
    limits: RateLimits,
    key: ThrottleKey,
    /// Redis counted it too.
    shared: bool,
    settled: bool,
}

impl Attempt {
    /// The password was judged: the attempt stays counted (or is forgiven by a success).
    fn settle(&mut self) {
        self.settled = true;
    }

    /// The login succeeded: the account's failures are forgiven.
    fn forgive(&self) {
        self.limits
            .settle(self.key.clone(), Settlement::Succeeded, self.shared);
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            self.limits
                .settle(self.key.clone(), Settlement::Released, self.shared);
        }
    }
}
