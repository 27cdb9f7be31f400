//! `/api/v1/admin/*`: what operators and resource servers do with an admin key.

use gatehouse_actors::Error;
use gatehouse_actors::model::AdminKey;
use gatehouse_actors::token_issuer::ring::KeyOp;
use hyper::StatusCode;
use secrecy::ExposeSecret;

use crate::error::ApiError;
use crate::http::body;
use crate::http::{AppState, Ctx, HttpResponse, ReadRequest, empty, json};
use crate::wire::{self, IntrospectionBody, SigningKeyBody, SigningKeyList};

/// The admin key of a route guarded for admins.
fn key(ctx: &Ctx) -> Result<&AdminKey, ApiError> {
    ctx.admin
        .as_ref()
        .ok_or(ApiError::Domain(Error::InvalidToken))
}

pub async fn keys(
    state: &AppState,
    _req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let keys = state.gatehouse.admin.keys().await?;
    let body = SigningKeyList {
        keys: keys.iter().map(SigningKeyBody::from).collect(),
    };
    json(StatusCode::OK, &body)
}

/// A rotation, as `gatehouse keys rotate [--now]`: the key it brought forward.
pub async fn rotate_keys(
    state: &AppState,
    req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let wire::RotateKeysRequest { now } = match req.body().is_empty() {
        true => wire::RotateKeysRequest::default(),
        false => body::decode(&req)?,
    };
    let op = KeyOp::Rotate {
        now: now.unwrap_or(false),
    };
    let shown = state.gatehouse.admin.change_keys(op, key(&ctx)?).await?;
    let shown = shown.ok_or(Error::Internal("a rotation brought no key forward".into()))?;
    json(StatusCode::OK, &SigningKeyBody::from(&shown))
}

pub async fn revoke_key(
    state: &AppState,
    _req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let kid = ctx.param.clone().ok_or(ApiError::NotFound)?;
    state
        .gatehouse
        .admin
        .change_keys(KeyOp::Revoke { kid }, key(&ctx)?)
        .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

/// RFC 7662: whether the token is valid now.
pub async fn introspect(
    state: &AppState,
    req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let wire::IntrospectRequest { token } = body::decode(&req)?;
    let token = token.ok_or_else(|| body::missing(&[("token", true)]))?;
    let claims = state
        .gatehouse
        .admin
        .introspect(token.expose_secret())
        .await?;
    json(StatusCode::OK, &IntrospectionBody::from(claims.as_ref()))
}
