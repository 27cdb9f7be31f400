//! A real SMTP server of the test's own that keeps every message it is sent
//! ([`SmtpSink`]: `tests/tools/smtp_sink.py`, on aiosmtpd), and those messages
//! parsed ([`Mail`], with `mail-parser`). The sink can be stopped and started
//! again on the same port, keeping what it received: a relay that is down,
//! then up. Needs the test tools' Python: see [`crate::require_smtp_sink!`].

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mail_parser::{Address, MessageParser, PartType};
use serde_json::Value;
use tempfile::TempDir;

use crate::children::Tracked;

/// How long the sink may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// How often [`SmtpSink::wait_for`] looks at the messages.
const POLL: Duration = Duration::from_millis(20);

/// An SMTP server on `127.0.0.1:`[`port`](Self::port) (plain SMTP, no TLS, no
/// AUTH) that accepts every message and keeps it, in a temporary directory
/// removed with the sink. Dropping it kills the server.
pub struct SmtpSink {
    port: u16,
    python: PathBuf,
    /// `messages/` (what was received) and `sink.log` (the server's stderr).
    dir: TempDir,
    child: Option<Tracked>,
}

impl SmtpSink {
    /// Starts a sink on a free port and waits until it listens. Panics, with
    /// the reason, when it cannot.
    pub fn start() -> Self {
        let python = crate::python::python().unwrap_or_else(|reason| {
            panic!("the SMTP sink needs the test tools' Python ({reason}); see require_smtp_sink!")
        });
        let dir = tempfile::Builder::new()
            .prefix("gatehouse-smtp-sink-")
            .tempdir()
            .unwrap_or_else(|e| panic!("cannot make the SMTP sink's directory: {e}"));
        let mut sink = Self {
            port: crate::free_port(),
            python,
            dir,
            child: None,
        };
        sink.restart();
        sink
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Where the messages are kept: `<seq>.eml` (the data) and `<seq>.json`
    /// (the envelope) for each.
    pub fn dir(&self) -> PathBuf {
        self.dir.path().join("messages")
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("sink.log")
    }

    /// Starts the server (again) on the same port, keeping the messages
    /// received so far, and waits until it listens.
    pub fn restart(&mut self) {
        self.stop();
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log().display()));
        let script = crate::tools_dir().join("smtp_sink.py");
        let mut child = Tracked::spawn(
            Command::new(&self.python)
                .arg(&script)
                .arg(self.port.to_string())
                .arg(self.dir())
                // The sink exits when this pipe closes: it never outlives the test.
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .stderr(log),
            &script.display().to_string(),
        );
        let stdout = child
            .child()
            .stdout
            .take()
            .expect("the sink's stdout is piped");
        self.child = Some(child);
        let (ready, listening) = mpsc::channel();
        std::thread::spawn(move || {
            // Read to the end, so that the sink never blocks on a full pipe.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if line.starts_with("ready ") {
                    let _ = ready.send(());
                }
            }
        });
        // An error here is a timeout, or the sink exiting (closing its stdout).
        if listening.recv_timeout(START_TIMEOUT).is_err() {
            self.stop();
            let log = std::fs::read_to_string(self.log()).unwrap_or_default();
            panic!(
                "the SMTP sink did not start on 127.0.0.1:{}; its log:\n{}",
                self.port,
                log.trim_end()
            );
        }
    }

    /// Kills the server; connections to its port are refused from now on.
    /// What it received is kept.
    pub fn stop(&mut self) {
        self.child = None;
    }

    /// Every message received so far, by all the sink's runs, in the order
    /// they arrived.
    pub fn messages(&self) -> Vec<Mail> {
        let dir = self.dir();
        let entries = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("cannot read the SMTP sink's {}: {e}", dir.display()));
        let mut kept: Vec<(u64, String)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let stem = name.strip_suffix(".eml")?;
                let seq = stem.parse().ok()?;
                Some((seq, stem.to_owned()))
            })
            .collect();
        kept.sort();
        kept.into_iter()
            .map(|(_, stem)| Mail::read(&dir, &stem))
            .collect()
    }

    /// The messages received so far, once there are at least `count` of
    /// them; panics, showing what did arrive, when `limit` passes first.
    /// Blocks the thread: where the sender runs on the same (single-threaded)
    /// runtime as the test, use [`Self::wait_for_async`].
    #[track_caller]
    pub fn wait_for(&self, count: usize, limit: Duration) -> Vec<Mail> {
        let deadline = Instant::now() + limit;
        loop {
            let mails = self.messages();
            if mails.len() >= count {
                return mails;
            }
            if Instant::now() > deadline {
                self.missing(count, limit, &mails);
            }
            std::thread::sleep(POLL);
        }
    }

    /// [`Self::wait_for`] without blocking the runtime's thread.
    pub async fn wait_for_async(&self, count: usize, limit: Duration) -> Vec<Mail> {
        let deadline = Instant::now() + limit;
        loop {
            let mails = self.messages();
            if mails.len() >= count {
                return mails;
            }
            if Instant::now() > deadline {
                self.missing(count, limit, &mails);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    #[track_caller]
    fn missing(&self, count: usize, limit: Duration, mails: &[Mail]) -> ! {
        let got: Vec<String> = mails
            .iter()
            .map(|m| {
                format!(
                    "  {:?} from {} to {:?}",
                    m.subject, m.envelope_from, m.envelope_to
                )
            })
            .collect();
        panic!(
            "the SMTP sink on port {} received {} of {count} messages within {limit:?}:\n{}",
            self.port,
            mails.len(),
            got.join("\n")
        );
    }
}

impl Drop for SmtpSink {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A message the sink received: its envelope, the headers tests look at
/// (decoded), its text and HTML bodies, and the data as it came.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mail {
    /// `MAIL FROM` (empty for the null sender `<>`).
    pub envelope_from: String,
    /// Each `RCPT TO`.
    pub envelope_to: Vec<String>,
    /// The `Subject` header, decoded (empty when absent).
    pub subject: String,
    /// The `From` header's addresses, as `Name <address>` or `address`,
    /// joined with `, ` (empty when absent).
    pub from: String,
    /// The `To` header's addresses, as [`Self::from`].
    pub to: String,
    /// The text/plain body, decoded, if there is one.
    pub text: Option<String>,
    /// The text/html body, decoded, if there is one.
    pub html: Option<String>,
    /// The message as received (RFC 5322).
    pub raw: Vec<u8>,
}

impl Mail {
    fn read(dir: &Path, stem: &str) -> Self {
        let raw_path = dir.join(format!("{stem}.eml"));
        let envelope_path = dir.join(format!("{stem}.json"));
        let raw = std::fs::read(&raw_path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", raw_path.display()));
        let envelope: Value = std::fs::read(&envelope_path)
            .map_err(|e| e.to_string())
            .and_then(|data| serde_json::from_slice(&data).map_err(|e| e.to_string()))
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", envelope_path.display()));
        let envelope_from = envelope["mail_from"].as_str().unwrap_or("").to_owned();
        let envelope_to = envelope["rcpt_tos"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .map(str::to_owned)
            .collect();
        Self::parse(envelope_from, envelope_to, raw)
    }

    /// `raw`, parsed; a message `mail-parser` cannot read at all keeps only
    /// its envelope and `raw`.
    pub fn parse(envelope_from: String, envelope_to: Vec<String>, raw: Vec<u8>) -> Self {
        let (subject, from, to, text, html) = match MessageParser::default().parse(&raw[..]) {
            Some(message) => (
                message.subject().unwrap_or("").to_owned(),
                addresses(message.from()),
                addresses(message.to()),
                message.text_bodies().find_map(|part| match &part.body {
                    PartType::Text(text) => Some(text.to_string()),
                    _ => None,
                }),
                message.html_bodies().find_map(|part| match &part.body {
                    PartType::Html(html) => Some(html.to_string()),
                    _ => None,
                }),
            ),
            None => Default::default(),
        };
        Self {
            envelope_from,
            envelope_to,
            subject,
            from,
            to,
            text,
            html,
            raw,
        }
    }

    /// The first header called `name` (any case), as written, without the
    /// surrounding white space.
    pub fn header(&self, name: &str) -> Option<String> {
        let message = MessageParser::default().parse(&self.raw[..])?;
        message.header_raw(name).map(|v| v.trim().to_owned())
    }
}

/// An address header's addresses, as `Name <address>` or `address`.
fn addresses(header: Option<&Address<'_>>) -> String {
    let Some(header) = header else {
        return String::new();
    };
    header
        .iter()
        .map(|addr| match (addr.name(), addr.address()) {
            (Some(name), Some(address)) => format!("{name} <{address}>"),
            (None, Some(address)) => address.to_owned(),
            (Some(name), None) => name.to_owned(),
            (None, None) => String::new(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
