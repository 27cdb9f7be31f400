//! Runs the real `gatehouse` binary on port 0 with the shipped `config.toml`
//! and a private database, and speaks HTTP to it.
//!
//! The fixtures are `gatehouse-testkit`'s; this layer points them at the
//! binary cargo built for this suite and adds what the suite's tests share:
//! the secret and password they use, and the configuration every test server
//! starts from. Each [`Server`] is its own process; see [`testkit::Server`].

use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};

use gatehouse_testkit as testkit;
use serde_json::json;

pub use testkit::{DataDir, PgDatabase, PrivateRedis, Reply, eventually};

/// The JWT secret tests run with, so they can forge tokens.
pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// A password that passes the policy.
pub const PASSWORD: &str = "correct horse battery staple";

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_gatehouse")
}

/// Runs the binary with `args` and the given environment (no inherited
/// `GATEHOUSE_ENV` or `GATEHOUSE_CONFIG`), and waits for it.
pub fn cli<K: AsRef<std::ffi::OsStr>, V: AsRef<std::ffi::OsStr>>(
    args: &[&std::ffi::OsStr],
    env: &[(K, V)],
) -> std::process::Output {
    let mut command = std::process::Command::new(binary());
    command
        .args(args)
        .env_remove("GATEHOUSE_ENV")
        .env_remove("GATEHOUSE_CONFIG");
    for (k, v) in env {
        command.env(k, v);
    }
    command.output().expect("run gatehouse")
}

/// What a finished run wrote to stderr.
pub fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

pub fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml")
}

/// The configuration every test server starts from: the shipped file, plus
/// fast hashing and limits high enough not to interfere unless a test lowers them.
const BASE_ENV: [(&str, &str); 11] = [
    ("GATEHOUSE__SERVER__LISTEN", "127.0.0.1:0"),
    // Retries a second apart, not half a minute: the relay tests watch them.
    ("GATEHOUSE__EMAIL__FIRST_RETRY_S", "1"),
    ("GATEHOUSE__AUTH__JWT_SECRET", SECRET),
    ("GATEHOUSE__PASSWORD__SCRYPT_LOG_N", "10"),
    ("GATEHOUSE__RATE_LIMIT__ROUTES__LOGIN__LIMIT", "10000"),
    ("GATEHOUSE__RATE_LIMIT__ROUTES__REGISTER__LIMIT", "10000"),
    ("GATEHOUSE__RATE_LIMIT__ROUTES__REFRESH__LIMIT", "10000"),
    ("GATEHOUSE__RATE_LIMIT__ROUTES__PASSWORD__LIMIT", "10000"),
    ("GATEHOUSE__RATE_LIMIT__ROUTES__MFA__LIMIT", "10000"),
    ("GATEHOUSE__RATE_LIMIT__ROUTES__DEFAULT__LIMIT", "100000"),
    ("GATEHOUSE__AUTH__MAX_FAILED_LOGINS", "10000"),
];

/// A test server to be: [`testkit::Builder`] with the suite's configuration.
pub struct Builder(testkit::Builder);

impl Builder {
    /// Overrides one key, as `GATEHOUSE__SECTION__KEY`.
    pub fn env(self, key: &str, value: impl ToString) -> Self {
        Self(self.0.env(key, value))
    }

    pub fn dir(self, dir: &DataDir) -> Self {
        Self(self.0.dir(dir))
    }

    pub fn start(self) -> Server {
        Server(self.0.start())
    }
}

/// A running `gatehouse`: [`testkit::Server`] (dereferences to it) plus the
/// suite's account helpers.
pub struct Server(testkit::Server);

impl Deref for Server {
    type Target = testkit::Server;

    fn deref(&self) -> &testkit::Server {
        &self.0
    }
}

impl DerefMut for Server {
    fn deref_mut(&mut self) -> &mut testkit::Server {
        &mut self.0
    }
}

impl Server {
    pub fn builder() -> Builder {
        let builder = testkit::Builder::new(binary())
            .arg("--config")
            .arg(shipped_config())
            .env_remove("GATEHOUSE_ENV")
            .env_remove("GATEHOUSE_CONFIG");
        Builder(
            BASE_ENV
                .into_iter()
                .fold(builder, |builder, (key, value)| builder.env(key, value)),
        )
    }

    pub fn start() -> Self {
        Self::builder().start()
    }

    pub async fn register(&self, username: &str) -> Reply {
        self.post(
            "/api/v1/auth/register",
            json!({"email": format!("{username}@example.com"), "username": username, "password": PASSWORD}),
            None,
        )
        .await
    }

    pub async fn login(&self, login: &str, password: &str) -> Reply {
        self.post(
            "/api/v1/auth/login",
            json!({"username": login, "password": password}),
            None,
        )
        .await
    }

    /// Registers `username` and logs in; returns (access token, refresh token).
    pub async fn user(&self, username: &str) -> (String, String) {
        self.register(username).await.ok(201);
        let tokens = self.login(username, PASSWORD).await;
        tokens.ok(200);
        (
            tokens.body["access_token"].as_str().unwrap().to_owned(),
            tokens.body["refresh_token"].as_str().unwrap().to_owned(),
        )
    }
}
