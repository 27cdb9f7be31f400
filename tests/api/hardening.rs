//! Regression tests for the hardening findings: each submodule holds the
//! tests of one or two findings, black-box against the real binary. The raw
//! HTTP/1.1 helpers here let a test hold a request half-sent.

mod config;
mod connections;
mod email;
mod openapi;
mod protocol;
mod races;
mod redis;
mod revocation;
mod throttle;
mod timing;

use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::{Builder, Server};

/// A server with the harness's configuration and scrypt's `r` at 1: the
/// suite's binary is a debug build, where a hash at `r = 8` costs some 200 ms;
/// at `r = 1` these tests can make hundreds of logins in seconds.
pub fn server() -> Builder {
    Server::builder().env("GATEHOUSE__PASSWORD__SCRYPT_R", 1)
}

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawReply {
    pub status: u16,
    /// Header names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Value,
    pub text: String,
}

impl RawReply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// A request head for `path`, ending in the blank line; `extra` are whole
/// header lines without their CRLF.
pub fn head(method: &str, path: &str, extra: &[String]) -> String {
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: gatehouse\r\nConnection: close\r\n");
    for line in extra {
        head.push_str(line);
        head.push_str("\r\n");
    }
    head.push_str("\r\n");
    head
}

/// Opens a connection and sends `bytes`.
pub async fn raw_send(s: &Server, bytes: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(s.addr).await.expect("connect");
    stream.write_all(bytes).await.expect("send");
    stream
}

/// Reads one HTTP/1.1 response (head and a `Content-Length` body), failing
/// the test if it does not arrive within `limit`.
pub async fn read_reply(stream: &mut TcpStream, limit: Duration) -> RawReply {
    tokio::time::timeout(limit, read_reply_inner(stream))
        .await
        .unwrap_or_else(|_| panic!("no response within {limit:?}"))
}

async fn read_reply_inner(stream: &mut TcpStream) -> RawReply {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let head_end = loop {
        if let Some(at) = find(&buf, b"\r\n\r\n") {
            break at;
        }
        let n = stream.read(&mut chunk).await.expect("read response");
        assert!(
            n > 0,
            "connection closed before a response head: {:?}",
            String::from_utf8_lossy(&buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let mut lines = head.split("\r\n");
    let status: u16 = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {head}"));
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let length: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = stream.read(&mut chunk).await.expect("read body");
        assert!(n > 0, "connection closed inside the body");
        body.extend_from_slice(&chunk[..n]);
    }
    let text = String::from_utf8_lossy(&body).into_owned();
    RawReply {
        status,
        headers,
        body: serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    }
}

/// Whether the peer closes `stream` (end of file or an error) within
/// `limit`, reading and dropping whatever it sends first.
pub async fn closed_within(stream: &mut TcpStream, limit: Duration) -> bool {
    let mut chunk = [0u8; 4096];
    tokio::time::timeout(limit, async {
        loop {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await
    .is_ok()
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A login name of the test's own (usernames are at most 32 characters).
pub fn unique(prefix: &str) -> String {
    let id = uuid::Uuid::new_v4().simple().to_string();
    format!("{prefix}{}", &id[..8])
}
