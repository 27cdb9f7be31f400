//! `/api/v1/admin/*`: what operators and resource servers do with an admin key.

use gatehouse_actors::Error;
use gatehouse_actors::model::{AdminChange, AdminKey};
use gatehouse_actors::services::admin;
use gatehouse_actors::token_issuer::ring::KeyOp;
use hyper::StatusCode;
use secrecy::ExposeSecret;

use crate::error::ApiError;
use crate::http::body;
use crate::http::{AppState, Ctx, HttpResponse, ReadRequest, empty, json};
use crate::wire::{
    self, AdminUserBody, AdminUserPageBody, AuditPageBody, IntrospectionBody, SigningKeyBody,
    SigningKeyList,
};

/// The admin key of a route guarded for admins.
fn key(ctx: &Ctx) -> Result<&AdminKey, ApiError> {
    ctx.admin
        .as_ref()
        .ok_or(ApiError::Domain(Error::InvalidToken))
}

/// The `{id}` of a user route.
fn user_id(ctx: &Ctx) -> Result<&str, ApiError> {
    ctx.param.as_deref().ok_or(ApiError::NotFound)
}

/// Users whose email or username starts with `query`, a page at a time.
pub async fn users(
    state: &AppState,
    req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let asked: wire::UserSearchQuery = body::form(req.uri().query().unwrap_or("").as_bytes())?;
    let query = asked.query.as_deref().unwrap_or("");
    let admin = &state.gatehouse.admin;
    let page = admin
        .users(query, asked.limit, asked.cursor.as_deref())
        .await?;
    json(StatusCode::OK, &AdminUserPageBody::from(&page))
}

pub async fn user(state: &AppState, _req: ReadRequest, ctx: Ctx) -> Result<HttpResponse, ApiError> {
    let found = state.gatehouse.admin.user(user_id(&ctx)?).await?;
    json(StatusCode::OK, &AdminUserBody::from(&found))
}

async fn change_user(
    state: &AppState,
    ctx: &Ctx,
    change: AdminChange,
) -> Result<HttpResponse, ApiError> {
    let admin = &state.gatehouse.admin;
    admin.change_user(user_id(ctx)?, change, key(ctx)?).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub async fn deactivate(
    state: &AppState,
    _req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    change_user(state, &ctx, AdminChange::Deactivate).await
}

pub async fn reactivate(
    state: &AppState,
    _req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    change_user(state, &ctx, AdminChange::Reactivate).await
}

pub async fn logout(
    state: &AppState,
    _req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    change_user(state, &ctx, AdminChange::Logout).await
}

/// Erasure: the user and everything personal goes.
pub async fn erase(
    state: &AppState,
    _req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    change_user(state, &ctx, AdminChange::Erase).await
}

pub async fn remove_mfa(
    state: &AppState,
    _req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let admin = &state.gatehouse.admin;
    admin.remove_mfa(user_id(&ctx)?, key(&ctx)?).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub async fn unlock(
    state: &AppState,
    _req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let admin = &state.gatehouse.admin;
    admin.unlock(user_id(&ctx)?, key(&ctx)?).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub async fn password_reset(
    state: &AppState,
    _req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let admin = &state.gatehouse.admin;
    admin.send_reset(user_id(&ctx)?, key(&ctx)?).await?;
    Ok(empty(StatusCode::ACCEPTED))
}

/// Replaces the user's roles; tokens issued from then on carry them.
pub async fn set_roles(
    state: &AppState,
    req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let wire::RolesRequest { roles } = body::decode(&req)?;
    let roles = roles.ok_or_else(|| body::missing(&[("roles", true)]))?;
    let roles = admin::checked_roles(roles)?;
    let id = user_id(&ctx)?;
    let admin = &state.gatehouse.admin;
    admin
        .change_user(id, AdminChange::SetRoles(roles), key(&ctx)?)
        .await?;
    let found = admin.user(id).await?;
    json(StatusCode::OK, &AdminUserBody::from(&found))
}

/// Stored security events, newest first, a page at a time.
pub async fn audit(
    state: &AppState,
    req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let asked: wire::AuditQuery = body::form(req.uri().query().unwrap_or("").as_bytes())?;
    let since = asked
        .since
        .map(|at| {
            time::OffsetDateTime::parse(&at, &time::format_description::well_known::Rfc3339)
                .map(|at| i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MIN))
                .map_err(|_| Error::validation("since", "must be an RFC 3339 time"))
        })
        .transpose()?;
    let filter = admin::AuditFilter {
        user_id: asked.user_id,
        event: asked.event,
        since,
        limit: asked.limit,
        cursor: asked.cursor,
    };
    let page = state.gatehouse.admin.audit(filter).await?;
    json(StatusCode::OK, &AuditPageBody::from(&page))
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
