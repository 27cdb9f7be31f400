//! `/api/v1/users/me*`: the caller's own account and sessions.

use gatehouse_actors::model::ProfileChange;
use hyper::StatusCode;

use crate::error::ApiError;
use crate::http::body;
use crate::http::{AppState, Ctx, HttpResponse, ReadRequest, empty, json};
use crate::wire::{self, SessionBody, SessionList, UserBody};

pub async fn me(state: &AppState, _req: ReadRequest, ctx: Ctx) -> Result<HttpResponse, ApiError> {
    let user = state.gatehouse.accounts.me(ctx.principal()?).await?;
    json(StatusCode::OK, &UserBody::from(&user))
}

pub async fn update(
    state: &AppState,
    req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let wire::UpdateProfileRequest { email, username } = body::decode(&req)?;
    let user = state
        .gatehouse
        .accounts
        .update_profile(
            ctx.principal()?,
            ProfileChange {
                email,
                username,
                mail: None,
            },
        )
        .await?;
    json(StatusCode::OK, &UserBody::from(&user))
}

pub async fn change_password(
    state: &AppState,
    req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let wire::ChangePasswordRequest {
        current_password,
        new_password,
    } = body::decode(&req)?;
    let (current, new) = body::both(
        (current_password, "current_password"),
        (new_password, "new_password"),
    )?;
    state
        .gatehouse
        .accounts
        .change_password(ctx.principal()?, current, new)
        .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub async fn deactivate(
    state: &AppState,
    _req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    state
        .gatehouse
        .accounts
        .deactivate(ctx.principal()?)
        .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub async fn sessions(
    state: &AppState,
    _req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let sessions = state.gatehouse.sessions.list(ctx.principal()?).await?;
    let body = SessionList {
        sessions: sessions.iter().map(SessionBody::from).collect(),
    };
    json(StatusCode::OK, &body)
}

pub async fn delete_session(
    state: &AppState,
    _req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let id = ctx.param.as_deref().ok_or(ApiError::NotFound)?;
    state
        .gatehouse
        .sessions
        .revoke_session(ctx.principal()?, id)
        .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}
