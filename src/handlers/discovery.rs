//! `/.well-known/*`: what other services need to trust Gatehouse's tokens
//! without sharing a secret. Never rate limited, always open.

use hyper::StatusCode;
use hyper::header::{CACHE_CONTROL, HeaderValue};

use crate::error::ApiError;
use crate::http::{AppState, Ctx, HttpResponse, ReadRequest, respond};

/// How long a verifier may cache the key set: a key is published at least
/// ten minutes before it signs, so five minutes never misses a new `kid`.
const JWKS_CACHE: &str = "public, max-age=300";

pub async fn jwks(
    state: &AppState,
    _req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let keys = state.gatehouse.sessions.tokens.jwks()?;
    let mut response = respond(StatusCode::OK, "application/json", keys);
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(JWKS_CACHE));
    Ok(response)
}

pub async fn metadata(
    state: &AppState,
    _req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let mut response = respond(StatusCode::OK, "application/json", state.metadata.clone());
    response
        .headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static(JWKS_CACHE));
    Ok(response)
}
