//! Runs the real `gatehouse` binary on port 0 with the shipped `config.toml`
//! and a private database, and speaks HTTP to it.
//!
//! Each [`Server`] is its own process. Its stderr (the JSON log) is captured
//! line by line so tests can assert on what operators would read. Dropping a
//! server sends SIGTERM and waits for it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

/// The JWT secret tests run with, so they can forge tokens.
pub const SECRET: &str = "integration-test-secret-0123456789abcdef";

/// A password that passes the policy.
pub const PASSWORD: &str = "correct horse battery staple";

/// Which store the suite runs against: SQLite unless `GATEHOUSE_TEST_STORE=postgres`.
pub fn on_postgres() -> bool {
    std::env::var("GATEHOUSE_TEST_STORE").is_ok_and(|v| v == "postgres")
}

/// The machine's PostgreSQL, as the test suite reaches it.
pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

/// Runs one statement with psql and returns its output, unaligned.
pub fn psql(database: &str, sql: &str) -> String {
    let out = Command::new("psql")
        .args([
            &format!("{POSTGRES}/{database}"),
            "-v",
            "ON_ERROR_STOP=1",
            "-qtAc",
            sql,
        ])
        .output()
        .expect("psql");
    assert!(
        out.status.success(),
        "psql {sql}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// A PostgreSQL database of the test's own, dropped when the last user goes.
pub struct PgDatabase {
    pub name: String,
}

impl PgDatabase {
    pub fn create() -> Self {
        let name = format!("gatehouse_test_{}", uuid::Uuid::new_v4().simple());
        psql("postgres", &format!("CREATE DATABASE {name}"));
        Self { name }
    }

    pub fn url(&self) -> String {
        format!("{POSTGRES}/{}", self.name)
    }
}

impl Drop for PgDatabase {
    fn drop(&mut self) {
        let _ = Command::new("psql")
            .args([&format!("{POSTGRES}/postgres"), "-qc"])
            .arg(format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.name
            ))
            .output();
    }
}

/// Where a server keeps its data; shared by the servers of a restart or
/// several-instances test. A SQLite file in a temporary directory, or a
/// PostgreSQL database of its own.
#[derive(Clone)]
pub struct DataDir {
    dir: Arc<tempfile::TempDir>,
    pg: Option<Arc<PgDatabase>>,
}

impl DataDir {
    pub fn new() -> Self {
        Self {
            dir: Arc::new(tempfile::tempdir().expect("temp dir")),
            pg: on_postgres().then(|| Arc::new(PgDatabase::create())),
        }
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("data/gatehouse.db")
    }

    /// The configuration that points a server at this data.
    fn env(&self) -> Vec<(String, String)> {
        let mut env = vec![(
            "GATEHOUSE__DATABASE__PATH".to_owned(),
            self.db().display().to_string(),
        )];
        if let Some(pg) = &self.pg {
            env.push(("GATEHOUSE__DATABASE__URL".to_owned(), pg.url()));
        }
        env
    }

    /// The first column of the first row `sql` returns, as text.
    pub fn query(&self, sql: &str) -> String {
        match &self.pg {
            Some(pg) => psql(&pg.name, sql),
            None => rusqlite::Connection::open(self.db())
                .unwrap()
                .query_row(sql, [], |r| r.get::<_, String>(0))
                .unwrap(),
        }
    }

    /// Takes the lock writers need from a second connection, as an operator's
    /// stray transaction would: SQLite's write lock, or an exclusive lock on
    /// PostgreSQL's users table. Released when the guard is dropped.
    pub fn hold_write_lock(&self) -> WriteLock {
        match &self.pg {
            None => {
                let lock = rusqlite::Connection::open(self.db()).unwrap();
                lock.execute_batch("BEGIN IMMEDIATE").unwrap();
                WriteLock::Sqlite(lock)
            }
            Some(pg) => {
                // The schema appears when the server first reaches the database.
                let deadline = Instant::now() + Duration::from_secs(10);
                while psql(&pg.name, "SELECT to_regclass('users') IS NOT NULL") != "t" {
                    assert!(
                        Instant::now() < deadline,
                        "the server never created its schema"
                    );
                    std::thread::sleep(Duration::from_millis(50));
                }
                let mut child = Command::new("psql")
                    .args([&pg.url(), "-qtA", "-v", "ON_ERROR_STOP=1"])
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .spawn()
                    .expect("psql");
                let mut stdin = child.stdin.take().unwrap();
                use std::io::Write;
                writeln!(
                    stdin,
                    "BEGIN; LOCK TABLE users IN ACCESS EXCLUSIVE MODE; SELECT 'locked';"
                )
                .unwrap();
                let mut line = String::new();
                BufReader::new(child.stdout.take().unwrap())
                    .read_line(&mut line)
                    .unwrap();
                assert_eq!(line.trim(), "locked");
                WriteLock::Postgres { child, stdin }
            }
        }
    }
}

pub enum WriteLock {
    Sqlite(rusqlite::Connection),
    Postgres {
        child: Child,
        stdin: std::process::ChildStdin,
    },
}

impl Drop for WriteLock {
    fn drop(&mut self) {
        match self {
            Self::Sqlite(lock) => {
                let _ = lock.execute_batch("ROLLBACK");
            }
            Self::Postgres { child, stdin } => {
                use std::io::Write;
                let _ = writeln!(stdin, "ROLLBACK;");
                let _ = writeln!(stdin, "\\q");
                let _ = child.wait();
            }
        }
    }
}

pub struct Builder {
    env: Vec<(String, String)>,
    dir: DataDir,
}

impl Builder {
    /// Overrides one key, as `GATEHOUSE__SECTION__KEY`.
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }

    pub fn dir(mut self, dir: &DataDir) -> Self {
        self.dir = dir.clone();
        self
    }

    pub fn start(self) -> Server {
        Server::spawn(self.env, self.dir)
    }
}

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub base: String,
    pub dir: DataDir,
    logs: Arc<Mutex<Vec<String>>>,
    http: reqwest::Client,
}

/// A response, read whole.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
    pub text: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The contract error code, for error responses.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }

    #[track_caller]
    pub fn expect(&self, status: u16, code: &str) -> &Self {
        assert_eq!(
            (self.status.as_u16(), self.code()),
            (status, code),
            "unexpected reply: {}",
            self.text
        );
        self
    }

    #[track_caller]
    pub fn ok(&self, status: u16) -> &Self {
        assert_eq!(
            self.status.as_u16(),
            status,
            "unexpected reply: {}",
            self.text
        );
        self
    }
}

/// The configuration every test server starts from: the shipped file, plus
/// fast hashing and limits high enough not to interfere unless a test lowers them.
fn base_env(dir: &DataDir) -> Vec<(String, String)> {
    let common = [
        ("GATEHOUSE__SERVER__LISTEN", "127.0.0.1:0".to_owned()),
        ("GATEHOUSE__AUTH__JWT_SECRET", SECRET.to_owned()),
        ("GATEHOUSE__PASSWORD__SCRYPT_LOG_N", "10".to_owned()),
        (
            "GATEHOUSE__RATE_LIMIT__ROUTES__LOGIN__LIMIT",
            "10000".to_owned(),
        ),
        (
            "GATEHOUSE__RATE_LIMIT__ROUTES__REGISTER__LIMIT",
            "10000".to_owned(),
        ),
        (
            "GATEHOUSE__RATE_LIMIT__ROUTES__REFRESH__LIMIT",
            "10000".to_owned(),
        ),
        (
            "GATEHOUSE__RATE_LIMIT__ROUTES__PASSWORD__LIMIT",
            "10000".to_owned(),
        ),
        (
            "GATEHOUSE__RATE_LIMIT__ROUTES__DEFAULT__LIMIT",
            "100000".to_owned(),
        ),
        ("GATEHOUSE__AUTH__MAX_FAILED_LOGINS", "10000".to_owned()),
    ];
    common
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .chain(dir.env())
        .collect()
}

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_gatehouse")
}

pub fn shipped_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("config.toml")
}

impl Server {
    pub fn builder() -> Builder {
        Builder {
            env: Vec::new(),
            dir: DataDir::new(),
        }
    }

    pub fn start() -> Self {
        Self::builder().start()
    }

    fn spawn(overrides: Vec<(String, String)>, dir: DataDir) -> Self {
        let mut command = Command::new(binary());
        command
            .arg("--config")
            .arg(shipped_config())
            .env_remove("GATEHOUSE_ENV")
            .env_remove("GATEHOUSE_CONFIG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in base_env(&dir).into_iter().chain(overrides) {
            command.env(k, v);
        }
        let mut child = command.spawn().expect("spawn gatehouse");
        let stderr = child.stderr.take().expect("stderr");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = Arc::clone(&logs);
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if let Some(at) = line.find("listening on ") {
                    let addr = line[at + 13..]
                        .split(|c: char| c == '"' || c.is_whitespace())
                        .next()
                        .unwrap_or("")
                        .to_owned();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr);
                    }
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr: SocketAddr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr.parse().expect("address in the listening line"),
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start: {:?}", logs.lock().unwrap());
            }
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        Self {
            child,
            base: format!("http://{addr}"),
            addr,
            dir,
            logs,
            http,
        }
    }

    pub fn logs(&self) -> Vec<String> {
        self.logs.lock().unwrap().clone()
    }

    /// Log lines parsed as JSON (every line must be JSON).
    pub fn json_logs(&self) -> Vec<Value> {
        self.logs()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }

    /// The log as JSON, once everything logged before this call is written:
    /// a marker request is made and its own line awaited (lines are written
    /// in order, in batches).
    pub async fn settled_logs(&self) -> Vec<Value> {
        let marker = format!("settle-{}", uuid::Uuid::new_v4().simple());
        let request = self
            .request(Method::GET, "/api/v1/monitoring/health")
            .header("x-request-id", &marker);
        self.send(request).await;
        let written = eventually(Duration::from_secs(10), || async {
            self.logs().iter().any(|l| l.contains(&marker))
        })
        .await;
        assert!(written, "the log never caught up");
        self.json_logs()
    }

    /// Sends SIGTERM and waits for the process to exit.
    pub fn terminate(&mut self) -> ExitStatus {
        signal(self.child.id(), "TERM");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("server did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    pub async fn send(&self, request: reqwest::RequestBuilder) -> Reply {
        let response = request.send().await.expect("request");
        let status = response.status();
        let headers = response.headers().clone();
        let text = response.text().await.expect("body");
        let body = serde_json::from_str(&text).unwrap_or(Value::Null);
        Reply {
            status,
            headers,
            body,
            text,
        }
    }

    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, self.url(path))
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Reply {
        let mut r = self.request(Method::GET, path);
        if let Some(token) = token {
            r = r.bearer_auth(token);
        }
        self.send(r).await
    }

    pub async fn post(&self, path: &str, body: Value, token: Option<&str>) -> Reply {
        let mut r = self.request(Method::POST, path).json(&body);
        if let Some(token) = token {
            r = r.bearer_auth(token);
        }
        self.send(r).await
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

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            signal(self.child.id(), "TERM");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

pub fn signal(pid: u32, name: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{name}"))
        .arg(pid.to_string())
        .status();
}

/// Polls `check` every 20 ms until it holds or `limit` passes.
pub async fn eventually<F, Fut>(limit: Duration, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A `redis-server` of the test's own, on a free port, that it can stop and restart.
pub struct PrivateRedis {
    port: u16,
    child: Option<Child>,
}

impl PrivateRedis {
    pub fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = Self { port, child: None };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}
