//! The servers under test, each its own process: Gatehouse (the binary named
//! by `BENCH_GATEHOUSE_BIN`, else the one `cargo build --release -p gatehouse`
//! makes) and the bare hyper baseline (this bench binary run again in
//! baseline mode). Both log to a file in a private temp dir and say
//! `listening on ADDR` once bound to port 0.

use std::fs::File;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use tempfile::TempDir;

/// Env var that turns this bench binary into the baseline server; its value
/// is the body size in bytes.
pub const BASELINE_ENV: &str = "GATEHOUSE_BENCH_BASELINE_BODY";

/// Env var naming the `gatehouse` binary to measure, instead of building one.
pub const BIN_ENV: &str = "BENCH_GATEHOUSE_BIN";

/// Env vars naming the build the `compare` scenario measures beside it.
pub const COMPARE_BIN_ENV: &str = "BENCH_COMPARE_BIN";
pub const COMPARE_CONFIG_ENV: &str = "BENCH_COMPARE_CONFIG";

/// A password that passes Gatehouse's policy.
pub const PASSWORD: &str = "correct horse battery staple";

/// Limits high enough never to interfere unless a scenario lowers them.
const UNLIMITED: &str = "1000000";

pub struct Proc {
    pub name: String,
    pub addr: SocketAddr,
    child: Child,
    log: PathBuf,
    /// Holds the log and the database; removed on drop.
    _dir: TempDir,
}

impl Proc {
    fn spawn(name: &str, mut command: Command, dir: TempDir) -> Self {
        let log = dir.path().join("server.log");
        let file = File::create(&log).expect("create the server log file");
        command
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(file));
        let child = command
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the {name} server: {e}"));
        let mut proc = Self {
            name: name.to_owned(),
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            child,
            log,
            _dir: dir,
        };
        proc.addr = proc.wait_listening();
        proc
    }

    fn wait_listening(&mut self) -> SocketAddr {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let text = std::fs::read_to_string(&self.log).unwrap_or_default();
            if let Some(at) = text.find("listening on ") {
                let addr = text[at + 13..]
                    .split(|c: char| c == '"' || c.is_whitespace())
                    .next()
                    .unwrap_or("");
                return addr.parse().unwrap_or_else(|e| {
                    panic!("{}: bad listening address {addr:?}: {e}", self.name)
                });
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!(
                    "the {} server exited ({status}) before listening:\n{}",
                    self.name,
                    tail(&text, 20)
                );
            }
            if Instant::now() > deadline {
                panic!(
                    "the {} server did not listen within 60 s:\n{}",
                    self.name,
                    tail(&text, 20)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident set size, from /proc/<pid>/status.
    pub fn rss_bytes(&self) -> Option<u64> {
        rss_bytes(self.pid())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            gatehouse_testkit::signal(self.child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(15);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            eprintln!(
                "bench: the {} server ignored SIGTERM; killing it",
                self.name
            );
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The workspace's root directory (this package is its `benches/`).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the bench package lies inside the workspace")
}

/// The `gatehouse` binary every scenario starts: `BENCH_GATEHOUSE_BIN` if
/// set (say, an older build, to compare against), else a release build of
/// the workspace's service, made once per run.
pub fn gatehouse_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| match path_from(BIN_ENV) {
        Some(binary) => {
            assert!(
                binary.is_file(),
                "{BIN_ENV}={} is not a file",
                binary.display()
            );
            println!("  gatehouse: {} (from {BIN_ENV})", binary.display());
            binary
        }
        None => {
            let binary = build_gatehouse();
            println!("  gatehouse: {} (release build)", binary.display());
            binary
        }
    })
}

/// The configuration file every server starts with: `BENCH_CONFIG` if set
/// (an older build wants the file it shipped with), else `config.toml`.
fn config_file() -> PathBuf {
    path_from("BENCH_CONFIG").unwrap_or_else(|| workspace_root().join("config.toml"))
}

/// The path the environment variable `name` holds, if set and not empty.
fn path_from(name: &str) -> Option<PathBuf> {
    std::env::var_os(name)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// Whether the binary under test has signing keys (`gatehouse keys`, and
/// the `auth.signing_algorithm` key): builds before them refuse that key.
pub fn has_signing_keys() -> bool {
    static KNOWS: OnceLock<bool> = OnceLock::new();
    *KNOWS.get_or_init(|| {
        Command::new(gatehouse_binary())
            .args(["keys", "--help"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// Runs `cargo build --release -p gatehouse` (with the cargo running this
/// bench, `$CARGO`) and returns the executable it reports:
/// `<target dir>/release/gatehouse`.
fn build_gatehouse() -> PathBuf {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = workspace_root();
    let output = Command::new(&cargo)
        .current_dir(root)
        .args([
            "build",
            "--release",
            "-p",
            "gatehouse",
            "--bin",
            "gatehouse",
        ])
        .arg("--manifest-path")
        .arg(root.join("Cargo.toml"))
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", cargo.to_string_lossy()));
    assert!(
        output.status.success(),
        "cargo build --release -p gatehouse failed ({}); set {BIN_ENV} to use a binary built elsewhere",
        output.status
    );
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == "gatehouse")
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| crate::report::target_dir().join("release/gatehouse"))
}

/// A `gatehouse` binary and the configuration file it starts with.
#[derive(Clone, Debug)]
pub struct Build {
    pub binary: PathBuf,
    pub config: PathBuf,
}

impl Build {
    /// The build every scenario measures.
    pub fn under_test() -> Self {
        Self {
            binary: gatehouse_binary().to_path_buf(),
            config: config_file(),
        }
    }

    /// The build `BENCH_COMPARE_BIN` names, with the file
    /// `BENCH_COMPARE_CONFIG` names (else `config.toml`); `None` when unset.
    pub fn compared() -> Option<Self> {
        let binary = path_from(COMPARE_BIN_ENV)?;
        assert!(
            binary.is_file(),
            "{COMPARE_BIN_ENV}={} is not a file",
            binary.display()
        );
        let config =
            path_from(COMPARE_CONFIG_ENV).unwrap_or_else(|| workspace_root().join("config.toml"));
        Some(Self { binary, config })
    }
}

/// A Gatehouse process with a private database.
pub struct Gatehouse {
    pub proc: Proc,
    pub db: PathBuf,
}

impl Gatehouse {
    /// Starts the binary with the shipped `config.toml`, the shipped logging
    /// (info, JSON), rate limits out of the way, and `overrides` on top.
    pub fn start(name: &str, overrides: &[(&str, String)]) -> Self {
        Self::start_build(&Build::under_test(), name, overrides)
    }

    /// [`Gatehouse::start`] with another build.
    pub fn start_build(build: &Build, name: &str, overrides: &[(&str, String)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-bench-")
            .tempdir()
            .expect("create a temp dir");
        let db = dir.path().join("gatehouse.db");
        Self::spawn(build, name, dir, db, overrides)
    }

    /// [`Gatehouse::start`] on an existing (or to be created) SQLite file
    /// `db`, which outlives the process; the log goes to a temp dir of its own.
    pub fn start_on(name: &str, db: &Path, overrides: &[(&str, String)]) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-bench-")
            .tempdir()
            .expect("create a temp dir");
        Self::spawn(&Build::under_test(), name, dir, db.to_path_buf(), overrides)
    }

    fn spawn(
        build: &Build,
        name: &str,
        dir: TempDir,
        db: PathBuf,
        overrides: &[(&str, String)],
    ) -> Self {
        let mut command = Command::new(&build.binary);
        command.arg("--config").arg(&build.config);
        // Nothing from the caller's environment may change what is measured.
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("GATEHOUSE") {
                command.env_remove(key);
            }
        }
        let base = [
            ("GATEHOUSE__SERVER__LISTEN", "127.0.0.1:0".to_owned()),
            ("GATEHOUSE__DATABASE__PATH", db.display().to_string()),
            ("GATEHOUSE__LOGGING__LEVEL", "info".to_owned()),
            ("GATEHOUSE__AUTH__MAX_FAILED_LOGINS", UNLIMITED.to_owned()),
        ];
        let limits = ["LOGIN", "REGISTER", "REFRESH", "PASSWORD", "DEFAULT"].map(|class| {
            (
                format!("GATEHOUSE__RATE_LIMIT__ROUTES__{class}__LIMIT"),
                UNLIMITED,
            )
        });
        for (key, value) in &base {
            command.env(key, value);
        }
        for (key, value) in &limits {
            command.env(key, value);
        }
        for (key, value) in overrides {
            command.env(key, value);
        }
        Self {
            proc: Proc::spawn(name, command, dir),
            db,
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.proc.addr
    }
}

/// The bare hyper server, answering every request with `body_bytes` of JSON.
pub fn start_baseline(body_bytes: usize) -> Proc {
    let dir = tempfile::Builder::new()
        .prefix("gatehouse-bench-baseline-")
        .tempdir()
        .expect("create a temp dir");
    let exe = std::env::current_exe().expect("the path of this bench binary");
    let mut command = Command::new(exe);
    command.env(BASELINE_ENV, body_bytes.to_string());
    Proc::spawn("baseline", command, dir)
}
