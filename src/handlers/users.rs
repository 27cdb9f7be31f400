//! `/api/v1/users/me*`: the caller's own account.

use hyper::body::Incoming;
use hyper::{Request, StatusCode};

use super::bearer;
use crate::error::ApiError;
use crate::http::{AppState, HttpResponse, json};

pub async fn me(state: &AppState, req: &Request<Incoming>) -> Result<HttpResponse, ApiError> {
    let who = state.gatehouse.authenticate(bearer(req.headers())?).await?;
    let user = state.gatehouse.me(&who).await?;
    json(StatusCode::OK, &user)
}
