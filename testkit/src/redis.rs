//! The shared Redis, and a private `redis-server` a test can stop and restart.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::children::Tracked;

/// The shared Redis the Redis tests use, each under a key prefix of its own:
/// `GATEHOUSE_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("GATEHOUSE_TEST_REDIS_URL")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .map_or_else(
            || "redis://127.0.0.1:6379".to_owned(),
            |v| v.trim().to_owned(),
        )
}

/// `host:port` of [`redis_url`].
pub(crate) fn address() -> String {
    crate::host_port(&redis_url(), 6379)
}

/// Whether `redis-server` runs at all.
pub(crate) fn server_installed() -> bool {
    Command::new("redis-server")
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A `redis-server` of the test's own, on a free port, that it can stop and
/// restart (on the same port, with nothing remembered). Needs the program:
/// see [`crate::require_redis_server!`].
pub struct PrivateRedis {
    port: u16,
    child: Option<Tracked>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let mut redis = Self {
            port: crate::free_port(),
            child: None,
        };
        redis.restart();
        redis
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again), and waits until it accepts connections.
    pub fn restart(&mut self) {
        self.stop();
        self.child = Some(Tracked::spawn(
            Command::new("redis-server")
                .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
            "redis-server",
        ));
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server; connections to it are refused from now on.
    pub fn stop(&mut self) {
        self.child = None;
    }
}
