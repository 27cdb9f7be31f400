//! `/api/v1/auth/verify-email*` and `/api/v1/auth/password-reset/*`:
//! email links, as JSON for a front end of the team's own.

use hyper::StatusCode;
use secrecy::ExposeSecret;

use crate::error::ApiError;
use crate::http::body;
use crate::http::{AppState, Ctx, HttpResponse, ReadRequest, empty};
use crate::wire;

pub async fn request_verification(
    state: &AppState,
    _req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    state
        .gatehouse
        .recovery
        .request_verification(ctx.principal()?)
        .await?;
    Ok(empty(StatusCode::ACCEPTED))
}

pub async fn verify_email(
    state: &AppState,
    req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let wire::VerifyEmailRequest { token } = body::decode(&req)?;
    let token = token.ok_or_else(|| body::missing(&[("token", true)]))?;
    state
        .gatehouse
        .recovery
        .verify_email(token.expose_secret())
        .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub async fn request_reset(
    state: &AppState,
    req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let wire::ResetRequest { email } = body::decode(&req)?;
    let email = email.ok_or_else(|| body::missing(&[("email", true)]))?;
    state.gatehouse.recovery.request_reset(&email)?;
    Ok(empty(StatusCode::ACCEPTED))
}

pub async fn confirm_reset(
    state: &AppState,
    req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let wire::ResetConfirmRequest {
        token,
        new_password,
    } = body::decode(&req)?;
    let (token, new_password) = body::both((token, "token"), (new_password, "new_password"))?;
    state
        .gatehouse
        .recovery
        .reset_password(token.expose_secret(), new_password)
        .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}
