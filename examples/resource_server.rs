//! A service of your own that trusts Gatehouse's access tokens through the
//! published keys alone: no shared secret, no call to Gatehouse per request.
//!
//! ```sh
//! GATEHOUSE_URL=http://127.0.0.1:8080 LISTEN=127.0.0.1:9090 cargo run --example resource_server
//! curl -s 127.0.0.1:9090/hello -H "authorization: Bearer $TOKEN"
//! ```
//!
//! It fetches `{GATEHOUSE_URL}/.well-known/jwks.json`, keeps it for the
//! `max-age` Gatehouse sends (Gatehouse publishes a key ten minutes before it
//! signs with it, so that is safe), and fetches it again early when a token
//! names a `kid` it does not know (at most every `REFETCH_AFTER_S` seconds,
//! default 10, so garbage tokens cannot make it hammer Gatehouse). A token
//! passes when its signature checks with the key its `kid` names, with the algorithm that key is for,
//! and `iss`, `aud`, `exp`, `nbf` and the token kind are right.
//!
//! What a JWKS alone cannot tell is whether the session was revoked since the
//! token was issued: that needs Gatehouse's introspection endpoint. Keep
//! access tokens short-lived (`auth.access_token_ttl_s`) where that matters.

#![allow(
    clippy::disallowed_methods,
    reason = "a service of its own: it keeps time with std, not Gatehouse's clock"
)]

use std::collections::HashMap;
use std::convert::Infallible;
use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::sync::RwLock;

/// What this service reads of a Gatehouse access token.
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    #[serde(default)]
    roles: Vec<String>,
    token_use: String,
}

/// The keys as last fetched.
struct KeySet {
    keys: HashMap<String, (Algorithm, DecodingKey)>,
    fetched: Instant,
    max_age: Duration,
}

struct Verifier {
    jwks_url: String,
    issuer: String,
    audience: String,
    http: reqwest::Client,
    /// The least time between two fetches made because of an unknown `kid`.
    refetch_after: Duration,
    keys: RwLock<Option<KeySet>>,
}

impl Verifier {
    /// Fetches the key set, keeping it for the `max-age` it came with.
    async fn fetch(&self) -> Result<KeySet, String> {
        let response = self
            .http
            .get(&self.jwks_url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        let max_age = response
            .headers()
            .get(CACHE_CONTROL)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(',').find_map(|d| d.trim().strip_prefix("max-age=")))
            .and_then(|s| s.parse().ok())
            .map_or(Duration::ZERO, Duration::from_secs);
        let set: JwkSet = response.json().await.map_err(|e| e.to_string())?;
        let keys = set
            .keys
            .iter()
            .filter_map(|jwk: &Jwk| {
                let kid = jwk.common.key_id.clone()?;
                let alg = Algorithm::from_str(&jwk.common.key_algorithm?.to_string()).ok()?;
                Some((kid, (alg, DecodingKey::from_jwk(jwk).ok()?)))
            })
            .collect();
        Ok(KeySet {
            keys,
            fetched: Instant::now(),
            max_age,
        })
    }

    /// The key `kid` names, fetching the set again if it is stale, or if
    /// `kid` is new to it (but not too often).
    async fn key(&self, kid: &str) -> Option<(Algorithm, DecodingKey)> {
        if let Some(answer) = self.cached(self.keys.read().await.as_ref(), kid) {
            return answer;
        }
        let mut cached = self.keys.write().await;
        // Another request may have fetched while this one waited.
        if let Some(answer) = self.cached(cached.as_ref(), kid) {
            return answer;
        }
        match self.fetch().await {
            Ok(set) => *cached = Some(set),
            Err(e) => {
                eprintln!("cannot fetch {}: {e}", self.jwks_url);
                // Keep verifying with the keys we have; try again in a while.
                if let Some(set) = cached.as_mut() {
                    set.fetched = Instant::now();
                    set.max_age = self.refetch_after;
                }
            }
        }
        cached.as_ref()?.keys.get(kid).cloned()
    }

    /// What the cached set answers for `kid`, or `None` when it must be
    /// fetched again: it is stale, or `kid` is new and the last fetch is not
    /// recent.
    fn cached(&self, set: Option<&KeySet>, kid: &str) -> Option<Option<(Algorithm, DecodingKey)>> {
        let set = set?;
        let age = set.fetched.elapsed();
        match set.keys.get(kid) {
            Some(key) if age < set.max_age => Some(Some(key.clone())),
            None if age < self.refetch_after => Some(None),
            _ => None,
        }
    }

    async fn verify(&self, token: &str) -> Option<Claims> {
        let header = jsonwebtoken::decode_header(token).ok()?;
        let (alg, key) = self.key(header.kid.as_deref()?).await?;
        if header.alg != alg || header.typ.as_deref() != Some("JWT") {
            return None;
        }
        let mut validation = Validation::new(alg);
        validation.set_issuer(&[&self.issuer]);
        validation.set_audience(&[&self.audience]);
        validation.set_required_spec_claims(&["exp", "nbf", "iss", "aud", "sub"]);
        validation.validate_nbf = true;
        let claims = jsonwebtoken::decode::<Claims>(token, &key, &validation)
            .ok()?
            .claims;
        (claims.token_use == "access").then_some(claims)
    }
}

fn answer(status: StatusCode, body: serde_json::Value) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn hello(
    verifier: Arc<Verifier>,
    req: Request<hyper::body::Incoming>,
) -> Response<Full<Bytes>> {
    let token = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    match token {
        Some(token) => match verifier.verify(token).await {
            Some(claims) => answer(
                StatusCode::OK,
                serde_json::json!({"hello": claims.sub, "roles": claims.roles}),
            ),
            None => answer(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "invalid_token"}),
            ),
        },
        None => answer(
            StatusCode::UNAUTHORIZED,
            serde_json::json!({"error": "no token"}),
        ),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let var =
        |name: &str, default: &str| std::env::var(name).unwrap_or_else(|_| default.to_owned());
    let gatehouse = var("GATEHOUSE_URL", "http://127.0.0.1:8080");
    let verifier = Arc::new(Verifier {
        jwks_url: format!("{}/.well-known/jwks.json", gatehouse.trim_end_matches('/')),
        issuer: var("ISSUER", "gatehouse"),
        audience: var("AUDIENCE", "gatehouse-clients"),
        http: reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()?,
        refetch_after: Duration::from_secs(var("REFETCH_AFTER_S", "10").parse()?),
        keys: RwLock::new(None),
    });
    let listener = TcpListener::bind(var("LISTEN", "127.0.0.1:9090")).await?;
    eprintln!("listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        let verifier = Arc::clone(&verifier);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let verifier = Arc::clone(&verifier);
                async move { Ok::<_, Infallible>(hello(verifier, req).await) }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
