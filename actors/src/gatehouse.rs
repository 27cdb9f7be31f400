//! [`Gatehouse`]: the composition root. It starts the supervision tree and
//! builds every service from the actors' handles; nothing else is done here.

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use ractor::{Actor, ActorRef};
use secrecy::SecretString;
use tokio::task::JoinHandle;

use crate::breaker::{Breaker, BreakerArgs, BreakerBoard, BreakerId, BreakerSettings, Breakers};
use crate::clock::{SharedClock, Stopwatch, secs_to_ms};
use crate::error::{Error, Result};
use crate::mailer::{EmailSettings, Mailer, MailerArgs, TransportKind};
use crate::metrics::{Metrics, MetricsHandle};
use crate::passwords::{PasswordSettings, Passwords};
use crate::rate_limiter::{
    Backend, RateLimitSettings, RateLimiter, RateLimiterArgs, RateLimits, ThrottleRule,
};
use crate::sealing::Sealer;
use crate::services::accounts::Accounts;
use crate::services::admin::{Admin, KeyRing};
use crate::services::auth::Auth;
use crate::services::edge::Edge;
use crate::services::email::{Composer, MailPolicy};
use crate::services::mfa::{Mfa, SecondFactors};
use crate::services::operations::Operations;
use crate::services::recovery::Recovery;
use crate::services::sessions::Sessions;
use crate::services::{Database, LimiterPolicy};
use crate::supervisor::{
    ActorBoard, ChildSpec, RestartPolicy, Supervisor, SupervisorArgs, SupervisorMsg,
};
use crate::system::{ActorKind, Names};
use crate::token_issuer::{AuthSettings, KeySource, TokenIssuer, TokenIssuerArgs, Tokens};
use crate::user_repo::{DatabaseSettings, Repo, UserRepo, UserRepoArgs};

/// Everything the actor system needs from the configuration.
pub struct Settings {
    pub auth: AuthSettings,
    /// The HS256 key, resolved from `jwt_secret` or `jwt_secret_file`
    /// (needed with `signing_algorithm = "HS256"` only).
    pub jwt_secret: Option<SecretString>,
    /// Seals private signing keys (and TOTP secrets) at rest.
    pub key_encryption_secret: SecretString,
    pub password: PasswordSettings,
    pub database: DatabaseSettings,
    pub rate_limit: RateLimitSettings,
    pub database_breaker: BreakerSettings,
    /// Guards the Redis rate-limit backend, when that is configured.
    pub redis_breaker: BreakerSettings,
    /// How mail leaves; `link_base` already resolved (never empty).
    pub email: EmailSettings,
    /// The relay's password, read from `email.smtp.password` or `.password_file`.
    pub smtp_password: Option<SecretString>,
    /// Guards the SMTP relay, when `email.transport = "smtp"`.
    pub smtp_breaker: BreakerSettings,
    pub restart: RestartPolicy,
    /// What every rule reads the time from; tests pass a manual one.
    pub clock: SharedClock,
}

/// The running system: its services, and the supervisor behind them.
/// Cheap to clone; every clone talks to the same actors.
#[derive(Clone)]
pub struct Gatehouse {
    pub auth: Auth,
    pub accounts: Accounts,
    pub recovery: Recovery,
    pub mfa: Mfa,
    pub sessions: Sessions,
    pub admin: Admin,
    pub edge: Edge,
    pub operations: Operations,
    supervisor: ActorRef<SupervisorMsg>,
    supervisor_done: Arc<parking_lot::Mutex<Option<JoinHandle<()>>>>,
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
    /// Starts the supervision tree (each actor opens what it owns) and builds the services.
    pub async fn start(settings: Settings) -> Result<Self> {
        let names = Arc::new(Names::unique());
        let clock = settings.clock;
        let started = Stopwatch::start();
        // The longest a store call may legitimately wait, plus slack for the queue.
        let db = &settings.database;
        let repo_timeout =
            Duration::from_millis(db.busy_timeout_ms.max(db.statement_timeout_ms) + 1_000);
        let call_timeout = Duration::from_secs(2);

        let passwords = Passwords::new(settings.password.clone())?;
        let actors = Arc::new(ActorBoard::default());
        let breaker_board = Arc::new(BreakerBoard::default());
        let breakers = Breakers::new(Arc::clone(&names), Arc::clone(&breaker_board), call_timeout);
        let verifier = Arc::new(ArcSwapOption::empty());
        let cache = Arc::new(ArcSwapOption::empty());
        let repo = Repo::new(Arc::clone(&names), repo_timeout, cache.clone());
        let alg = settings.auth.signing_algorithm;
        let mut ring = None;
        let key_source = if alg.stored() {
            let sealer = Arc::new(Sealer::new(
                &settings.key_encryption_secret,
                "signing-keys",
            )?);
            ring = Some(KeyRing {
                alg,
                sealer: Arc::clone(&sealer),
                policy: settings.auth.ring_policy(),
            });
            KeySource::Ring {
                alg,
                sealer,
                repo: repo.clone(),
            }
        } else {
            let secret = settings.jwt_secret.ok_or_else(|| {
                Error::Internal("signing_algorithm HS256 needs auth.jwt_secret".into())
            })?;
            KeySource::Secret(secret)
        };

        let rate = settings.rate_limit;
        let throttle = ThrottleRule {
            max_failures: settings.auth.max_failed_logins,
            lockout_ms: secs_to_ms(settings.auth.lockout_s),
        };
        let mut guarded = vec![(BreakerId::Database, settings.database_breaker)];
        if rate.backend == Backend::Redis {
            guarded.push((BreakerId::Redis, settings.redis_breaker));
        }
        if settings.email.transport == TransportKind::Smtp {
            guarded.push((BreakerId::Smtp, settings.smtp_breaker));
        }
        let outbox = Arc::new(Sealer::new(&settings.key_encryption_secret, "outbox")?);
        let product = settings
            .email
            .from_mailbox()
            .ok()
            .and_then(|m| m.name)
            .unwrap_or_else(|| "Gatehouse".into());
        let factors = SecondFactors {
            sealer: Arc::new(Sealer::new(&settings.key_encryption_secret, "totp")?),
            product: product.clone(),
        };
        let composer = Composer {
            policy: Arc::new(MailPolicy {
                product,
                link_base: settings.email.link_base.trim_end_matches('/').to_owned(),
                verification: settings.auth.email_verification,
                verification_ttl_s: settings.auth.verification_ttl_s,
                reset_ttl_s: settings.auth.reset_ttl_s,
                per_recipient_per_hour: settings.email.per_recipient_per_hour,
            }),
            sealer: Arc::clone(&outbox),
            names: Arc::clone(&names),
        };
        let children = vec![
            child(
                ActorKind::Breaker,
                &names,
                || Breaker,
                BreakerArgs {
                    breakers: guarded,
                    board: Arc::clone(&breaker_board),
                    clock: Arc::clone(&clock),
                },
            ),
            child(
                ActorKind::RateLimiter,
                &names,
                || RateLimiter,
                RateLimiterArgs {
                    settings: rate.clone(),
                    throttle,
                    breakers: breakers.clone(),
                    clock: Arc::clone(&clock),
                },
            ),
            child(
                ActorKind::UserRepo,
                &names,
                || UserRepo,
                UserRepoArgs {
                    settings: settings.database.clone(),
                    clock: Arc::clone(&clock),
                    cache: Arc::clone(&cache),
                },
            ),
            child(
                ActorKind::TokenIssuer,
                &names,
                || TokenIssuer,
                TokenIssuerArgs {
                    source: key_source,
                    settings: settings.auth.clone(),
                    clock: Arc::clone(&clock),
                    published: Arc::clone(&verifier),
                },
            ),
            child(ActorKind::Metrics, &names, || Metrics, ()),
            child(
                ActorKind::Mailer,
                &names,
                || Mailer,
                MailerArgs {
                    settings: Arc::new(settings.email),
                    smtp_password: settings.smtp_password,
                    sealer: outbox,
                    repo: repo.clone(),
                    breakers: breakers.clone(),
                    clock: Arc::clone(&clock),
                    owner: uuid::Uuid::new_v4().to_string(),
                },
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
                clock: Arc::clone(&clock),
            },
        )
        .await
        .map_err(|e| Error::Internal(format!("starting the actors: {e}")))?;

        // Pay for the dummy hash now, not on the first unknown login name.
        let warm = passwords.clone();
        tokio::spawn(async move { warm.warm_up().await });

        let database = Database {
            repo: repo.clone(),
            breakers,
        };
        let limits = RateLimits::new(Arc::clone(&names), call_timeout, &rate);
        let policy = LimiterPolicy::new(rate.on_backend_failure, Arc::clone(&clock));
        let tokens = Tokens::new(Arc::clone(&names), call_timeout, verifier);
        let metrics = MetricsHandle::new(Arc::clone(&names), call_timeout);
        let reauth_window_s = settings.auth.reauth_window_s;
        let auth = Auth {
            db: database.clone(),
            limits: limits.clone(),
            policy: policy.clone(),
            passwords: passwords.clone(),
            tokens: tokens.clone(),
            metrics: metrics.clone(),
            mail: composer.clone(),
            factors: factors.clone(),
            clock: Arc::clone(&clock),
            settings: settings.auth,
        };
        let recovery = Recovery {
            db: database.clone(),
            passwords: passwords.clone(),
            mail: composer.clone(),
            clock: Arc::clone(&clock),
        };
        Ok(Self {
            mfa: Mfa {
                db: database.clone(),
                auth: auth.clone(),
                factors,
                mail: composer.clone(),
                clock: Arc::clone(&clock),
            },
            auth,
            accounts: Accounts {
                db: database.clone(),
                passwords,
                metrics: metrics.clone(),
                mail: composer.clone(),
                clock: Arc::clone(&clock),
                reauth_window_s,
            },
            recovery: recovery.clone(),
            admin: Admin {
                db: database.clone(),
                tokens: tokens.clone(),
                ring,
                limits: limits.clone(),
                recovery,
                clock: Arc::clone(&clock),
            },
            sessions: Sessions {
                db: database,
                tokens,
                clock: Arc::clone(&clock),
            },
            edge: Edge {
                limits,
                policy,
                clock: Arc::clone(&clock),
            },
            operations: Operations {
                names,
                actors,
                breakers: breaker_board,
                repo,
                metrics,
                clock,
                started,
            },
            supervisor,
            supervisor_done: Arc::new(parking_lot::Mutex::new(Some(supervisor_done))),
        })
    }

    /// Stops every actor (each finishes the message in hand; the repository
    /// flushes the store as it stops).
    pub async fn shutdown(&self) {
        self.supervisor.stop(None);
        let done = self.supervisor_done.lock().take();
        if let Some(done) = done {
            let _ = done.await;
        }
    }
}
