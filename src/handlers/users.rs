//! `/api/v1/users/me*`: the caller's own account, sessions and second factor.

use gatehouse_actors::model::ProfileChange;
use hyper::StatusCode;

use crate::error::ApiError;
use crate::http::body;
use crate::http::{AppState, Ctx, HttpResponse, ReadRequest, empty, json};
use crate::wire::{self, RecoveryCodesBody, SessionBody, SessionList, TotpEnrolmentBody, UserBody};
use secrecy::{ExposeSecret, SecretString};

/// The `code` of a body, or the 422 that says it is missing.
fn code(req: &ReadRequest) -> Result<SecretString, ApiError> {
    let wire::CodeRequest { code } = body::decode(req)?;
    code.ok_or_else(|| body::missing(&[("code", true)]))
}

pub async fn enrol_totp(
    state: &AppState,
    _req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let enrolment = state.gatehouse.mfa.enrol(ctx.principal()?).await?;
    let body = TotpEnrolmentBody {
        secret: enrolment.secret.expose_secret(),
        otpauth_uri: enrolment.otpauth_uri.expose_secret(),
    };
    json(StatusCode::OK, &body)
}

pub async fn confirm_totp(
    state: &AppState,
    req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let code = code(&req)?;
    let recovery_codes = state
        .gatehouse
        .mfa
        .confirm(ctx.principal()?, code.expose_secret(), ctx.client)
        .await?;
    json(StatusCode::OK, &RecoveryCodesBody { recovery_codes })
}

pub async fn disable_mfa(
    state: &AppState,
    req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let code = code(&req)?;
    state
        .gatehouse
        .mfa
        .disable(ctx.principal()?, code.expose_secret(), ctx.client)
        .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub async fn recovery_codes(
    state: &AppState,
    req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let code = code(&req)?;
    let recovery_codes = state
        .gatehouse
        .mfa
        .regenerate(ctx.principal()?, code.expose_secret(), ctx.client)
        .await?;
    json(StatusCode::OK, &RecoveryCodesBody { recovery_codes })
}

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
