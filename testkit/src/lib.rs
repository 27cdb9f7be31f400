//! Fixtures shared by Gatehouse's tests and benches: a PostgreSQL database of
//! the test's own ([`PgDatabase`]), a private `redis-server` ([`PrivateRedis`]),
//! a free loopback port ([`free_port`]), the spawned server ([`Server`]) with
//! its data ([`DataDir`]), and skipping a test whose service is absent
//! ([`require_postgres!`], [`require_redis!`], [`require_redis_server!`],
//! [`require_smtp_sink!`], [`require_browser!`]), a Python with the independent
//! tools the tests check against ([`python_tools`]), a real SMTP server that
//! keeps the mails it is sent ([`SmtpSink`], [`Mail`]), and a real headless
//! Chromium in a phone-sized window ([`Browser`]).
//!
//! Environment variables:
//!
//! | variable | default | meaning |
//! |---|---|---|
//! | `GATEHOUSE_TEST_POSTGRES_URL` | `postgres://postgres@127.0.0.1:5432` | the PostgreSQL server tests make their databases on (no database name) |
//! | `GATEHOUSE_TEST_REDIS_URL` | `redis://127.0.0.1:6379` | the shared Redis the Redis tests use |
//! | `GATEHOUSE_TEST_STORE` | `sqlite` | `postgres`: every [`DataDir`] is a PostgreSQL database |
//! | `GATEHOUSE_TEST_PYTHON` | unset | a Python that has `tests/tools/requirements.txt` installed; unset: a virtualenv made once under `target/test-tools` |
//! | `GATEHOUSE_TEST_CHROMEDRIVER` | `/usr/bin/chromedriver` | the `chromedriver` a [`Browser`] runs |
//! | `GATEHOUSE_TEST_CHROMIUM` | `/usr/bin/chromium` | the Chromium it opens (the same version as `chromedriver`) |
//! | `GATEHOUSE_TEST_REQUIRE_SERVICES` | unset | `1`: a test whose service is absent fails instead of skipping (CI) |

#![allow(
    clippy::disallowed_methods,
    reason = "fixtures wait on other processes in wall time; the clock rule is for the service's logic"
)]

mod browser;
mod children;
mod data;
mod postgres;
mod python;
mod redis;
mod server;
mod smtp;

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

pub use browser::{Browser, CHROMEDRIVER, CHROMIUM, PHONE_WINDOW, chromedriver, chromium};
pub use data::{DataDir, WriteLock, on_postgres};
/// The WebDriver client a [`Browser`] is driven with.
pub use fantoccini;
pub use postgres::{PgDatabase, postgres_url};
pub use python::tools_dir;
pub use redis::{PrivateRedis, redis_url};
pub use server::{Builder, Reply, Server, eventually, signal};
pub use smtp::{Mail, SmtpSink};

/// Set (to `1`) where every service must be there: a test that would skip fails.
pub const REQUIRE_SERVICES: &str = "GATEHOUSE_TEST_REQUIRE_SERVICES";

/// How long an availability check waits for a TCP connection.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

/// A free port on 127.0.0.1 (free when this returns; nothing holds it).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind a port on 127.0.0.1")
        .port()
}

/// A service some tests need.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Service {
    /// The PostgreSQL server at [`postgres_url`].
    Postgres,
    /// The shared Redis at [`redis_url`].
    Redis,
    /// The `redis-server` program, which [`PrivateRedis`] runs.
    RedisServer,
    /// A Python with `tests/tools/requirements.txt` installed.
    PythonTools,
    /// What an [`SmtpSink`] runs: the Python of [`Self::PythonTools`] (aiosmtpd).
    SmtpSink,
    /// What a [`Browser`] runs: [`chromedriver`] and [`chromium`].
    Browser,
}

impl Service {
    /// Why the service cannot be used, or `None` when it can.
    pub fn unavailable(self) -> Option<String> {
        match self {
            Self::Postgres => {
                let at = postgres::address();
                (!reachable(&at)).then(|| format!("PostgreSQL is not reachable at {at}"))
            }
            Self::Redis => {
                let at = redis::address();
                (!reachable(&at)).then(|| format!("Redis is not reachable at {at}"))
            }
            Self::RedisServer => (!redis::server_installed())
                .then(|| "the redis-server program is not installed".to_owned()),
            Self::PythonTools => python::python().err(),
            Self::SmtpSink => python::python()
                .err()
                .map(|reason| format!("the SMTP sink cannot run: {reason}")),
            Self::Browser => browser::unavailable(),
        }
    }
}

/// `host:port` of [`postgres_url`].
pub fn postgres_address() -> String {
    postgres::address()
}

/// Whether PostgreSQL accepts TCP connections at [`postgres_url`].
pub fn postgres_available() -> bool {
    Service::Postgres.unavailable().is_none()
}

/// Whether Redis accepts TCP connections at [`redis_url`].
pub fn redis_available() -> bool {
    Service::Redis.unavailable().is_none()
}

/// Whether the `redis-server` program can be run (for [`PrivateRedis`]).
pub fn redis_server_available() -> bool {
    Service::RedisServer.unavailable().is_none()
}

/// Whether `GATEHOUSE_TEST_REQUIRE_SERVICES` asks for every service.
pub fn services_required() -> bool {
    std::env::var(REQUIRE_SERVICES)
        .is_ok_and(|v| matches!(v.trim().to_ascii_lowercase().as_str(), "1" | "true" | "yes"))
}

/// Whether a test needing `service` should go on: `true` when the service is
/// there; `false` (after printing why on stderr, past the test harness's
/// capture) when it is not. Panics instead when services are required.
#[track_caller]
pub fn require(service: Service) -> bool {
    let Some(reason) = service.unavailable() else {
        return true;
    };
    if services_required() {
        panic!(
            "{reason}, and {REQUIRE_SERVICES}=1 requires it: start it, or unset \
             {REQUIRE_SERVICES} to skip the tests that need it"
        );
    }
    let test = std::thread::current()
        .name()
        .filter(|n| *n != "main")
        .map_or_else(|| std::panic::Location::caller().to_string(), str::to_owned);
    // Straight to the process's stderr: libtest captures only `eprintln!`.
    let _ = writeln!(std::io::stderr().lock(), "skipped: {reason} ({test})");
    false
}

/// The Python that runs the scripts of [`tools_dir`], or `None` (after
/// printing why) when there is none; panics instead when services are
/// required.
#[track_caller]
pub fn python_tools() -> Option<PathBuf> {
    require(Service::PythonTools)
        .then(python::python)
        .and_then(Result::ok)
}

/// Returns from the calling test, with a printed reason, when PostgreSQL is
/// not reachable; fails it instead under `GATEHOUSE_TEST_REQUIRE_SERVICES=1`.
#[macro_export]
macro_rules! require_postgres {
    () => {
        if !$crate::require($crate::Service::Postgres) {
            return;
        }
    };
}

/// Returns from the calling test, with a printed reason, when the shared
/// Redis is not reachable; fails it instead under `GATEHOUSE_TEST_REQUIRE_SERVICES=1`.
#[macro_export]
macro_rules! require_redis {
    () => {
        if !$crate::require($crate::Service::Redis) {
            return;
        }
    };
}

/// Returns from the calling test, with a printed reason, when `redis-server`
/// (for a [`PrivateRedis`]) is not installed; fails it instead under
/// `GATEHOUSE_TEST_REQUIRE_SERVICES=1`.
#[macro_export]
macro_rules! require_redis_server {
    () => {
        if !$crate::require($crate::Service::RedisServer) {
            return;
        }
    };
}

/// Returns from the calling test, with a printed reason, when an
/// [`SmtpSink`] cannot run (no Python with the test tools); fails it instead
/// under `GATEHOUSE_TEST_REQUIRE_SERVICES=1`.
#[macro_export]
macro_rules! require_smtp_sink {
    () => {
        if !$crate::require($crate::Service::SmtpSink) {
            return;
        }
    };
}

/// Returns from the calling test, with a printed reason, when a [`Browser`]
/// cannot run (no `chromedriver` or Chromium); fails it instead under
/// `GATEHOUSE_TEST_REQUIRE_SERVICES=1`.
#[macro_export]
macro_rules! require_browser {
    () => {
        if !$crate::require($crate::Service::Browser) {
            return;
        }
    };
}

/// Whether something accepts a TCP connection at `host:port`, within a short timeout.
fn reachable(at: &str) -> bool {
    let addrs: Vec<SocketAddr> = match at.to_socket_addrs() {
        Ok(addrs) => addrs.collect(),
        Err(_) => return false,
    };
    addrs
        .iter()
        .any(|addr| TcpStream::connect_timeout(addr, CONNECT_TIMEOUT).is_ok())
}

/// `host:port` of a `scheme://[user[:password]@]host[:port][/path][?query]` URL.
fn host_port(url: &str, default_port: u16) -> String {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, hp)| hp);
    let has_port = match host_port.rsplit_once(':') {
        // `[::1]` alone has colons but no port.
        Some((host, port)) => !port.is_empty() && (!host.starts_with('[') || host.ends_with(']')),
        None => false,
    };
    if has_port {
        host_port.to_owned()
    } else {
        format!("{host_port}:{default_port}")
    }
}

/// Stops the whole test process, passing: used when every test left in it
/// would skip. Kills the private `redis-server`s, SMTP sinks and browsers
/// first, which would outlive it.
fn skip_process(reason: &str) -> ! {
    children::kill_all();
    browser::kill_all();
    let _ = writeln!(
        std::io::stderr().lock(),
        "skipped: {reason}; the rest of this test binary is skipped, and it exits now, passing \
         (set {REQUIRE_SERVICES}=1 to make this a failure)"
    );
    std::process::exit(0);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_of_urls() {
        for (url, expected) in [
            ("postgres://postgres@127.0.0.1:5432", "127.0.0.1:5432"),
            (
                "postgres://u:p@db.example:6000/x?sslmode=disable",
                "db.example:6000",
            ),
            ("postgres://localhost", "localhost:5432"),
            ("postgres://u@[::1]:5433/db", "[::1]:5433"),
            ("postgres://u@[::1]/db", "[::1]:5432"),
            ("redis://127.0.0.1:6379", "127.0.0.1:6379"),
        ] {
            assert_eq!(host_port(url, 5432), expected, "{url}");
        }
    }

    #[test]
    fn a_closed_port_is_unreachable_and_a_listener_reachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let open = listener.local_addr().unwrap().to_string();
        assert!(reachable(&open));
        drop(listener);
        assert!(!reachable(&format!("127.0.0.1:{}", free_port())));
    }
}
