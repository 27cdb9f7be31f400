//! The rules that depend on time, through the real services and a real
//! SQLite store, with a manual clock: the tests move time on instead of
//! sleeping. Rate windows slide, a lockout ends exactly when it should,
//! sessions slide on refresh up to their absolute end and no further, access
//! tokens expire, and a spent refresh token revokes its session.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use gatehouse_actors::breaker::BreakerSettings;
use gatehouse_actors::clock::ManualClock;
use gatehouse_actors::mailer::EmailSettings;
use gatehouse_actors::passwords::PasswordSettings;
use gatehouse_actors::rate_limiter::{RateLimitSettings, RouteClass, RouteLimit, RouteLimits};
use gatehouse_actors::services::accounts::Registration;
use gatehouse_actors::services::auth::{Issued, LoginRequest};
use gatehouse_actors::supervisor::RestartPolicy;
use gatehouse_actors::token_issuer::AuthSettings;
use gatehouse_actors::user_repo::DatabaseSettings;
use gatehouse_actors::{Error, Gatehouse, Settings};
use secrecy::{ExposeSecret, SecretString};

const START_MS: i64 = 1_800_000_000_000;
const PASSWORD: &str = "correct horse battery staple";
const IP: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 7));

struct System {
    g: Gatehouse,
    clock: Arc<ManualClock>,
    _dir: tempfile::TempDir,
}

async fn start(auth: AuthSettings, routes: RouteLimits) -> System {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::starting_at(START_MS);
    let g = Gatehouse::start(Settings {
        auth,
        jwt_secret: None,
        key_encryption_secret: SecretString::from("time-rules-test-key-encryption-secret-0123"),
        password: PasswordSettings {
            scrypt_log_n: 10,
            scrypt_r: 1,
            ..PasswordSettings::default()
        },
        database: DatabaseSettings {
            path: dir.path().join("g.db"),
            ..DatabaseSettings::default()
        },
        rate_limit: RateLimitSettings {
            routes,
            ..RateLimitSettings::default()
        },
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
            max_restarts: 5,
            window: Duration::from_secs(10),
        },
        clock: clock.clone(),
    })
    .await
    .unwrap();
    System {
        g,
        clock,
        _dir: dir,
    }
}

impl System {
    fn advance_s(&self, s: u64) {
        self.clock.advance(Duration::from_secs(s));
    }

    async fn register(&self, username: &str) {
        self.g
            .accounts
            .register(Registration {
                email: format!("{username}@example.com"),
                username: username.into(),
                password: SecretString::from(PASSWORD),
            })
            .await
            .unwrap();
    }

    async fn login(&self, username: &str, password: &str) -> Result<Issued, Error> {
        self.g
            .auth
            .login(LoginRequest {
                login: username.into(),
                password: SecretString::from(password.to_owned()),
                ip: IP,
                user_agent: None,
            })
            .await
    }
}

#[tokio::test]
async fn a_rate_window_slides_with_the_clock() {
    let limits = RouteLimits {
        login: RouteLimit {
            limit: Some(2),
            window_s: Some(60),
        },
        ..RouteLimits::default()
    };
    let s = start(AuthSettings::default(), limits).await;
    let check = || s.g.edge.check_rate(RouteClass::Login, IP);
    check().await.unwrap();
    s.advance_s(30);
    check().await.unwrap();
    let refused = check().await;
    assert!(matches!(refused, Err(Error::RateLimited(info)) if info.reset_s == 30));
    s.advance_s(29);
    assert!(
        check().await.is_err(),
        "the first hit is still inside the window"
    );
    s.advance_s(1);
    check().await.unwrap();
    assert!(check().await.is_err(), "the second hit is still inside it");
    // Other classes and other clients are untouched.
    s.g.edge.check_rate(RouteClass::Register, IP).await.unwrap();
    s.g.edge
        .check_rate(RouteClass::Login, "192.0.2.8".parse().unwrap())
        .await
        .unwrap();
    s.g.shutdown().await;
}

#[tokio::test]
async fn a_lockout_lasts_exactly_lockout_s() {
    let auth = AuthSettings {
        max_failed_logins: 3,
        lockout_s: 300,
        ..AuthSettings::default()
    };
    let s = start(auth, RouteLimits::default()).await;
    s.register("locked").await;
    for _ in 0..3 {
        assert!(matches!(
            s.login("locked", "not the password").await,
            Err(Error::InvalidCredentials)
        ));
    }
    assert!(matches!(
        s.login("locked@example.com", PASSWORD).await,
        Err(Error::AccountThrottled { retry_after_s: 300 })
    ));
    s.advance_s(299);
    assert!(matches!(
        s.login("locked", PASSWORD).await,
        Err(Error::AccountThrottled { retry_after_s: 1 })
    ));
    s.advance_s(1);
    s.login("locked", PASSWORD).await.unwrap();
    // The success forgave the count: two more failures do not lock again.
    for _ in 0..2 {
        assert!(s.login("locked", "wrong again").await.is_err());
    }
    s.login("locked", PASSWORD).await.unwrap();
    s.g.shutdown().await;
}

#[tokio::test]
async fn refreshing_slides_a_session_up_to_its_absolute_end_and_no_further() {
    let auth = AuthSettings {
        access_token_ttl_s: 60,
        refresh_token_ttl_s: 100,
        session_max_lifetime_s: 250,
        ..AuthSettings::default()
    };
    let s = start(auth, RouteLimits::default()).await;
    s.register("slider").await;
    let first = s.login("slider", PASSWORD).await.unwrap();

    // Access tokens die at exp (plus the 5 s leeway); the session does not.
    let access = first.access_token.expose_secret().to_owned();
    s.g.sessions.authenticate(&access).await.unwrap();
    s.advance_s(64);
    s.g.sessions.authenticate(&access).await.unwrap();
    s.advance_s(1);
    assert!(matches!(
        s.g.sessions.authenticate(&access).await,
        Err(Error::TokenExpired)
    ));

    // t = 65, 164, 240: each refresh within the ttl slides the session on.
    let mut refresh = first.refresh_token.expose_secret().to_owned();
    for step in [0, 99, 76] {
        s.advance_s(step);
        let next = s.g.auth.refresh(&refresh).await.unwrap();
        s.g.sessions
            .authenticate(next.access_token.expose_secret())
            .await
            .unwrap();
        refresh = next.refresh_token.expose_secret().to_owned();
    }
    // t = 250: the absolute end, however recently it was refreshed.
    s.advance_s(10);
    assert!(matches!(
        s.g.auth.refresh(&refresh).await,
        Err(Error::SessionRevoked)
    ));

    // A refresh token unused for its whole ttl is dead too.
    let idle = s.login("slider", PASSWORD).await.unwrap();
    s.advance_s(100);
    assert!(matches!(
        s.g.auth.refresh(idle.refresh_token.expose_secret()).await,
        Err(Error::SessionRevoked)
    ));
    s.g.shutdown().await;
}

#[tokio::test]
async fn a_token_spent_within_the_grace_window_is_refused_without_revoking() {
    let auth = AuthSettings {
        refresh_reuse_grace_s: 10,
        ..AuthSettings::default()
    };
    let s = start(auth, RouteLimits::default()).await;
    s.register("twotabs").await;
    let first = s.login("twotabs", PASSWORD).await.unwrap();
    let spent = first.refresh_token.expose_secret().to_owned();
    let second = s.g.auth.refresh(&spent).await.unwrap();
    // The other tab, nine seconds later, with the token the first one spent.
    s.advance_s(9);
    assert!(matches!(
        s.g.auth.refresh(&spent).await,
        Err(Error::SessionRevoked)
    ));
    let third =
        s.g.auth
            .refresh(second.refresh_token.expose_secret())
            .await
            .expect("the session lives on");
    // Once the window has passed, reuse is theft: the session goes.
    s.advance_s(10);
    assert!(matches!(
        s.g.auth.refresh(second.refresh_token.expose_secret()).await,
        Err(Error::SessionRevoked)
    ));
    assert!(matches!(
        s.g.auth.refresh(third.refresh_token.expose_secret()).await,
        Err(Error::SessionRevoked)
    ));
    s.g.shutdown().await;
}

#[tokio::test]
async fn a_spent_refresh_token_revokes_its_session() {
    let auth = AuthSettings {
        refresh_reuse_grace_s: 0,
        ..AuthSettings::default()
    };
    let s = start(auth, RouteLimits::default()).await;
    s.register("reused").await;
    let issued = s.login("reused", PASSWORD).await.unwrap();
    let spent = issued.refresh_token.expose_secret().to_owned();
    s.advance_s(1);
    let fresh = s.g.auth.refresh(&spent).await.unwrap();
    s.advance_s(60);
    assert!(matches!(
        s.g.auth.refresh(&spent).await,
        Err(Error::SessionRevoked)
    ));
    // The thief and the owner are both out: the session is gone.
    assert!(matches!(
        s.g.auth.refresh(fresh.refresh_token.expose_secret()).await,
        Err(Error::SessionRevoked)
    ));
    assert!(matches!(
        s.g.sessions
            .authenticate(fresh.access_token.expose_secret())
            .await,
        Err(Error::SessionRevoked)
    ));
    s.g.shutdown().await;
}
