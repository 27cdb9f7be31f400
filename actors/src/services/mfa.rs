//! The second factor: enrolling a TOTP key, confirming it, turning it off
//! and replacing the recovery codes. Every change but the confirmation is
//! privileged (a password check within `auth.reauth_window_s`, checked in
//! the write); every wrong code counts as a failed login for the account.
//! The login's second step and re-authentication are in [`super::auth`].

use std::net::IpAddr;
use std::sync::Arc;

use secrecy::SecretString;
use tracing::Level;

use super::Database;
use super::auth::Auth;
use super::email::Composer;
use crate::audit::{Event, SECURITY_TARGET};
use crate::clock::{SharedClock, secs_to_ms};
use crate::error::{Error, Result};
use crate::mailer::MailKind;
use crate::mfa::{TotpKey, recovery_codes, recovery_digest};
use crate::model::{Principal, Proof, SecondFactor, User};
use crate::rate_limiter::ThrottleKey;
use crate::sealing::Sealer;

/// Longest code looked at; anything longer is plainly wrong.
const MAX_CODE_CHARS: usize = 64;

/// TOTP keys as stored: sealed under the key-encryption secret, each with
/// its user's id, and labelled with the product's name in apps.
#[derive(Clone)]
pub struct SecondFactors {
    pub sealer: Arc<Sealer>,
    /// The issuer apps show beside the account.
    pub product: String,
}

impl SecondFactors {
    /// A fresh key for `user`, and its secret sealed for storage.
    fn generate(&self, user: &User) -> Result<(TotpKey, Vec<u8>)> {
        let secret = TotpKey::generate()?;
        let key = TotpKey::new(&secret, &self.product, &user.email)?;
        let sealed = self.sealer.seal(&user.id, &secret)?;
        Ok((key, sealed))
    }

    /// The key of a stored (sealed) secret.
    fn key(&self, user: &User, sealed: &[u8]) -> Result<TotpKey> {
        let secret = self.sealer.open(&user.id, sealed)?;
        TotpKey::new(&secret, &self.product, &user.email)
    }

    /// What `code` proves for `factor` at `now` (Unix ms): a TOTP step
    /// later than the last accepted one, or a recovery code to spend (the
    /// write tells whether it is one). `None`: plainly wrong.
    pub fn proof(&self, factor: &SecondFactor, code: &str, now: i64) -> Result<Option<Proof>> {
        let code = code.trim();
        if code.is_empty() || code.chars().count() > MAX_CODE_CHARS {
            return Ok(None);
        }
        // Six digits are an app's code; anything else may be a recovery code.
        if code.len() == 6 && code.bytes().all(|b| b.is_ascii_digit()) {
            let Some(sealed) = factor.secret.as_deref() else {
                return Ok(None);
            };
            let now_s = u64::try_from(now.div_euclid(1000)).unwrap_or(0);
            let last = factor.last_step.and_then(|s| u64::try_from(s).ok());
            let step = self.key(&factor.user, sealed)?.accept(code, now_s, last);
            return Ok(step
                .and_then(|s| i64::try_from(s).ok())
                .map(|step| Proof::Totp { step }));
        }
        Ok(Some(Proof::Recovery {
            digest: recovery_digest(code),
        }))
    }
}

/// What enrolment hands the user's app.
pub struct Enrolment {
    /// Base32, for typing in.
    pub secret: SecretString,
    /// `otpauth://totp/…`, for scanning.
    pub otpauth_uri: SecretString,
}

#[derive(Clone)]
pub struct Mfa {
    pub db: Database,
    /// The account throttle every wrong code counts toward.
    pub auth: Auth,
    pub factors: SecondFactors,
    pub mail: Composer,
    pub clock: SharedClock,
}

impl Mfa {
    /// The caller, for a privileged write at `now`.
    fn privileged(&self, who: &Principal, now: i64) -> Principal {
        who.privileged(now, secs_to_ms(self.auth.settings.reauth_window_s))
    }

    /// The caller's second factor as stored.
    async fn factor(&self, who: &Principal) -> Result<SecondFactor> {
        self.db
            .call(self.db.repo.second_factor(who.user_id.clone()))
            .await?
            .filter(|f| f.user.is_active)
            .ok_or(Error::SessionRevoked)
    }

    /// Starts TOTP enrolment (again, replacing a pending one): the key is
    /// not used until a code from it confirms it.
    pub async fn enrol(&self, who: &Principal) -> Result<Enrolment> {
        let factor = self.factor(who).await?;
        if factor.user.mfa_enabled {
            return Err(Error::MfaState { enabled: true });
        }
        let (key, sealed) = self.factors.generate(&factor.user)?;
        let now = self.clock.now_ms();
        self.db
            .call(
                self.db
                    .repo
                    .begin_totp(self.privileged(who, now), sealed, now),
            )
            .await?;
        tracing::info!(user_id = %who.user_id, "TOTP enrolment started");
        Ok(Enrolment {
            secret: key.base32().into(),
            otpauth_uri: key.uri()?.into(),
        })
    }

    /// Confirms the pending enrolment with a code from the app: the second
    /// factor is on, and the recovery codes (shown this once) are returned.
    pub async fn confirm(&self, who: &Principal, code: &str, ip: IpAddr) -> Result<Vec<String>> {
        let factor = self.factor(who).await?;
        if factor.user.mfa_enabled {
            return Err(Error::MfaState { enabled: true });
        }
        let Some(sealed) = factor.secret.clone() else {
            return Err(Error::MfaState { enabled: false });
        };
        let mut attempt = self.attempt(who, ip).await?;
        let now = self.clock.now_ms();
        let now_s = u64::try_from(now.div_euclid(1000)).unwrap_or(0);
        let step = self
            .factors
            .key(&factor.user, &sealed)?
            .accept(code, now_s, None)
            .and_then(|s| i64::try_from(s).ok());
        let Some(step) = step else {
            attempt.settle();
            return Err(self.wrong_code(who, ip));
        };
        let (codes, digests): (Vec<String>, Vec<String>) = recovery_codes()?.into_iter().unzip();
        let event = Event::new("mfa.enabled", now)
            .user(&who.user_id)
            .detail("method", "totp");
        let confirmed = self
            .db
            .call(self.db.repo.confirm_totp(
                who.clone(),
                sealed,
                step,
                digests,
                now,
                vec![event.clone()],
            ))
            .await;
        match confirmed {
            Ok(_) => {}
            Err(Error::SecondFactorRefused) => {
                // Another enrolment replaced this one meanwhile.
                attempt.settle();
                return Err(self.wrong_code(who, ip));
            }
            Err(e) => return Err(e),
        }
        event.log(Level::INFO, "second factor turned on");
        Ok(codes)
    }

    /// Turns the second factor off with a code (TOTP or recovery); the
    /// "second factor turned off" notice goes to the account's address.
    pub async fn disable(&self, who: &Principal, code: &str, ip: IpAddr) -> Result<()> {
        let (factor, mut attempt, now, proof) = self.prove(who, code, ip).await?;
        let notice = self
            .mail
            .notice(MailKind::MfaDisabled, &factor.user.username)?;
        let by = self.privileged(who, now);
        let event = Event::new("mfa.disabled", now)
            .user(&who.user_id)
            .detail("by", "user");
        let done = self
            .db
            .call(
                self.db
                    .repo
                    .disable_mfa(by, proof, notice, now, vec![event.clone()]),
            )
            .await;
        self.spent(done, &mut attempt, who, ip)?;
        self.mail.wake();
        event.log(Level::WARN, "second factor turned off");
        Ok(())
    }

    /// New recovery codes (shown this once); the old ones stop working.
    pub async fn regenerate(&self, who: &Principal, code: &str, ip: IpAddr) -> Result<Vec<String>> {
        let (_, mut attempt, now, proof) = self.prove(who, code, ip).await?;
        let (codes, digests): (Vec<String>, Vec<String>) = recovery_codes()?.into_iter().unzip();
        let by = self.privileged(who, now);
        let done = self
            .db
            .call(self.db.repo.replace_recovery_codes(by, proof, digests, now))
            .await;
        self.spent(done, &mut attempt, who, ip)?;
        tracing::info!(user_id = %who.user_id, "recovery codes replaced");
        Ok(codes)
    }

    /// For a change that needs the second factor on and a code: the
    /// factor, a counted attempt, the time, and what `code` proves.
    async fn prove(
        &self,
        who: &Principal,
        code: &str,
        ip: IpAddr,
    ) -> Result<(SecondFactor, super::auth::Attempt, i64, Option<Proof>)> {
        let factor = self.factor(who).await?;
        if !factor.user.mfa_enabled {
            return Err(Error::MfaState { enabled: false });
        }
        let attempt = self.attempt(who, ip).await?;
        let now = self.clock.now_ms();
        let proof = self.factors.proof(&factor, code, now)?;
        Ok((factor, attempt, now, proof))
    }

    /// A counted attempt against the caller's account throttle.
    async fn attempt(&self, who: &Principal, ip: IpAddr) -> Result<super::auth::Attempt> {
        self.auth
            .attempt(ThrottleKey::account(&who.user_id), &who.user_id, ip)
            .await
    }

    /// Settles a write that spent a code: a refused code counts.
    fn spent<T>(
        &self,
        done: Result<T>,
        attempt: &mut super::auth::Attempt,
        who: &Principal,
        ip: IpAddr,
    ) -> Result<T> {
        match done {
            Err(Error::SecondFactorRefused) => {
                attempt.settle();
                Err(self.wrong_code(who, ip))
            }
            other => other,
        }
    }

    /// Logs a wrong code and says so, as the routes of this service do.
    fn wrong_code(&self, who: &Principal, ip: IpAddr) -> Error {
        tracing::warn!(target: SECURITY_TARGET, event = "mfa.failure",
            user_id = %who.user_id, ip = %ip,
            "wrong second-factor code");
        Error::validation("code", "is not a valid code")
    }
}
