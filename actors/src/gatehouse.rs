//! [`Gatehouse`]: the running system and the operations the front end asks of it.
//!
//! `start` opens the store, builds the shared state that outlives actor
//! restarts (session cache, breaker and actor boards, tallies) and starts
//! the supervision tree. Each public method is one use case (register, log
//! in, authenticate a bearer token, …): it validates, talks to the actors
//! and passes its repository work through the database breaker as one call.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use ractor::{Actor, ActorRef};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;
use tokio::task::JoinHandle;

use crate::breaker::{
    Breaker, BreakerArgs, BreakerBoard, BreakerId, BreakerMsg, BreakerSettings, BreakerSnapshot,
    BreakerState, Breakers,
};
use crate::clock;
use crate::error::{Error, FieldError, RateLimitInfo, Result};
use crate::metrics::{Metrics, MetricsArgs, MetricsHandle, MetricsMsg, Summary};
pub use crate::model::Principal;
use crate::model::{
    Invalidation, NewSession, NewUser, ProfileChange, Revoke, Rotation, Session, User,
};
use crate::names::{MAX_LOGIN_CHARS, loggable, normalize_email, normalize_login, username_problem};
use crate::passwords::{PasswordSettings, Passwords};
use crate::rate_limiter::redis::RedisLimiter;
use crate::rate_limiter::{
    AttemptDecision, Backend, Limits, MemoryLimiter, OnBackendFailure, RateLimitSettings,
    RateLimiter, RateLimiterArgs, RateLimiterMsg, RouteClass, SUSPICION_WINDOW_MS, SharedLimiter,
    ThrottleKey, ThrottleRule, Unshared,
};
use crate::supervisor::{
    ActorBoard, ActorReport, ChildSpec, RestartPolicy, Supervisor, SupervisorArgs, SupervisorMsg,
};
use crate::system::{self, ActorKind, Names};
use crate::token_issuer::{
    AccessToken, AuthSettings, MAX_TOKEN_BYTES, RefreshToken, TokenIssuer, TokenIssuerMsg,
    TokenKeys, refresh_digest,
};
use crate::user_repo::pg::PgStore;
use crate::user_repo::sqlite::SqliteStore;
use crate::user_repo::{
    DatabaseSettings, SessionCache, UserRepo, UserRepoArgs, UserRepoClient, UserRepoMsg, UserStore,
};

/// How long after start-up the store may take to answer its first poll
/// before health says so.
const STORE_GRACE: Duration = Duration::from_secs(2);

/// Everything the actor system needs from the configuration.
pub struct Settings {
    pub auth: AuthSettings,
    /// The HS256 key, resolved from `jwt_secret` or `jwt_secret_file`.
    pub jwt_secret: SecretString,
    pub password: PasswordSettings,
    pub database: DatabaseSettings,
    pub rate_limit: RateLimitSettings,
    pub database_breaker: BreakerSettings,
    /// Guards the Redis rate-limit backend, when that is configured.
    pub redis_breaker: BreakerSettings,
    pub restart: RestartPolicy,
}

/// What a successful login or refresh hands the client.
pub struct Tokens {
    pub access_token: SecretString,
    pub expires_in: u64,
    pub refresh_token: SecretString,
}

/// A login attempt as the front end received it.
pub struct LoginRequest {
    /// Username or email, as typed.
    pub login: String,
    pub password: SecretString,
    pub ip: IpAddr,
    pub user_agent: Option<String>,
}

/// A registration as the front end received it.
pub struct Registration {
    pub email: String,
    pub username: String,
    pub password: SecretString,
}

/// A session as its owner sees it in the list.
#[derive(Debug, Clone, Serialize)]
pub struct SessionInfo {
    #[serde(flatten)]
    pub session: Session,
    /// The session making this request.
    pub current: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HealthStatus {
    Healthy,
    Degraded,
    Unhealthy,
}

/// The running system. Cheap to clone; every clone talks to the same actors.
#[derive(Clone)]
pub struct Gatehouse {
    inner: Arc<Inner>,
}

struct Inner {
    names: Arc<Names>,
    actors: Arc<ActorBoard>,
    breakers: Breakers,
    repo: UserRepoClient,
    cache: Arc<SessionCache>,
    store: Arc<dyn UserStore>,
    keys: Arc<TokenKeys>,
    passwords: Passwords,
    metrics: MetricsHandle,
    auth: AuthSettings,
    limits: Limits,
    on_limiter_failure: OnBackendFailure,
    /// When the last "rate limiting unavailable" warning was logged.
    limiter_failure_logged: AtomicI64,
    call_timeout: Duration,
    started: Instant,
    supervisor: ActorRef<SupervisorMsg>,
    supervisor_done: parking_lot::Mutex<Option<JoinHandle<()>>>,
}

/// A child whose arguments are cloned for every incarnation.
fn child<A>(kind: ActorKind, names: &Names, make: fn() -> A, args: A::Arguments) -> ChildSpec
where
    A: Actor,
    A::Arguments: Clone + Sync,
{
    let name = names.get(kind).to_owned();
    ChildSpec {
        kind,
        spawn: Arc::new(move |supervisor| {
            let (name, args) = (name.clone(), args.clone());
            Box::pin(async move {
                let (actor, _) = A::spawn_linked(Some(name), make(), args, supervisor).await?;
                Ok(actor.get_cell())
            })
        }),
    }
}

impl Gatehouse {
    /// Opens the store (PostgreSQL when `database.url` is set, else the
    /// SQLite file) and starts the supervision tree.
    pub async fn start(settings: Settings) -> Result<Self> {
        let db = settings.database.clone();
        let store: Arc<dyn UserStore> = if db.url.is_empty() {
            Arc::new(
                tokio::task::spawn_blocking(move || SqliteStore::open(&db))
                    .await
                    .map_err(|e| Error::Internal(format!("opening the store: {e}")))??,
            )
        } else {
            Arc::new(PgStore::connect(&db)?)
        };
        Self::start_with_store(settings, store).await
    }

    pub async fn start_with_store(settings: Settings, store: Arc<dyn UserStore>) -> Result<Self> {
        let names = Arc::new(Names::unique());
        let started = Instant::now();
        // The longest a store call may legitimately wait, plus slack for the queue.
        let db = &settings.database;
        let repo_timeout =
            Duration::from_millis(db.busy_timeout_ms.max(db.statement_timeout_ms) + 1_000);
        let call_timeout = Duration::from_secs(2);

        let cache = Arc::new(SessionCache::default());
        let keys = Arc::new(TokenKeys::new(&settings.jwt_secret, &settings.auth)?);
        let passwords = Passwords::new(settings.password.clone())?;
        let actors = Arc::new(ActorBoard::default());
        let breaker_board = Arc::new(BreakerBoard::default());
        let breakers = Breakers::new(Arc::clone(&names), Arc::clone(&breaker_board), call_timeout);
        let tally = Arc::default();

        let rate = &settings.rate_limit;
        let throttle = ThrottleRule {
            max_failures: settings.auth.max_failed_logins,
            lockout_ms: secs_to_ms(settings.auth.lockout_s),
        };
        let mut guarded = vec![(BreakerId::Database, settings.database_breaker)];
        let shared = match rate.backend {
            Backend::Memory => None,
            Backend::Redis => {
                guarded.push((BreakerId::Redis, settings.redis_breaker));
                let redis =
                    RedisLimiter::new(&rate.redis_url, &rate.redis_prefix, rate.routes, throttle)?;
                Some(SharedLimiter {
                    redis: Arc::new(redis),
                    breakers: breakers.clone(),
                })
            }
        };
        let limiter = RateLimiterArgs {
            local: Arc::new(parking_lot::Mutex::new(MemoryLimiter::new(
                rate.routes,
                throttle,
                rate.max_tracked_keys,
            ))),
            shared,
        };

        let children = vec![
            child(
                ActorKind::RateLimiter,
                &names,
                || RateLimiter,
                limiter.clone(),
            ),
            child(
                ActorKind::Breaker,
                &names,
                || Breaker,
                BreakerArgs {
                    breakers: guarded,
                    board: Arc::clone(&breaker_board),
                },
            ),
            child(
                ActorKind::UserRepo,
                &names,
                || UserRepo,
                UserRepoArgs {
                    store: Arc::clone(&store),
                    cache: Arc::clone(&cache),
                },
            ),
            child(
                ActorKind::TokenIssuer,
                &names,
                || TokenIssuer,
                Arc::clone(&keys),
            ),
            child(
                ActorKind::Metrics,
                &names,
                || Metrics,
                MetricsArgs { tally, started },
            ),
        ];
        let (supervisor, supervisor_done) = Actor::spawn(
            Some(names.supervisor().to_owned()),
            Supervisor,
            SupervisorArgs {
                children,
                names: Arc::clone(&names),
                board: Arc::clone(&actors),
                policy: settings.restart,
            },
        )
        .await
        .map_err(|e| Error::Internal(format!("starting the actors: {e}")))?;

        // Pay for the dummy hash now, not on the first unknown login name.
        let warm = passwords.clone();
        tokio::spawn(async move { warm.warm_up().await });

        Ok(Self {
            inner: Arc::new(Inner {
                breakers,
                repo: UserRepoClient::new(Arc::clone(&names), repo_timeout),
                metrics: MetricsHandle::new(Arc::clone(&names), call_timeout),
                limits: Limits::new(&limiter, Arc::clone(&names), call_timeout),
                names,
                actors,
                cache,
                store,
                keys,
                passwords,
                auth: settings.auth,
                on_limiter_failure: settings.rate_limit.on_backend_failure,
                limiter_failure_logged: AtomicI64::new(i64::MIN),
                call_timeout,
                started,
                supervisor,
                supervisor_done: parking_lot::Mutex::new(Some(supervisor_done)),
            }),
        })
    }

    /// Stops every actor (each finishes the message in hand) and flushes the store.
    pub async fn shutdown(&self) -> Result<()> {
        let inner = &self.inner;
        inner.supervisor.stop(None);
        let done = inner.supervisor_done.lock().take();
        if let Some(done) = done {
            let _ = done.await;
        }
        inner.store.close().await
    }

    pub fn metrics(&self) -> &MetricsHandle {
        &self.inner.metrics
    }

    /// Counts one request of `class` from `client`: the header values, or
    /// `None` when the limiter could not decide and policy let the request through.
    pub async fn check_rate(
        &self,
        class: RouteClass,
        client: IpAddr,
    ) -> Result<Option<RateLimitInfo>> {
        let decision = match self.inner.limits.check(class, client).await {
            Ok(decision) => decision,
            Err(unshared) => match self.limiter_unavailable(unshared)? {
                Some(local) => local,
                None => return Ok(None),
            },
        };
        if decision.allowed {
            return Ok(Some(decision.info));
        }
        if decision.first_refusal {
            tracing::warn!(event = "rate_limit.exceeded", ip = %client, class = class.name(),
                limit = decision.info.limit, "client exceeded its rate limit");
        }
        Err(Error::RateLimited(decision.info))
    }

    /// The shared limiter could not decide: `rate_limit.on_backend_failure`
    /// says what stands instead (this process's own decision, none, or a
    /// refusal). Logged loudly, but at most every ten seconds.
    fn limiter_unavailable<T>(&self, unshared: Unshared<T>) -> Result<Option<T>> {
        let inner = &self.inner;
        let policy = inner.on_limiter_failure;
        let now = clock::unix_ms();
        let last = inner.limiter_failure_logged.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= 10_000
            && inner
                .limiter_failure_logged
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let consequence = match policy {
                OnBackendFailure::Local => "limited by this instance alone",
                OnBackendFailure::Allow => "allowed without limits",
                OnBackendFailure::Deny => "refused",
            };
            tracing::error!(error = %unshared.error, ?policy,
                "rate limiting unavailable; requests are {consequence} until it recovers");
        }
        match policy {
            OnBackendFailure::Local => Ok(Some(unshared.local)),
            OnBackendFailure::Allow => Ok(None),
            OnBackendFailure::Deny => Err(unshared.error),
        }
    }

    /// Creates an account.
    pub async fn register(&self, r: Registration) -> Result<User> {
        let inner = &self.inner;
        let username = r.username.trim().to_owned();
        let mut problems = Vec::new();
        let email = normalize_email(&r.email).unwrap_or_else(|p| {
            problems.push(p);
            String::new()
        });
        if let Some(p) = username_problem(&username) {
            problems.push(p);
        }
        if let Some(p) = inner
            .passwords
            .check_policy(r.password.expose_secret(), &username, &email)
        {
            problems.push(p);
        }
        if !problems.is_empty() {
            return Err(Error::Validation(problems));
        }
        // Ask the breaker first: while it is open, refuse before paying for a hash.
        let mut call = inner.breakers.admit(BreakerId::Database).await?;
        let password_hash = inner.passwords.hash(r.password).await?;
        let new = NewUser {
            id: uuid::Uuid::now_v7().to_string(),
            email,
            username,
            password_hash,
            now: clock::unix_ms(),
        };
        let user = call.track(
            inner
                .repo
                .write(move |s| async move { s.create_user(new).await })
                .await,
        );
        call.finish();
        let user = user?;
        inner.metrics.registration();
        tracing::info!(event = "user.registered", user_id = %user.id, "account created");
        Ok(user)
    }

    /// Verifies a login and opens a session.
    pub async fn login(&self, req: LoginRequest) -> Result<Tokens> {
        let inner = &self.inner;
        if req.login.chars().count() > MAX_LOGIN_CHARS {
            // No account has such a name; refuse at the cost of one verify, like any unknown name.
            inner.passwords.verify(req.password.clone(), None).await?;
            return Err(self.refuse(&req, "unknown_user"));
        }
        let name = normalize_login(&req.login);
        let mut call = inner.breakers.admit(BreakerId::Database).await?;
        let lookup = name.clone();
        let found = call.track(
            inner
                .repo
                .read(move |s| async move { s.credentials(lookup).await })
                .await,
        )?;
        // The account's names share one count; an unknown name counts alone.
        let key = match &found {
            Some(c) => ThrottleKey::account(&c.user.id),
            None => ThrottleKey::name(&name),
        };
        let mut attempt = match self.attempt(&req, key).await {
            Ok(attempt) => attempt,
            Err(e) => {
                call.finish();
                return Err(e);
            }
        };
        let (stored, user) = match found {
            Some(c) => (Some(c.password_hash), Some(c.user)),
            None => (None, None),
        };
        let verdict = inner
            .passwords
            .verify(req.password.clone(), stored.clone())
            .await?;
        let (user, verified_hash) = match (user, stored) {
            (Some(user), Some(hash)) if verdict.matches && user.is_active => (user, hash),
            (user, _) => {
                call.finish();
                attempt.settle();
                let reason = match user {
                    None => "unknown_user",
                    Some(u) if !u.is_active => "inactive",
                    Some(_) => "wrong_password",
                };
                return Err(self.refuse(&req, reason));
            }
        };

        // Tokens are made before the session is written: if that write fails
        // they are simply never handed out, and nothing is left half done.
        let session_id = uuid::Uuid::now_v7().to_string();
        let refresh = self.mint_refresh().await?;
        let access = self.sign_access(&user.id, &session_id).await?;
        let rehash = if verdict.needs_rehash {
            Some(inner.passwords.hash(req.password.clone()).await?)
        } else {
            None
        };
        let now = clock::unix_ms();
        let auth = &inner.auth;
        let absolute = now.saturating_add(secs_to_ms(auth.session_max_lifetime_s));
        let session = NewSession {
            id: session_id,
            user_id: user.id.clone(),
            refresh_digest: refresh.digest.clone(),
            ip: Some(req.ip.to_string()),
            user_agent: req.user_agent.clone(),
            now,
            expires_at: now
                .saturating_add(secs_to_ms(auth.refresh_token_ttl_s))
                .min(absolute),
            absolute_expires_at: absolute,
        };
        let created = call.track(
            inner
                .repo
                .write(
                    move |s| async move { s.create_session(session, verified_hash, rehash).await },
                )
                .await,
        )?;
        call.finish();
        attempt.settle();
        let Some(session) = created else {
            // The password was changed, or the account deactivated, while we checked.
            return Err(self.refuse(&req, "credentials_changed"));
        };
        inner.limits.succeeded(&attempt.key);
        inner.metrics.login(true);
        tracing::info!(event = "login.success", login = %loggable(&req.login), ip = %req.ip,
            user_id = %user.id, "login accepted");
        tracing::info!(event = "session.created", user_id = %user.id, session_id = %session.id,
            "session opened");
        Ok(Tokens {
            access_token: access.token,
            expires_in: access.expires_in,
            refresh_token: refresh.token,
        })
    }

    /// Starts a throttled attempt against `key`; refuses it while that is locked.
    async fn attempt(&self, req: &LoginRequest, key: ThrottleKey) -> Result<Attempt> {
        let (decision, shared) = match self.inner.limits.attempt(&key).await {
            Ok(decision) => (decision, self.inner.limits.is_shared()),
            Err(unshared) => (
                self.limiter_unavailable(unshared)?
                    .unwrap_or(AttemptDecision::Allowed),
                false,
            ),
        };
        match decision {
            AttemptDecision::Allowed => Ok(Attempt {
                limits: self.inner.limits.clone(),
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
    fn refuse(&self, req: &LoginRequest, reason: &'static str) -> Error {
        let inner = &self.inner;
        inner.metrics.login(false);
        let login = normalize_login(&req.login);
        if let Some(burst) = inner.limits.login_failed(req.ip, &login) {
            tracing::warn!(event = "suspicious", ip = %req.ip, failures = burst.failures,
                distinct_logins = burst.distinct_logins, window_s = SUSPICION_WINDOW_MS / 1000,
                "burst of failed logins from one address");
        }
        tracing::warn!(event = "login.failure", login = %loggable(&req.login), ip = %req.ip,
            reason, "login refused");
        Error::InvalidCredentials
    }

    /// Exchanges a refresh token for a new pair; a spent one revokes its session.
    pub async fn refresh(&self, refresh_token: &str) -> Result<Tokens> {
        let inner = &self.inner;
        if refresh_token.is_empty() || refresh_token.len() > MAX_TOKEN_BYTES {
            return Err(Error::SessionRevoked);
        }
        let old = refresh_digest(refresh_token);
        // The new pair is made before the old token is spent, so a failure
        // between the two never leaves the client holding only a spent token.
        let lookup = old.clone();
        let owner = self
            .read(move |s| async move { s.refresh_owner(lookup).await })
            .await?;
        let fresh = self.mint_refresh().await?;
        let access = match &owner {
            Some((session_id, user_id)) => Some(self.sign_access(user_id, session_id).await?),
            None => None,
        };
        let now = clock::unix_ms();
        let expires_at = now.saturating_add(secs_to_ms(inner.auth.refresh_token_ttl_s));
        let new = fresh.digest.clone();
        let rotation = self
            .write(move |s| async move { s.rotate_refresh(old, new, now, expires_at).await })
            .await?;
        match (rotation, access) {
            (
                Rotation::Rotated {
                    session_id,
                    user_id,
                },
                Some(access),
            ) if owner.as_ref().is_some_and(|(sid, _)| *sid == session_id) => {
                tracing::info!(event = "session.refreshed", user_id = %user_id,
                    session_id = %session_id, "refresh token rotated");
                Ok(Tokens {
                    access_token: access.token,
                    expires_in: access.expires_in,
                    refresh_token: fresh.token,
                })
            }
            (
                Rotation::Reused {
                    session_id,
                    user_id,
                    changes,
                },
                _,
            ) => {
                self.forget(&changes);
                tracing::warn!(event = "refresh.reuse_detected", user_id = %user_id,
                    session_id = %session_id, "a spent refresh token was presented");
                tracing::warn!(event = "session.revoked", user_id = %user_id,
                    session_id = %session_id, reason = "refresh_reuse", "session revoked");
                Err(Error::SessionRevoked)
            }
            // Unknown, expired or revoked; or it changed hands between our two
            // looks (then the other exchange won, and this one must not).
            _ => Err(Error::SessionRevoked),
        }
    }

    /// Revokes sessions of the caller; `Ok(false)` when none matched.
    async fn revoke(&self, who: &Principal, scope: Revoke, reason: &'static str) -> Result<bool> {
        let (by, now, target) = (who.clone(), clock::unix_ms(), scope.clone());
        let changes = self
            .write(move |s| async move { s.revoke(by, target, now).await })
            .await?;
        self.forget(&changes);
        if !changes.is_empty() {
            let session = match &scope {
                Revoke::Session(id) => id.as_str(),
                Revoke::All | Revoke::AllBut(_) => "*",
            };
            tracing::info!(event = "session.revoked", user_id = %who.user_id,
                session_id = session, reason, "session revoked");
        }
        Ok(!changes.is_empty())
    }

    /// Ends the calling session.
    pub async fn logout(&self, who: &Principal) -> Result<()> {
        self.revoke(who, Revoke::Session(who.session_id.clone()), "logout")
            .await
            .map(drop)
    }

    /// Ends every session of the caller.
    pub async fn logout_all(&self, who: &Principal) -> Result<()> {
        self.revoke(who, Revoke::All, "logout_all").await.map(drop)
    }

    /// Ends one of the caller's sessions; `NotFound` for anyone else's.
    pub async fn revoke_session(&self, who: &Principal, session_id: &str) -> Result<()> {
        let scope = Revoke::Session(session_id.to_owned());
        match self.revoke(who, scope, "deleted").await? {
            true => Ok(()),
            false => Err(Error::NotFound),
        }
    }

    /// The caller's active sessions, the calling one marked `current`.
    pub async fn sessions(&self, who: &Principal) -> Result<Vec<SessionInfo>> {
        let user_id = who.user_id.clone();
        let now = clock::unix_ms();
        let sessions = self
            .read(move |s| async move { s.sessions(user_id, now).await })
            .await?;
        Ok(sessions
            .into_iter()
            .map(|session| SessionInfo {
                current: session.id == who.session_id,
                session,
            })
            .collect())
    }

    /// Changes the caller's email and/or username under the registration rules.
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
        let change = ProfileChange {
            email,
            username: change.username.map(|u| u.trim().to_owned()),
        };
        problems.extend(change.username.as_deref().and_then(username_problem));
        if !problems.is_empty() {
            return Err(Error::Validation(problems));
        }
        let (by, now) = (who.clone(), clock::unix_ms());
        let (user, changes) = self
            .write(move |s| async move { s.update_profile(by, change, now).await })
            .await?;
        self.forget(&changes);
        tracing::info!(event = "profile.changed", user_id = %who.user_id, "profile updated");
        Ok(user)
    }

    /// Changes the caller's password; every other session is revoked.
    pub async fn change_password(
        &self,
        who: &Principal,
        current: SecretString,
        new: SecretString,
    ) -> Result<()> {
        let inner = &self.inner;
        let mut call = inner.breakers.admit(BreakerId::Database).await?;
        let user_id = who.user_id.clone();
        let credentials = call
            .track(
                inner
                    .repo
                    .read(move |s| async move { s.credentials_by_id(user_id).await })
                    .await,
            )?
            .filter(|c| c.user.is_active)
            .ok_or(Error::SessionRevoked)?;
        let user = &credentials.user;
        let verdict = inner
            .passwords
            .verify(current.clone(), Some(credentials.password_hash.clone()))
            .await?;
        if !verdict.matches {
            call.finish();
            tracing::warn!(event = "password.change_refused", user_id = %user.id,
                "current password did not match");
            return Err(Error::WrongCurrentPassword);
        }
        let new_password = new.expose_secret();
        if let Some(problem) =
            inner
                .passwords
                .check_policy(new_password, &user.username, &user.email)
        {
            call.finish();
            return Err(Error::Validation(vec![FieldError {
                field: "new_password",
                ..problem
            }]));
        }
        if new_password == current.expose_secret() {
            call.finish();
            return Err(Error::validation(
                "new_password",
                "must differ from the current password",
            ));
        }
        let hash = inner.passwords.hash(new).await?;
        let (by, verified, now) = (who.clone(), credentials.password_hash, clock::unix_ms());
        let changes = call.track(
            inner
                .repo
                .write(move |s| async move { s.set_password(by, verified, hash, now).await })
                .await,
        )?;
        call.finish();
        self.forget(&changes);
        tracing::info!(event = "password.changed", user_id = %user.id,
            sessions_revoked = changes.len(), "password changed");
        if !changes.is_empty() {
            tracing::info!(event = "session.revoked", user_id = %user.id, session_id = "*",
                reason = "password_change", count = changes.len(), "other sessions revoked");
        }
        Ok(())
    }

    /// Deactivates the caller's account and revokes all its sessions.
    pub async fn deactivate(&self, who: &Principal) -> Result<()> {
        let (by, now) = (who.clone(), clock::unix_ms());
        let changes = self
            .write(move |s| async move { s.deactivate(by, now).await })
            .await?;
        self.forget(&changes);
        tracing::warn!(event = "account.deactivated", user_id = %who.user_id, "account deactivated");
        tracing::info!(event = "session.revoked", user_id = %who.user_id, session_id = "*",
            reason = "deactivation", "all sessions revoked");
        Ok(())
    }

    /// One repository write, as one call through the database breaker.
    async fn write<T, F, Fut>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn UserStore>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let inner = &self.inner;
        inner
            .breakers
            .run(BreakerId::Database, inner.repo.write(op))
            .await
    }

    /// One repository read, as one call through the database breaker.
    async fn read<T, F, Fut>(&self, op: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Arc<dyn UserStore>) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send + 'static,
    {
        let inner = &self.inner;
        inner
            .breakers
            .run(BreakerId::Database, inner.repo.read(op))
            .await
    }

    /// Drops what this process's own changes made stale, without waiting for the poll.
    fn forget(&self, changes: &[Invalidation]) {
        for change in changes {
            self.inner.cache.invalidate(change);
        }
    }

    async fn mint_refresh(&self) -> Result<RefreshToken> {
        let name = self.inner.names.get(ActorKind::TokenIssuer);
        system::call(name, self.inner.call_timeout, |reply| {
            TokenIssuerMsg::MintRefresh { reply }
        })
        .await?
    }

    async fn sign_access(&self, user_id: &str, session_id: &str) -> Result<AccessToken> {
        let name = self.inner.names.get(ActorKind::TokenIssuer);
        let (user_id, session_id) = (user_id.to_owned(), session_id.to_owned());
        system::call(name, self.inner.call_timeout, |reply| {
            TokenIssuerMsg::SignAccess {
                user_id,
                session_id,
                reply,
            }
        })
        .await?
    }

    /// Checks a bearer token and that its session is still active.
    pub async fn authenticate(&self, token: &str) -> Result<Principal> {
        let inner = &self.inner;
        let now = clock::unix_ms();
        let claims = inner.keys.verify(token, now.div_euclid(1000))?;
        let session = match inner.cache.session(&claims.sid, now) {
            Some(session) => session,
            None => {
                let epoch = inner.cache.epoch();
                let sid = claims.sid.clone();
                let found = self
                    .read(move |s| async move { s.active_session(sid, now).await })
                    .await?
                    .ok_or(Error::SessionRevoked)?;
                inner.cache.put_session(found.clone(), epoch, now);
                found
            }
        };
        if session.user_id != claims.sub {
            return Err(Error::InvalidToken);
        }
        if inner.cache.touch_due(&claims.sid, now) {
            let sid = claims.sid.clone();
            let repo = inner.repo.clone();
            // Bookkeeping only: the request does not wait for it, and a failure is no error.
            tokio::spawn(async move {
                let touched = repo
                    .write(move |s| async move { s.touch_session(sid, now).await })
                    .await;
                if let Err(e) = touched {
                    tracing::debug!(error = %e, "could not record session use");
                }
            });
        }
        Ok(Principal {
            user_id: claims.sub,
            session_id: claims.sid,
        })
    }

    /// The caller's own account.
    pub async fn me(&self, who: &Principal) -> Result<User> {
        let inner = &self.inner;
        let now = clock::unix_ms();
        if let Some(user) = inner.cache.user(&who.user_id, now) {
            return Ok(user);
        }
        let epoch = inner.cache.epoch();
        let id = who.user_id.clone();
        let user = self
            .read(move |s| async move { s.user(id).await })
            .await?
            .filter(|u| u.is_active)
            .ok_or(Error::SessionRevoked)?;
        inner.cache.put_user(user.clone(), epoch, now);
        Ok(user)
    }

    /// Every breaker's state.
    pub fn breakers(&self) -> Vec<(BreakerId, BreakerSnapshot)> {
        self.inner.breakers.board().all()
    }

    /// Every actor's status.
    pub fn actors(&self) -> Vec<(ActorKind, ActorReport)> {
        self.inner.actors.all()
    }

    /// Unhealthy while an actor is down; degraded while a breaker is not
    /// closed, or while the store has not answered the invalidation poll for
    /// a while (which no breaker sees when no request needs the store).
    pub fn health(&self) -> HealthStatus {
        let inner = &self.inner;
        let store_silent =
            inner.started.elapsed() > STORE_GRACE && !inner.cache.trusted(clock::unix_ms());
        if !inner.actors.all_running() {
            HealthStatus::Unhealthy
        } else if store_silent
            || self
                .breakers()
                .iter()
                .any(|(_, b)| b.state != BreakerState::Closed)
        {
            HealthStatus::Degraded
        } else {
            HealthStatus::Healthy
        }
    }

    pub fn uptime(&self) -> Duration {
        self.inner.started.elapsed()
    }

    pub async fn metrics_summary(&self) -> Result<Summary> {
        self.inner.metrics.summary().await
    }

    /// Makes one actor fail for real, so that its supervisor restarts it.
    pub fn kill(&self, kind: ActorKind) -> Result<()> {
        let name = self.inner.names.get(kind);
        match kind {
            ActorKind::RateLimiter => system::send(name, RateLimiterMsg::Crash),
            ActorKind::Breaker => system::send(name, BreakerMsg::Crash),
            ActorKind::UserRepo => system::send(name, UserRepoMsg::Crash),
            ActorKind::TokenIssuer => system::send(name, TokenIssuerMsg::Crash),
            ActorKind::Metrics => system::send(name, MetricsMsg::Crash),
        }
    }
}

/// A counted login attempt. One that ends without a verdict on the password
/// (the database failed, the client went away) is given back on drop, so
/// outages do not lock accounts.
struct Attempt {
    limits: Limits,
    key: ThrottleKey,
    /// Redis counted it too.
    shared: bool,
    settled: bool,
}

impl Attempt {
    /// The password was judged: the attempt stays counted (or is cleared by a success).
    fn settle(&mut self) {
        self.settled = true;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.settled {
            self.limits.release(&self.key, self.shared);
        }
    }
}

fn secs_to_ms(s: u64) -> i64 {
    i64::try_from(s.saturating_mul(1000)).unwrap_or(i64::MAX)
}
