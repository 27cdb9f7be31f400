//! Password policy and scrypt hashing.
//!
//! Hashing is the slowest thing Gatehouse does (about half a second and
//! 128 MiB at the default parameters), so it never runs on an async worker or
//! inside an actor's mailbox loop: every hash and verify goes to a blocking
//! thread behind a semaphore of `password.max_concurrent_hashes`, which bounds
//! both the CPU and the memory in flight.
//!
//! A login must take as long for an unknown name as for a wrong password.
//! Unknown names are verified against a dummy hash made with the configured
//! parameters; a stored hash made with older, cheaper parameters would answer
//! sooner, so such a verification is padded (by waiting, not computing) to
//! what one with the configured parameters has been measured to take.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use scrypt::password_hash::phc::PasswordHash;
use scrypt::password_hash::{PasswordHasher, PasswordVerifier};
use scrypt::{Params, Scrypt};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tokio::sync::{OnceCell, Semaphore};

use crate::clock::Stopwatch;
use crate::error::{Error, FieldError, Result};

/// The `[password]` section of the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordSettings {
    /// scrypt cost: N = 2^log_n. OWASP recommends 17.
    pub scrypt_log_n: u8,
    /// scrypt block size.
    pub scrypt_r: u32,
    /// scrypt parallelism.
    pub scrypt_p: u32,
    /// Shortest password accepted, in characters.
    pub min_length: usize,
    /// Longest password accepted, in characters.
    pub max_length: usize,
    /// Hashes in flight at once; each holds 128·r·2^log_n bytes while it runs.
    pub max_concurrent_hashes: usize,
}

impl Default for PasswordSettings {
    fn default() -> Self {
        Self {
            scrypt_log_n: Params::RECOMMENDED_LOG_N,
            scrypt_r: Params::RECOMMENDED_R,
            scrypt_p: Params::RECOMMENDED_P,
            min_length: 8,
            max_length: 128,
            max_concurrent_hashes: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

impl PasswordSettings {
    /// The scrypt parameters these settings describe, or why they are unusable.
    pub fn params(&self) -> std::result::Result<Params, String> {
        Params::new(self.scrypt_log_n, self.scrypt_r, self.scrypt_p).map_err(|e| e.to_string())
    }
}

/// The well-known passwords nobody may choose: Django's list of 20,000 common
/// passwords, lower-cased, sorted and de-duplicated.
static COMMON_PASSWORDS: LazyLock<Vec<&'static str>> = LazyLock::new(|| {
    include_str!("../data/common-passwords.txt")
        .lines()
        .collect()
});

fn is_common(password: &str) -> bool {
    COMMON_PASSWORDS
        .binary_search(&password.to_lowercase().as_str())
        .is_ok()
}

/// Verifications with the configured parameters whose median is the padding target.
const RECENT_COSTS: usize = 16;

/// Outcome of checking a password against a stored hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verification {
    /// The password matched.
    pub matches: bool,
    /// The stored hash was made with other parameters than the configured ones.
    pub needs_rehash: bool,
}

/// Hashes and verifies passwords off the async runtime; checks the policy.
#[derive(Clone)]
pub struct Passwords {
    inner: Arc<Inner>,
}

struct Inner {
    settings: PasswordSettings,
    params: Params,
    slots: Arc<Semaphore>,
    /// A hash of a random password with the configured parameters, verified
    /// when the login name is unknown so that both paths cost one hash.
    dummy: OnceCell<String>,
    /// How long the last few verifications with the configured parameters
    /// took, in nanoseconds (0: no sample yet); their median is what one costs.
    recent_costs_ns: [AtomicU64; RECENT_COSTS],
    next_cost: AtomicUsize,
}

impl Passwords {
    pub fn new(settings: PasswordSettings) -> Result<Self> {
        let params = settings.params().map_err(Error::Internal)?;
        let slots = Arc::new(Semaphore::new(settings.max_concurrent_hashes.max(1)));
        Ok(Self {
            inner: Arc::new(Inner {
                settings,
                params,
                slots,
                dummy: OnceCell::new(),
                recent_costs_ns: std::array::from_fn(|_| AtomicU64::new(0)),
                next_cost: AtomicUsize::new(0),
            }),
        })
    }

    /// Every policy rule the password breaks, as one field error (the first rule broken).
    pub fn check_policy(&self, password: &str, username: &str, email: &str) -> Option<FieldError> {
        let settings = &self.inner.settings;
        let length = password.chars().count();
        let problem = if length < settings.min_length {
            format!("must be at least {} characters", settings.min_length)
        } else if length > settings.max_length {
            format!("must be at most {} characters", settings.max_length)
        } else if is_common(password) {
            "is too common; choose a less guessable password".to_owned()
        } else if password.eq_ignore_ascii_case(username) || password.eq_ignore_ascii_case(email) {
            "must not be the same as the username or email".to_owned()
        } else {
            return None;
        };
        Some(FieldError::new("password", problem))
    }

    /// A PHC string (`$scrypt$ln=..,r=..,p=..$salt$hash`) for the password.
    pub async fn hash(&self, password: SecretString) -> Result<String> {
        let params = self.inner.params;
        self.blocking(move || {
            Scrypt::new_with_params(params)
                .hash_password(password.expose_secret().as_bytes())
                .map(|hash| hash.to_string())
                .map_err(|e| Error::Internal(format!("scrypt hash: {e}")))
        })
        .await
    }

    /// Verifies the password against `stored`, or against the dummy hash when
    /// there is no stored hash, so an unknown user costs what a wrong password does.
    pub async fn verify(
        &self,
        password: SecretString,
        stored: Option<String>,
    ) -> Result<Verification> {
        let (stored, real) = match stored {
            Some(hash) => (hash, true),
            None => (self.dummy_hash().await?, false),
        };
        let configured = self.inner.params;
        let (verification, took) = self
            .blocking(move || {
                let watch = Stopwatch::start();
                let hash = PasswordHash::new(&stored)
                    .map_err(|e| Error::Internal(format!("stored hash unreadable: {e}")))?;
                let matches = Scrypt::default()
                    .verify_password(password.expose_secret().as_bytes(), &hash)
                    .is_ok();
                let needs_rehash = Params::try_from(&hash).map_or(true, |p| {
                    (p.log_n(), p.r(), p.p())
                        != (configured.log_n(), configured.r(), configured.p())
                });
                let verification = Verification {
                    matches: matches && real,
                    needs_rehash,
                };
                Ok((verification, watch.elapsed()))
            })
            .await?;
        if verification.needs_rehash {
            tokio::time::sleep(self.verify_cost().saturating_sub(took)).await;
        } else {
            self.measured(took);
        }
        Ok(verification)
    }

    /// What a verification with the configured parameters takes: the median
    /// of the recent ones, robust to a slow start-up or one unlucky sample.
    fn verify_cost(&self) -> Duration {
        let mut costs: Vec<u64> = self
            .inner
            .recent_costs_ns
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .filter(|&c| c > 0)
            .collect();
        costs.sort_unstable();
        Duration::from_nanos(costs.get(costs.len() / 2).copied().unwrap_or(0))
    }

    /// Records one verification with the configured parameters.
    fn measured(&self, took: Duration) {
        let sample = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX).max(1);
        let slot = self.inner.next_cost.fetch_add(1, Ordering::Relaxed) % RECENT_COSTS;
        self.inner.recent_costs_ns[slot].store(sample, Ordering::Relaxed);
    }

    /// Computes the dummy hash, and measures one verification, ahead of the
    /// first login that needs them.
    pub async fn warm_up(&self) {
        let warmed = async {
            let mut random = [0u8; 16];
            getrandom::fill(&mut random)
                .map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
            let guess: String = random.iter().map(|b| format!("{b:02x}")).collect();
            self.verify(SecretString::from(guess), None).await
        };
        if let Err(e) = warmed.await {
            tracing::warn!(error = %e, "could not precompute the dummy password hash");
        }
    }

    async fn dummy_hash(&self) -> Result<String> {
        self.inner
            .dummy
            .get_or_try_init(|| async {
                let mut random = [0u8; 24];
                getrandom::fill(&mut random)
                    .map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
                let password: String = random.iter().map(|b| format!("{b:02x}")).collect();
                self.hash(SecretString::from(password)).await
            })
            .await
            .cloned()
    }

    /// Runs `work` on a blocking thread once a hashing slot is free. The slot
    /// goes with the work, so a caller that gives up does not free it while
    /// the hash (and its memory) is still in use.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let slot = Arc::clone(&self.inner.slots)
            .acquire_owned()
            .await
            .map_err(|_| Error::Internal("hashing slots closed".into()))?;
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            work()
        })
        .await
        .map_err(|e| Error::Internal(format!("hashing task failed: {e}")))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> Passwords {
        Passwords::new(PasswordSettings {
            scrypt_log_n: 10,
            scrypt_r: 8,
            scrypt_p: 1,
            max_concurrent_hashes: 2,
            ..PasswordSettings::default()
        })
        .unwrap()
    }

    #[test]
    fn policy_rules() {
        let p = fast();
        let check = |pw: &str| p.check_policy(pw, "alice_01", "alice@example.com");
        assert!(check("correct horse battery").is_none());
        assert!(check("short1").unwrap().message.contains("at least 8"));
        assert!(
            check(&"x".repeat(129))
                .unwrap()
                .message
                .contains("at most 128")
        );
        for common in ["password123", "12345678", "qwerty123", "PASSWORD123"] {
            assert!(
                check(common).unwrap().message.contains("common"),
                "{common}"
            );
        }
        assert!(check("ALICE_01").unwrap().message.contains("same as"));
        assert!(
            check("Alice@Example.com")
                .unwrap()
                .message
                .contains("same as")
        );
        // Length counts characters, not bytes.
        assert!(check("ééééééé").unwrap().message.contains("at least 8"));
        assert!(check("éééééééé").is_none());
    }

    #[test]
    fn username_equal_password_is_refused() {
        let p = fast();
        let e = p.check_policy("longusername", "LongUserName", "x@example.com");
        assert!(e.unwrap().message.contains("same as"));
    }

    #[test]
    fn common_list_is_large_and_sorted() {
        assert!(COMMON_PASSWORDS.len() > 10_000);
        assert!(COMMON_PASSWORDS.windows(2).all(|w| w[0] < w[1]));
    }

    #[tokio::test]
    async fn hash_then_verify() {
        let p = fast();
        let hash = p.hash(SecretString::from("s3cret-enough")).await.unwrap();
        assert!(hash.starts_with("$scrypt$ln=10,r=8,p=1$"), "{hash}");
        let good = p
            .verify(SecretString::from("s3cret-enough"), Some(hash.clone()))
            .await
            .unwrap();
        assert_eq!(
            good,
            Verification {
                matches: true,
                needs_rehash: false
            }
        );
        let bad = p
            .verify(SecretString::from("wrong"), Some(hash))
            .await
            .unwrap();
        assert!(!bad.matches);
    }

    #[tokio::test]
    async fn unknown_user_never_matches_and_old_params_want_rehash() {
        let p = fast();
        let none = p
            .verify(SecretString::from("anything"), None)
            .await
            .unwrap();
        assert!(!none.matches);

        let old = Passwords::new(PasswordSettings {
            scrypt_log_n: 11,
            ..p.inner.settings.clone()
        })
        .unwrap();
        let hash = old.hash(SecretString::from("s3cret-enough")).await.unwrap();
        let v = p
            .verify(SecretString::from("s3cret-enough"), Some(hash))
            .await
            .unwrap();
        assert_eq!(
            v,
            Verification {
                matches: true,
                needs_rehash: true
            }
        );
    }
}
