//! A server under test: a program (the `gatehouse` binary, whose path the
//! caller gives) spawned with a [`DataDir`], bound to a port it reports in a
//! `listening on ADDR` log line, and spoken to over HTTP.
//!
//! Each [`Server`] is its own process. Its stderr (the JSON log) is captured
//! line by line so tests can assert on what operators would read. Dropping a
//! server sends SIGTERM and waits for it.

use std::ffi::OsString;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reqwest::header::HeaderMap;
use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::DataDir;

/// What to start: the program, its arguments and environment, and its data.
pub struct Builder {
    program: PathBuf,
    args: Vec<OsString>,
    removed: Vec<String>,
    env: Vec<(String, String)>,
    dir: DataDir,
}

impl Builder {
    /// `program`, with a fresh [`DataDir`]. The process gets the data's
    /// configuration ([`DataDir::env`]) first, then every [`Self::env`] in order.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Self {
            program: program.into(),
            args: Vec::new(),
            removed: Vec::new(),
            env: Vec::new(),
            dir: DataDir::new(),
        }
    }

    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Sets one variable (for Gatehouse, a key as `GATEHOUSE__SECTION__KEY`).
    pub fn env(mut self, key: &str, value: impl ToString) -> Self {
        self.env.push((key.to_owned(), value.to_string()));
        self
    }

    /// Removes a variable the test process has from the server's environment.
    pub fn env_remove(mut self, key: &str) -> Self {
        self.removed.push(key.to_owned());
        self
    }

    /// Runs on `dir` (shared with other servers) instead of a fresh one.
    pub fn dir(mut self, dir: &DataDir) -> Self {
        self.dir = dir.clone();
        self
    }

    pub fn start(self) -> Server {
        Server::spawn(self)
    }
}

/// A running server.
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

impl Server {
    fn spawn(builder: Builder) -> Self {
        let Builder {
            program,
            args,
            removed,
            env,
            dir,
        } = builder;
        let mut command = Command::new(&program);
        command
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for key in removed {
            command.env_remove(key);
        }
        for (k, v) in dir.env().into_iter().chain(env) {
            command.env(k, v);
        }
        let mut child = command
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", program.display()));
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

    pub fn pid(&self) -> u32 {
        self.child.id()
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

/// Sends signal `name` (`TERM`, `KILL`, `HUP`, ...) to `pid`, with `kill`.
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
