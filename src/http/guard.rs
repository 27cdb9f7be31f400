//! The checks a route's guard makes before its handler runs: a live user
//! session behind a bearer token, or the monitoring token.

use gatehouse_actors::model::AdminKey;
use gatehouse_actors::services::admin::Scope;
use gatehouse_actors::{Error, Principal};
use hyper::HeaderMap;
use hyper::header::AUTHORIZATION;
use secrecy::ExposeSecret;
use subtle::ConstantTimeEq;

use super::AppState;
use crate::error::ApiError;

/// The caller behind the request's bearer token, with a live session.
pub async fn user(state: &AppState, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let token = bearer(headers)?;
    Ok(state.gatehouse.sessions.authenticate(token).await?)
}

/// The admin key behind the request's bearer token, if it has `scope`.
pub async fn admin(
    state: &AppState,
    headers: &HeaderMap,
    scope: Scope,
) -> Result<AdminKey, ApiError> {
    let key = bearer(headers)?;
    Ok(state.gatehouse.admin.authorize(key, scope).await?)
}

/// Refuses a request without the monitoring token, when one is configured.
/// The comparison takes the same time wherever the first difference is.
pub fn monitoring_token(state: &AppState, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(expected) = &state.monitoring_token else {
        return Ok(());
    };
    let given = bearer(headers)?;
    if bool::from(given.as_bytes().ct_eq(expected.expose_secret().as_bytes())) {
        Ok(())
    } else {
        Err(Error::InvalidToken.into())
    }
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
