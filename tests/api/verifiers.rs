//! Other services can trust Gatehouse's tokens through the JWKS alone: the
//! example resource server (our own code, refetching on an unknown `kid`)
//! and PyJWT's `PyJWKClient` (an independent implementation) verify tokens
//! of two instances across a rotation, and refuse forgeries.

use std::process::Stdio;
use std::time::{Duration, Instant};

use gatehouse_testkit as testkit;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use crate::harness::{DataDir, Server, eventually};
use crate::signing::{keys, lines, part, tokens_for, with_alg};

/// A verifier process that reads a token per line and answers a JSON line.
struct Pyjwt {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl Pyjwt {
    /// A client of `gatehouse`'s JWKS that caches it for `max_age`.
    fn start(python: &std::path::Path, gatehouse: &Server, max_age: Duration) -> Self {
        let mut child = Command::new(python)
            .arg(testkit::tools_dir().join("verify_with_pyjwt.py"))
            .arg(gatehouse.url("/.well-known/jwks.json"))
            .args(["gatehouse", "gatehouse-clients"])
            .arg(max_age.as_secs_f64().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("run the PyJWT verifier");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Self {
            _child: child,
            stdin,
            stdout,
        }
    }

    async fn verify(&mut self, token: &str) -> Value {
        self.stdin
            .write_all(format!("{token}\n").as_bytes())
            .await
            .unwrap();
        self.stdin.flush().await.unwrap();
        let line = tokio::time::timeout(Duration::from_secs(10), self.stdout.next_line())
            .await
            .expect("PyJWT answers within 10 s")
            .unwrap()
            .expect("PyJWT still running");
        serde_json::from_str(&line).unwrap()
    }
}

/// A token of `s` once it signs with `kid` (within a second of the change).
async fn signed_with(s: &Server, kid: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let (token, _) = tokens_for(s).await;
        if part(&token, 0)["kid"] == kid {
            return token;
        }
        assert!(
            Instant::now() < deadline,
            "{kid} does not sign within a second"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `token` with one character in the middle of its signature changed.
fn tampered(token: &str) -> String {
    let at = token.rfind('.').unwrap() + 20;
    let mut bytes = token.as_bytes().to_vec();
    bytes[at] = if bytes[at] == b'A' { b'B' } else { b'A' };
    String::from_utf8(bytes).unwrap()
}

/// How long the PyJWT client caches the key set in the rotation test: the
/// JWKS `max-age` (300 s) and the next key's lead (600 s) scaled down, as if
/// those minutes had passed.
const SCALED_MAX_AGE: Duration = Duration::from_secs(1);

#[tokio::test]
async fn pyjwt_honouring_max_age_verifies_tokens_of_two_instances_across_a_rotation() {
    let Some(python) = testkit::python_tools() else {
        return;
    };
    let dir = DataDir::new();
    let a = with_alg("EdDSA").dir(&dir).start();
    let b = with_alg("EdDSA").dir(&dir).start();
    // One client for the whole test: its cached key set lives across the
    // rotation. PyJWT fetches again for an unknown kid only 30 s after its
    // last fetch, so within this test every kid must be known in time.
    let mut pyjwt = Pyjwt::start(&python, &a, SCALED_MAX_AGE);
    let (before, _) = a.user("pyjwt").await;
    let (from_b, _) = b.user("pyjwt2").await;
    for token in [&before, &from_b] {
        let answer = pyjwt.verify(token).await;
        assert_eq!(answer["ok"], true, "{answer}");
        assert_eq!(answer["kid"], part(token, 0)["kid"]);
    }

    let next = lines(&keys(&dir, "EdDSA", &["rotate"]))[0]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    // The client's max-age passes before the next key signs (as 300 s pass
    // before 600 s do): it fetches the set, now with the next key, on its own.
    tokio::time::sleep(SCALED_MAX_AGE + Duration::from_millis(200)).await;
    assert_eq!(pyjwt.verify(&before).await["ok"], true);

    lines(&keys(&dir, "EdDSA", &["rotate", "--now"]));
    for s in [&a, &b] {
        let after = signed_with(s, &next).await;
        let answer = pyjwt.verify(&after).await;
        assert_eq!(
            (&answer["ok"], &answer["kid"]),
            (&true.into(), &next.as_str().into()),
            "{answer}"
        );
    }
    // Tokens of the retired key still verify; tampered ones do not.
    assert_eq!(pyjwt.verify(&before).await["ok"], true);
    assert_eq!(pyjwt.verify(&tampered(&before)).await["ok"], false);

    // ES256 too, from an instance of its own.
    let es = with_alg("ES256").start();
    let mut pyjwt_es = Pyjwt::start(&python, &es, Duration::from_secs(300));
    let (token, _) = es.user("pyjwtes").await;
    let answer = pyjwt_es.verify(&token).await;
    assert_eq!(answer["ok"], true, "{answer}");
}

/// The example's binary, which `cargo test` builds beside the tests.
fn example_binary() -> Option<std::path::PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let path = exe.parent()?.parent()?.join("examples/resource_server");
    if path.exists() {
        return Some(path);
    }
    let reason = "the resource_server example is not built (cargo test builds it; \
                  cargo test --test api alone does not: run cargo build --example resource_server)";
    assert!(!testkit::services_required(), "{reason}");
    eprintln!("skipped: {reason}");
    None
}

/// The example resource server, trusting the Gatehouse at `gatehouse`.
struct ResourceServer {
    _child: Child,
    url: String,
}

impl ResourceServer {
    async fn start(binary: &std::path::Path, gatehouse: &Server) -> Self {
        let listen = format!("127.0.0.1:{}", testkit::free_port());
        let child = Command::new(binary)
            .env("GATEHOUSE_URL", gatehouse.url(""))
            .env("LISTEN", &listen)
            .env("REFETCH_AFTER_S", "0")
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("run the example");
        let url = format!("http://{listen}/hello");
        let up = eventually(Duration::from_secs(10), || async {
            tokio::net::TcpStream::connect(&listen).await.is_ok()
        })
        .await;
        assert!(up, "the example does not listen on {listen}");
        Self { _child: child, url }
    }

    async fn hello(&self, token: &str) -> (u16, Value) {
        let r = reqwest::Client::new()
            .get(&self.url)
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        (r.status().as_u16(), r.json().await.unwrap())
    }
}

#[tokio::test]
async fn the_example_resource_server_trusts_tokens_through_the_jwks_alone() {
    let Some(binary) = example_binary() else {
        return;
    };
    let dir = DataDir::new();
    let a = with_alg("EdDSA").dir(&dir).start();
    let b = with_alg("EdDSA").dir(&dir).start();
    let service = ResourceServer::start(&binary, &a).await;
    let (token, _) = b.user("example").await;
    let (status, body) = service.hello(&token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["hello"], part(&token, 1)["sub"]);

    // A key it has never seen (rotated in at once): it fetches the set again.
    let now = lines(&keys(&dir, "EdDSA", &["rotate", "--now"]))[0]["kid"]
        .as_str()
        .unwrap()
        .to_owned();
    let fresh = signed_with(&a, &now).await;
    assert_eq!(service.hello(&fresh).await.0, 200);
    assert_eq!(
        service.hello(&token).await.0,
        200,
        "the retired key still verifies"
    );

    // Forgeries.
    assert_eq!(service.hello(&tampered(&fresh)).await.0, 401);
    assert_eq!(service.hello("not.a.token").await.0, 401);
}
