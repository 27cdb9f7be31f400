//! The supervisor restarts failed actors (errors and panics alike), callers
//! keep working through the restart, and a child that keeps failing is left
//! stopped and reported.

use std::sync::Arc;
use std::time::Duration;

use gatehouse_actors::breaker::BreakerSettings;
use gatehouse_actors::clock::SystemClock;
use gatehouse_actors::mailer::EmailSettings;
use gatehouse_actors::passwords::PasswordSettings;
use gatehouse_actors::rate_limiter::RateLimitSettings;
use gatehouse_actors::services::accounts::Registration;
use gatehouse_actors::services::auth::LoginRequest;
use gatehouse_actors::services::operations::HealthStatus;
use gatehouse_actors::supervisor::{
    ActorBoard, ActorStatus, ChildSpec, RestartPolicy, Supervisor, SupervisorArgs,
};
use gatehouse_actors::system::{ActorKind, Names};
use gatehouse_actors::token_issuer::AuthSettings;
use gatehouse_actors::user_repo::DatabaseSettings;
use gatehouse_actors::{Gatehouse, Settings};
use ractor::{Actor, ActorProcessingErr, ActorRef};

/// Polls `check` every 10 ms until it holds or `limit` passes.
async fn wait_for(limit: Duration, mut check: impl FnMut() -> bool) -> bool {
    let polled = async {
        while !check() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(limit, polled).await.is_ok()
}

fn settings(dir: &tempfile::TempDir, max_restarts: usize) -> Settings {
    Settings {
        auth: AuthSettings::default(),
        jwt_secret: None,
        key_encryption_secret: "supervision-test-key-encryption-secret-0123"
            .to_owned()
            .into(),
        password: PasswordSettings {
            scrypt_log_n: 10,
            ..PasswordSettings::default()
        },
        database: DatabaseSettings {
            path: dir.path().join("g.db"),
            ..DatabaseSettings::default()
        },
        rate_limit: RateLimitSettings::default(),
        database_breaker: BreakerSettings::default(),
        redis_breaker: BreakerSettings::default(),
        email: EmailSettings {
            file_dir: dir.path().join("mail"),
            link_base: "http://127.0.0.1:8080".into(),
            ..EmailSettings::default()
        },
        smtp_password: None,
        smtp_breaker: BreakerSettings::default(),
        restart: RestartPolicy {
            max_restarts,
            window: Duration::from_secs(60),
        },
        clock: SystemClock::shared(),
    }
}

fn report(g: &Gatehouse, kind: ActorKind) -> (ActorStatus, u64) {
    let (_, r) = g
        .operations
        .actors()
        .into_iter()
        .find(|(k, _)| *k == kind)
        .unwrap();
    (r.status, r.restarts)
}

#[tokio::test]
async fn every_actor_is_restarted_and_the_service_keeps_working() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gatehouse::start(settings(&dir, 5)).await.unwrap();
    assert_eq!(g.operations.health(), HealthStatus::Healthy);
    for kind in ActorKind::ALL {
        g.operations.kill(kind).await.unwrap();
        let restarted = wait_for(Duration::from_secs(2), || {
            report(&g, kind) == (ActorStatus::Running, 1)
        })
        .await;
        assert!(restarted, "{kind:?}: {:?}", report(&g, kind));
    }
    assert_eq!(g.operations.health(), HealthStatus::Healthy);
    let failed = g
        .operations
        .actors()
        .into_iter()
        .all(|(_, r)| r.last_failure.is_some());
    assert!(failed, "each failure is recorded");

    // The whole flow works through the new incarnations.
    g.accounts
        .register(Registration {
            email: "after@example.com".into(),
            username: "after".into(),
            password: "correct horse battery staple".to_owned().into(),
        })
        .await
        .unwrap();
    g.auth
        .login(LoginRequest {
            login: "after".into(),
            password: "correct horse battery staple".to_owned().into(),
            ip: "127.0.0.1".parse().unwrap(),
            user_agent: None,
        })
        .await
        .unwrap();
    g.shutdown().await;
}

#[tokio::test]
async fn a_child_that_keeps_failing_is_left_stopped_and_health_is_unhealthy() {
    let dir = tempfile::tempdir().unwrap();
    let g = Gatehouse::start(settings(&dir, 2)).await.unwrap();
    for round in 1..=2 {
        g.operations.kill(ActorKind::TokenIssuer).await.unwrap();
        let back = wait_for(Duration::from_secs(2), || {
            report(&g, ActorKind::TokenIssuer) == (ActorStatus::Running, round)
        })
        .await;
        assert!(back, "restart {round}");
    }
    g.operations.kill(ActorKind::TokenIssuer).await.unwrap();
    let stopped = wait_for(Duration::from_secs(2), || {
        report(&g, ActorKind::TokenIssuer).0 == ActorStatus::Stopped
    })
    .await;
    assert!(stopped, "{:?}", report(&g, ActorKind::TokenIssuer));
    assert_eq!(g.operations.health(), HealthStatus::Unhealthy);
    // A stopped actor is an error for its callers, not a hang.
    assert!(g.operations.kill(ActorKind::TokenIssuer).await.is_err());
    g.shutdown().await;
}

/// An actor that panics on any message.
struct Fragile;

impl Actor for Fragile {
    type Msg = ();
    type State = ();
    type Arguments = ();

    async fn pre_start(&self, _: ActorRef<()>, _: ()) -> Result<(), ActorProcessingErr> {
        Ok(())
    }

    async fn handle(&self, _: ActorRef<()>, _: (), _: &mut ()) -> Result<(), ActorProcessingErr> {
        panic!("fragile actor panicked on purpose");
    }
}

#[tokio::test]
async fn a_panic_is_a_failure_like_any_other() {
    let names = Arc::new(Names::unique());
    let name = names.get(ActorKind::Metrics).to_owned();
    let board = Arc::new(ActorBoard::default());
    let spawn_name = name.clone();
    let child = ChildSpec {
        kind: ActorKind::Metrics,
        spawn: Arc::new(move |supervisor| {
            let name = spawn_name.clone();
            Box::pin(async move {
                let (actor, _) = Fragile::spawn_linked(Some(name), Fragile, (), supervisor).await?;
                Ok(actor.get_cell())
            })
        }),
    };
    let (supervisor, done) = Actor::spawn(
        None,
        Supervisor,
        SupervisorArgs {
            children: vec![child],
            names: Arc::clone(&names),
            board: Arc::clone(&board),
            policy: RestartPolicy {
                max_restarts: 3,
                window: Duration::from_secs(60),
            },
            clock: SystemClock::shared(),
        },
    )
    .await
    .unwrap();
    let restarts = || board.all().first().map(|(_, r)| r.restarts).unwrap_or(0);
    for expected in 1..=2 {
        let current: ActorRef<()> = ActorRef::where_is(&name).unwrap();
        current.send_message(()).unwrap();
        assert!(wait_for(Duration::from_secs(2), || restarts() == expected).await);
    }
    supervisor.stop(None);
    done.await.unwrap();
}
