//! A real browser for tests that look at pages as a person would: headless
//! Chromium in a phone-sized window, driven over WebDriver (`chromedriver`,
//! of the test's own, on a free port) with `fantoccini` ([`Browser`]), and
//! screenshots of what it shows under `target/test-output/screenshots`.
//! Needs the programs: see [`crate::require_browser!`].

use std::fs::File;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use fantoccini::{Client, ClientBuilder};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};
use tempfile::TempDir;

/// The environment variable naming the `chromedriver` program.
pub const CHROMEDRIVER: &str = "GATEHOUSE_TEST_CHROMEDRIVER";
/// The environment variable naming the Chromium program.
pub const CHROMIUM: &str = "GATEHOUSE_TEST_CHROMIUM";

/// The viewport's size in CSS pixels (width, height): a phone's.
pub const PHONE_WINDOW: (u32, u32) = (390, 844);

/// How long chromedriver may take to answer, and Chromium to open.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The pids of the chromedrivers now running, each leading a process group
/// with its browsers, for [`kill_all`].
static RUNNING: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Kills every chromedriver still running and its browsers (before the
/// process exits without running destructors).
pub(crate) fn kill_all() {
    let groups = std::mem::take(&mut *RUNNING.lock().unwrap_or_else(|e| e.into_inner()));
    for group in groups {
        kill_group(group);
    }
}

/// `$var`, or `default` where it is unset or empty.
fn program(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(default), PathBuf::from)
}

/// The chromedriver to run: `GATEHOUSE_TEST_CHROMEDRIVER`, default `/usr/bin/chromedriver`.
pub fn chromedriver() -> PathBuf {
    program(CHROMEDRIVER, "/usr/bin/chromedriver")
}

/// The Chromium chromedriver opens: `GATEHOUSE_TEST_CHROMIUM`, default `/usr/bin/chromium`.
pub fn chromium() -> PathBuf {
    program(CHROMIUM, "/usr/bin/chromium")
}

/// Why no [`Browser`] can be started, or `None` when one can.
pub(crate) fn unavailable() -> Option<String> {
    [(chromedriver(), CHROMEDRIVER), (chromium(), CHROMIUM)]
        .into_iter()
        .find(|(path, _)| !path.is_file())
        .map(|(path, var)| {
            format!(
                "{} is not installed (set {var} to where it is)",
                path.display()
            )
        })
}

/// A headless Chromium of the test's own, in a [`PHONE_WINDOW`], driven
/// through [`Self::client`]. Dropping it ends the session, quits the browser
/// and kills chromedriver; [`Self::close`] does so more gracefully from an
/// async test. Needs a Tokio runtime (the test's).
pub struct Browser {
    port: u16,
    client: Option<Client>,
    driver: Option<Child>,
    /// chromedriver's log (for the panics that say why it failed), and the
    /// temporary files of chromedriver and Chromium.
    dir: TempDir,
}

impl Browser {
    /// Starts chromedriver on a free port, waits until it answers, and opens
    /// a session in a new headless Chromium. Panics, with chromedriver's log,
    /// when it cannot.
    pub async fn start() -> Self {
        if let Some(reason) = unavailable() {
            panic!("cannot start a browser: {reason}; see require_browser!");
        }
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-browser-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot make the browser's directory: {e}"));
        let log = File::create(dir.path().join("chromedriver.log"))
            .and_then(|f| Ok((f.try_clone()?, f)))
            .unwrap_or_else(|e| panic!("cannot make chromedriver's log: {e}"));
        let port = crate::free_port();
        let driver = Command::new(chromedriver())
            .arg(format!("--port={port}"))
            // Its profiles and Chromium's own temporary files go in the
            // browser's directory, removed with it however they exit.
            .env("TMPDIR", dir.path())
            .stdin(Stdio::null())
            .stdout(log.0)
            .stderr(log.1)
            // A group of its own, with the browsers it starts, killed whole.
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", chromedriver().display()));
        RUNNING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(driver.id());
        // Made before waiting, so that a panic below kills chromedriver.
        let mut browser = Self {
            port,
            client: None,
            driver: Some(driver),
            dir,
        };
        browser.await_driver().await;
        let url = browser.webdriver_url();
        let connected = tokio::time::timeout(
            START_TIMEOUT,
            ClientBuilder::new(HttpConnector::new())
                .capabilities(capabilities(&chromium()))
                .connect(&url),
        )
        .await;
        match connected {
            Ok(Ok(client)) => browser.client = Some(client),
            Ok(Err(e)) => browser.fail(&format!("chromedriver did not open Chromium: {e}")),
            Err(_) => browser.fail(&format!(
                "chromedriver did not open Chromium within {START_TIMEOUT:?}"
            )),
        }
        browser
    }

    /// The WebDriver session.
    pub fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a browser has its session until it is closed")
    }

    /// Where chromedriver listens: `http://127.0.0.1:PORT`.
    pub fn webdriver_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Saves a screenshot of the window as
    /// `<workspace>/target/test-output/screenshots/<name>.png`, and returns
    /// its path. `name` is a file name, without a directory or an extension.
    pub async fn screenshot(&self, name: &str) -> PathBuf {
        assert!(
            !name.is_empty()
                && name != "."
                && name != ".."
                && !name.contains(['/', '\\'])
                && !name.ends_with(".png"),
            "a screenshot's name is a file name without `/` or `.png`, not {name:?}"
        );
        let png = self
            .client()
            .screenshot()
            .await
            .unwrap_or_else(|e| panic!("take a screenshot: {e}"));
        let dir = crate::python::root().join("target/test-output/screenshots");
        std::fs::create_dir_all(&dir)
            .unwrap_or_else(|e| panic!("cannot make {}: {e}", dir.display()));
        let dir = dir.canonicalize().unwrap_or(dir);
        let path = dir.join(format!("{name}.png"));
        std::fs::write(&path, png)
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
        path
    }

    /// Ends the session (Chromium quits) and stops chromedriver.
    pub async fn close(mut self) {
        if let Some(client) = self.client.take() {
            let _ = client.close().await;
        }
    }

    /// Waits until chromedriver says it is ready for a session.
    async fn await_driver(&mut self) {
        let status = format!("{}/status", self.webdriver_url());
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(2))
            .build()
            .expect("an HTTP client");
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(Ok(Some(exit))) = self.driver.as_mut().map(Child::try_wait) {
                self.fail(&format!("chromedriver exited ({exit})"));
            }
            if let Ok(response) = http.get(&status).send().await
                && let Ok(body) = response.json::<Value>().await
                && body["value"]["ready"] == true
            {
                return;
            }
            if Instant::now() > deadline {
                self.fail(&format!(
                    "chromedriver did not answer within {START_TIMEOUT:?}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops everything, and panics with `what` and chromedriver's log.
    fn fail(&mut self, what: &str) -> ! {
        self.shut_down();
        let log =
            std::fs::read_to_string(self.dir.path().join("chromedriver.log")).unwrap_or_default();
        panic!("{what}; chromedriver's log:\n{}", log.trim_end());
    }

    /// Quits the browsers and chromedriver, and kills what is left of them.
    fn shut_down(&mut self) {
        // Dropping the last handle asks for the session's end, on the runtime,
        // maybe too late: chromedriver is asked to quit its sessions as well.
        drop(self.client.take());
        let Some(mut driver) = self.driver.take() else {
            return;
        };
        let at = SocketAddr::from(([127, 0, 0, 1], self.port));
        if let Ok(mut stream) = TcpStream::connect_timeout(&at, Duration::from_secs(1)) {
            // chromedriver's own command: quit every session, then exit.
            let _ = stream.set_read_timeout(Some(Duration::from_secs(10)));
            let request = format!(
                "GET /shutdown HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nConnection: close\r\n\r\n",
                self.port
            );
            if stream.write_all(request.as_bytes()).is_ok() {
                let _ = stream.read_to_end(&mut Vec::new());
            }
            // It has exited once its port is closed.
            let deadline = Instant::now() + Duration::from_secs(5);
            while TcpStream::connect_timeout(&at, Duration::from_millis(200)).is_ok()
                && Instant::now() < deadline
            {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // Before `wait`: the group's id cannot be reused while it is unreaped.
        let pid = driver.id();
        kill_group(pid);
        let _ = driver.kill();
        let _ = driver.wait();
        RUNNING
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|&p| p != pid);
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// What chromedriver is asked for: headless Chromium in a phone's window.
fn capabilities(chromium: &Path) -> fantoccini::wd::Capabilities {
    let (width, height) = PHONE_WINDOW;
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        json!({
            "binary": chromium.to_string_lossy(),
            "args": [
                "--headless=new",
                // Tests run as root in containers, where the sandbox cannot.
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                // Chromium makes no window narrower than 500 px: the phone's
                // viewport is the emulated device's below.
                format!("--window-size={width},{height}"),
            ],
            // A phone: its viewport, `<meta name="viewport">` honoured, touch.
            // One device pixel per CSS pixel, so a screenshot is as wide as
            // the viewport.
            "mobileEmulation": {
                "deviceMetrics": {
                    "width": width,
                    "height": height,
                    "pixelRatio": 1,
                    "mobile": true,
                    "touch": true,
                },
            },
        }),
    );
    capabilities
}

/// Sends SIGKILL to every process in group `group`.
fn kill_group(group: u32) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{group}")])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
