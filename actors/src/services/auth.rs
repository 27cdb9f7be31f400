//! Logging in (password, then a second factor when the account has one →
//! session and tokens), re-authenticating a session, and exchanging a
//! refresh token for a new pair.

use std::net::IpAddr;

use secrecy::SecretString;
use tracing::Level;

use super::email::Composer;
use super::mfa::SecondFactors;
use super::{Database, LimiterPolicy};
use crate::audit::{Event, SECURITY_TARGET};
use crate::breaker::BreakerId;
use crate::clock::{SharedClock, secs_to_ms};
use crate::error::{Error, Result};
use crate::metrics::MetricsHandle;
use crate::model::{Challenge, ChallengeOutcome, LinkPurpose, NewSession, Principal, Rotation};
use crate::names::{MAX_LOGIN_CHARS, loggable, normalize_login};
use crate::passwords::Passwords;
use crate::rate_limiter::{
    AttemptDecision, RateLimits, SUSPICION_WINDOW_MS, Settlement, ThrottleKey,
};
use crate::token_issuer::{
    AuthSettings, Grant, MAX_TOKEN_BYTES, OpaqueToken, Tokens, token_digest,
};

/// How long an `mfa_token` may be used (ms).
const CHALLENGE_TTL_MS: i64 = 300_000;

/// What `amr` says of a login with the password alone, and with a second factor.
const PASSWORD: &[&str] = &["pwd"];
const PASSWORD_AND_MFA: &[&str] = &["pwd", "mfa"];

/// A login attempt as the front end received it.
pub struct LoginRequest {
    /// Username or email, as typed.
    pub login: String,
    pub password: SecretString,
    pub ip: IpAddr,
    pub user_agent: Option<String>,
}

/// The second step of a login, as the front end received it.
pub struct SecondStep {
    pub mfa_token: SecretString,
    pub code: String,
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
    pub factors: SecondFactors,
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
        let mut attempt = match self.attempt(key, &req.login, req.ip).await {
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
            tracing::warn!(target: SECURITY_TARGET, event = "login.failure",
                login = %loggable(&req.login), ip = %req.ip,
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
        if user.mfa_enabled {
            // The password is right but proves nothing alone: the attempt is
            // given back (not forgiven), and the second step is counted.
            let now = self.clock.now_ms();
            let token = OpaqueToken::generate()?;
            let challenge = Challenge {
                digest: token.digest,
                user_id: user.id.clone(),
                password_digest: token_digest(&verified_hash),
                auth_time: now,
                expires_at: now.saturating_add(CHALLENGE_TTL_MS),
            };
            call.track(self.db.repo.open_challenge(challenge).await)?;
            call.finish().await;
            tracing::info!(user_id = %user.id, ip = %req.ip,
                "password accepted; the second factor is needed");
            return Err(Error::SecondFactorRequired {
                mfa_token: token.token,
            });
        }

        // Tokens are made before the session is written: if that write fails
        // they are simply never handed out, and nothing is left half done.
        let now = self.clock.now_ms();
        let (issued, session) = self
            .open(&user, now, PASSWORD, &req.ip, req.user_agent.clone())
            .await?;
        let rehash = if verdict.needs_rehash {
            Some(self.passwords.hash(req.password.clone()).await?)
        } else {
            None
        };
        let events = opened_events(&session, Some(&req.login));
        let created = call.track(
            self.db
                .repo
                .create_session(session, verified_hash, rehash, events.to_vec())
                .await,
        )?;
        call.finish().await;
        attempt.settle();
        if created.is_none() {
            // The password was changed, or the account deactivated, while we checked.
            return Err(self.refuse(&req, "credentials_changed").await);
        }
        attempt.forgive();
        self.metrics.login(true);
        log_opened(&events);
        Ok(Issued {
            access_token: issued.access.token,
            expires_in: issued.access.expires_in,
            refresh_token: issued.refresh.token,
        })
    }

    /// The tokens and the session row of a login by `user` at `now` whose
    /// password was checked at `auth_time`, authenticated by `amr`.
    async fn open(
        &self,
        user: &crate::model::User,
        auth_time: i64,
        amr: &[&str],
        ip: &IpAddr,
        user_agent: Option<String>,
    ) -> Result<(crate::token_issuer::Issued, NewSession)> {
        let now = self.clock.now_ms();
        let session_id = uuid::Uuid::now_v7().to_string();
        let amr: Vec<String> = amr.iter().map(|m| (*m).to_owned()).collect();
        let grant = Grant {
            user_id: user.id.clone(),
            session_id: session_id.clone(),
            auth_time: auth_time.div_euclid(1000),
            amr: amr.clone(),
            roles: user.roles.clone(),
        };
        let issued = self.tokens.issue(grant, now.div_euclid(1000)).await?;
        let absolute = now.saturating_add(secs_to_ms(self.settings.session_max_lifetime_s));
        let session = NewSession {
            id: session_id,
            user_id: user.id.clone(),
            refresh_digest: issued.refresh.digest.clone(),
            ip: Some(ip.to_string()),
            user_agent,
            now,
            expires_at: now
                .saturating_add(secs_to_ms(self.settings.refresh_token_ttl_s))
                .min(absolute),
            absolute_expires_at: absolute,
            auth_time,
            amr,
        };
        Ok((issued, session))
    }

    /// Completes a login with the second factor: a TOTP code or a recovery
    /// code against the `mfa_token` the password step handed out.
    pub async fn login_mfa(&self, step: SecondStep) -> Result<Issued> {
        let token = secrecy::ExposeSecret::expose_secret(&step.mfa_token);
        if token.is_empty() || token.len() > MAX_TOKEN_BYTES {
            return Err(Error::SecondFactorRefused);
        }
        let digest = token_digest(token);
        let now = self.clock.now_ms();
        let challenge = self
            .db
            .call(self.db.repo.challenge(digest.clone(), now))
            .await?
            .ok_or(Error::SecondFactorRefused)?;
        let user_id = challenge.user_id.clone();
        let mut attempt = self
            .attempt(ThrottleKey::account(&user_id), &user_id, step.ip)
            .await?;
        let factor = self
            .db
            .call(self.db.repo.second_factor(user_id.clone()))
            .await?
            .filter(|f| f.user.is_active && f.user.mfa_enabled)
            .ok_or(Error::SecondFactorRefused)?;
        let proof = self.factors.proof(&factor, &step.code, now)?;
        let (issued, session) = self
            .open(
                &factor.user,
                challenge.auth_time,
                PASSWORD_AND_MFA,
                &step.ip,
                step.user_agent,
            )
            .await?;
        let events = opened_events(&session, None);
        let outcome = self
            .db
            .call(
                self.db
                    .repo
                    .complete_challenge(digest, proof, session, events.to_vec()),
            )
            .await?;
        match outcome {
            ChallengeOutcome::Completed(_) => {
                attempt.settle();
                attempt.forgive();
                self.metrics.login(true);
                log_opened(&events);
                Ok(Issued {
                    access_token: issued.access.token,
                    expires_in: issued.access.expires_in,
                    refresh_token: issued.refresh.token,
                })
            }
            ChallengeOutcome::WrongCode { killed } => {
                attempt.settle();
                self.metrics.login(false);
                tracing::warn!(target: SECURITY_TARGET, event = "mfa.failure",
                    user_id = %user_id, ip = %step.ip,
                    challenge_killed = killed, "wrong second-factor code at login");
                Err(Error::SecondFactorRefused)
            }
            ChallengeOutcome::Unusable => Err(Error::SecondFactorRefused),
        }
    }

    /// Checks the password again (and the second factor, when on): the
    /// session's `auth_time` becomes now, opening the privileged window.
    pub async fn reauthenticate(
        &self,
        who: &Principal,
        password: SecretString,
        code: Option<String>,
        ip: IpAddr,
    ) -> Result<()> {
        let mut attempt = self
            .attempt(ThrottleKey::account(&who.user_id), &who.user_id, ip)
            .await?;
        let credentials = self
            .db
            .call(self.db.repo.credentials_by_id(who.user_id.clone()))
            .await?
            .filter(|c| c.user.is_active)
            .ok_or(Error::SessionRevoked)?;
        let proof = match (credentials.user.mfa_enabled, code.as_deref()) {
            (false, _) => None,
            (true, None) => {
                return Err(Error::validation(
                    "code",
                    "is required while the second factor is on",
                ));
            }
            (true, Some(code)) => {
                let factor = self
                    .db
                    .call(self.db.repo.second_factor(who.user_id.clone()))
                    .await?
                    .ok_or(Error::SessionRevoked)?;
                self.factors.proof(&factor, code, self.clock.now_ms())?
            }
        };
        let verdict = self
            .passwords
            .verify(password, Some(credentials.password_hash.clone()))
            .await?;
        if !verdict.matches {
            attempt.settle();
            tracing::warn!(target: SECURITY_TARGET, event = "login.failure",
                user_id = %who.user_id, ip = %ip,
                reason = "wrong_password", "re-authentication refused");
            return Err(Error::WrongCurrentPassword);
        }
        let now = self.clock.now_ms();
        let done = self
            .db
            .call(
                self.db
                    .repo
                    .reauthenticate(who.clone(), credentials.password_hash, proof, now),
            )
            .await;
        if let Err(Error::SecondFactorRefused) = &done {
            attempt.settle();
            tracing::warn!(target: SECURITY_TARGET, event = "mfa.failure",
                user_id = %who.user_id, ip = %ip,
                "wrong second-factor code at re-authentication");
        }
        done?;
        attempt.settle();
        attempt.forgive();
        tracing::info!(user_id = %who.user_id, session_id = %who.session_id,
            "session re-authenticated");
        Ok(())
    }

    /// Starts a throttled attempt against `key` (`login`, for the log: the
    /// name typed, or a user id); refuses it while that is locked.
    pub(super) async fn attempt(
        &self,
        key: ThrottleKey,
        login: &str,
        ip: IpAddr,
    ) -> Result<Attempt> {
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
                    tracing::warn!(target: SECURITY_TARGET, event = "account.throttled",
                        login = %loggable(login),
                        ip = %ip, retry_after_s, "login name locked after repeated failures");
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
            tracing::warn!(target: SECURITY_TARGET, event = "suspicious",
                ip = %req.ip, failures = burst.failures,
                distinct_logins = burst.distinct_logins, window_s = SUSPICION_WINDOW_MS / 1000,
                "burst of failed logins from one address");
        }
        tracing::warn!(target: SECURITY_TARGET, event = "login.failure",
            login = %loggable(&req.login), ip = %req.ip,
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
                tracing::info!(target: SECURITY_TARGET, event = "session.refreshed",
                    user_id = %user_id,
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
                tracing::warn!(target: SECURITY_TARGET, event = "refresh.reuse_detected",
                    user_id = %user_id,
                    session_id = %session_id, "a spent refresh token was presented");
                tracing::warn!(target: SECURITY_TARGET, event = "session.revoked",
                    user_id = %user_id,
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

/// The events a login that opens `session` stores with it: `login`, the
/// name typed (none for a second step: the first logged it).
fn opened_events(session: &NewSession, login: Option<&str>) -> [Event; 2] {
    let mut success = Event::new("login.success", session.now)
        .user(&session.user_id)
        .detail("amr", session.amr.join(","));
    if let Some(login) = login {
        success = success.detail("login", loggable(login));
    }
    let created = Event::new("session.created", session.now)
        .user(&session.user_id)
        .detail("session_id", session.id.as_str());
    [success, created]
}

fn log_opened([success, created]: &[Event; 2]) {
    success.log(Level::INFO, "login accepted");
    created.log(Level::INFO, "session opened");
}

/// A counted login attempt. One that ends without a verdict on the password
/// (the database failed, the client went away) is given back on drop, so
/// outages do not lock accounts.
pub(super) struct Attempt {
    limits: RateLimits,
    key: ThrottleKey,
    /// Redis counted it too.
    shared: bool,
    settled: bool,
}

impl Attempt {
    /// The password was judged: the attempt stays counted (or is forgiven by a success).
    pub(super) fn settle(&mut self) {
        self.settled = true;
    }

    /// The login succeeded: the account's failures are forgiven.
    pub(super) fn forgive(&self) {
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
