//! `/api/v1/auth/*`: registration, login (and its second step), refresh,
//! re-authentication, logout.

use gatehouse_actors::services::accounts::Registration;
use gatehouse_actors::services::auth::{LoginRequest, SecondStep};
use hyper::StatusCode;
use hyper::header::USER_AGENT;
use secrecy::ExposeSecret;

use crate::error::ApiError;
use crate::http::body;
use crate::http::{AppState, Ctx, HttpResponse, ReadRequest, empty, json};
use crate::wire::{self, TokensBody, UserBody};

/// Longest `User-Agent` kept with a session.
const MAX_USER_AGENT: usize = 512;

pub async fn register(
    state: &AppState,
    req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let wire::RegisterRequest {
        email,
        username,
        password,
    } = body::decode(&req)?;
    let (email, username, password) = match (email, username, password) {
        (Some(email), Some(username), Some(password)) => (email, username, password),
        (email, username, password) => {
            return Err(body::missing(&[
                ("email", email.is_none()),
                ("username", username.is_none()),
                ("password", password.is_none()),
            ]));
        }
    };
    let user = state
        .gatehouse
        .accounts
        .register(Registration {
            email,
            username,
            password,
        })
        .await?;
    json(StatusCode::CREATED, &UserBody::from(&user))
}

/// The login route is also the OAuth2 token endpoint: the password grant,
/// or `grant_type=refresh_token` to exchange a refresh token.
pub async fn login(state: &AppState, req: ReadRequest, ctx: Ctx) -> Result<HttpResponse, ApiError> {
    let wire::LoginRequest {
        username,
        password,
        grant_type,
        refresh_token,
    } = body::decode(&req)?;
    match grant_type.as_deref() {
        None | Some("password") => {}
        Some("refresh_token") => {
            let Some(refresh_token) = refresh_token else {
                return Err(body::missing(&[("refresh_token", true)]));
            };
            return exchange(state, refresh_token.expose_secret()).await;
        }
        Some(_) => {
            return Err(gatehouse_actors::Error::validation(
                "grant_type",
                "must be \"password\" or \"refresh_token\"",
            )
            .into());
        }
    }
    let (login, password) = body::both((username, "username"), (password, "password"))?;
    let issued = state
        .gatehouse
        .auth
        .login(LoginRequest {
            login,
            password,
            ip: ctx.client,
            user_agent: user_agent(&req),
        })
        .await?;
    json(StatusCode::OK, &TokensBody::from(&issued))
}

/// The client's `User-Agent`, as kept with a session.
fn user_agent(req: &ReadRequest) -> Option<String> {
    req.headers()
        .get(USER_AGENT)
        .and_then(|v| v.to_str().ok())
        .map(|ua| ua.chars().take(MAX_USER_AGENT).collect())
}

/// The second step of a login that answered `AUTH009`.
pub async fn login_mfa(
    state: &AppState,
    req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let wire::LoginMfaRequest { mfa_token, code } = body::decode(&req)?;
    let (mfa_token, code) = body::both((mfa_token, "mfa_token"), (code, "code"))?;
    let issued = state
        .gatehouse
        .auth
        .login_mfa(SecondStep {
            mfa_token,
            code: code.expose_secret().to_owned(),
            ip: ctx.client,
            user_agent: user_agent(&req),
        })
        .await?;
    json(StatusCode::OK, &TokensBody::from(&issued))
}

pub async fn reauthenticate(
    state: &AppState,
    req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let wire::ReauthenticateRequest { password, code } = body::decode(&req)?;
    let Some(password) = password else {
        return Err(body::missing(&[("password", true)]));
    };
    let code = code.map(|c| c.expose_secret().to_owned());
    state
        .gatehouse
        .auth
        .reauthenticate(ctx.principal()?, password, code, ctx.client)
        .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub async fn refresh(
    state: &AppState,
    req: ReadRequest,
    _ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    let wire::RefreshRequest { refresh_token } = body::decode(&req)?;
    let Some(refresh_token) = refresh_token else {
        return Err(body::missing(&[("refresh_token", true)]));
    };
    exchange(state, refresh_token.expose_secret()).await
}

/// A refresh token for a new pair, for either route that offers it.
async fn exchange(state: &AppState, refresh_token: &str) -> Result<HttpResponse, ApiError> {
    let issued = state.gatehouse.auth.refresh(refresh_token).await?;
    json(StatusCode::OK, &TokensBody::from(&issued))
}

pub async fn logout(
    state: &AppState,
    _req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    state.gatehouse.sessions.logout(ctx.principal()?).await?;
    Ok(empty(StatusCode::NO_CONTENT))
}

pub async fn logout_all(
    state: &AppState,
    _req: ReadRequest,
    ctx: Ctx,
) -> Result<HttpResponse, ApiError> {
    state
        .gatehouse
        .sessions
        .logout_all(ctx.principal()?)
        .await?;
    Ok(empty(StatusCode::NO_CONTENT))
}
