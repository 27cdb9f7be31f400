//! Endpoint handlers: thin. Each parses its input, asks [`gatehouse_actors::Gatehouse`]
//! and shapes the answer; rules and state live in the actors crate.

pub mod auth;
pub mod monitoring;
pub mod users;

use gatehouse_actors::{Error, Principal};
use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;

use crate::error::ApiError;
use crate::http::{AppState, ReadRequest};

/// The caller behind the request's bearer token, with a live session.
pub async fn authenticate(state: &AppState, req: &ReadRequest) -> Result<Principal, ApiError> {
    Ok(state.gatehouse.authenticate(bearer(req.headers())?).await?)
}

/// The token of an `Authorization: Bearer <token>` header.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let value = headers
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or(Error::InvalidToken)?;
    let (scheme, token) = value.split_once(' ').ok_or(Error::InvalidToken)?;
    let token = token.trim();
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() {
        return Err(Error::InvalidToken.into());
    }
    Ok(token)
}
