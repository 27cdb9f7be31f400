//! Everything Gatehouse serves, one row per route: method, template,
//! handler, rate class, guard, body, and its documentation. The router is
//! built from this table, metrics and logs are labelled with its templates,
//! and the OpenAPI document is generated from it. Adding a route is one row
//! here and its handler.
//!
//! A row's `doc` holds only what the rest of the row cannot say (summary,
//! prose, schemas, the route's own errors); security, rate limits, media
//! types and the errors they imply are derived (see [`crate::openapi`]).

use gatehouse_actors::rate_limiter::RouteClass;
use gatehouse_actors::services::admin::Scope;
use hyper::Method;

use crate::handlers::{admin, auth, discovery, monitoring, pages, recovery, users};
use crate::http::router::{Body, Guard, Route};
use crate::openapi::{
    Answer, Doc, Failure, OpenApiDocument, Param, PrometheusText, QueryParam, Shape, Tag,
};
use crate::wire::{self, PageLimit, Timestamp};

/// A handler function as a table entry.
macro_rules! handler {
    ($f:path) => {
        |state, req, ctx| Box::pin($f(state, req, ctx))
    };
}

/// The chaos route: it exists only while `monitoring.chaos` is on.
pub const KILL_ROUTE: &str = "/api/v1/monitoring/actors/{name}/kill";

const USER: Shape = Shape::of::<wire::UserBody<'static>>();
const TOKENS: Shape = Shape::of::<wire::TokensBody<'static>>();
const RECOVERY_CODES: Shape = Shape::of::<wire::RecoveryCodesBody>();
const ADMIN_USER: Shape = Shape::of::<wire::AdminUserBody<'static>>();

const USER_ID: Param = Param {
    description: "The user's id.",
    schema: Shape::inline::<String>(),
};

const USER_QUERY: [QueryParam; 3] = [
    QueryParam {
        name: "query",
        description: "A prefix of the email or username, ignoring case (at most 254 \
            characters); empty or absent: every user.",
        schema: Shape::inline::<String>(),
    },
    QueryParam {
        name: "limit",
        description: "Users per page, 1–200 (default 50).",
        schema: Shape::inline::<PageLimit>(),
    },
    QueryParam {
        name: "cursor",
        description: "The `next_cursor` of the page before.",
        schema: Shape::inline::<String>(),
    },
];

const AUDIT_QUERY: [QueryParam; 5] = [
    QueryParam {
        name: "user_id",
        description: "Only events about this user.",
        schema: Shape::inline::<String>(),
    },
    QueryParam {
        name: "event",
        description: "Only events of this name (`login.failure`, `admin.erase`…).",
        schema: Shape::inline::<String>(),
    },
    QueryParam {
        name: "since",
        description: "Only events at or after this time (RFC 3339).",
        schema: Shape::inline::<Timestamp>(),
    },
    QueryParam {
        name: "limit",
        description: "Events per page, 1–200 (default 50).",
        schema: Shape::inline::<PageLimit>(),
    },
    QueryParam {
        name: "cursor",
        description: "The `next_cursor` of the page before.",
        schema: Shape::inline::<String>(),
    },
];

/// Said of every privileged route.
macro_rules! privileged {
    () => {
        "Privileged: the session's last password check must be within \
         `auth.reauth_window_s`, else 403 `AUTH012` (renew it at \
         `POST /api/v1/auth/reauthenticate`)."
    };
}

/// Every route. Monitoring routes, `/metrics` and the document are never rate limited.
pub static ROUTES: &[Route] = &[
    Route {
        method: Method::POST,
        template: "/api/v1/auth/register",
        handler: handler!(auth::register),
        rate: Some(RouteClass::Register),
        guard: Guard::Open,
        body: Body::Json,
        chaos_only: false,
        operation_id: "register",
        doc: Doc {
            tag: Tag::Auth,
            summary: "Register a new account",
            description: "Creates an account.",
            request: Some(Shape::of::<wire::RegisterRequest>()),
            param: None,
            query: &[],
            answers: &[Answer::json(201, "The account was created.", USER)],
            errors: &[Failure::Conflict],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/auth/login",
        handler: handler!(auth::login),
        rate: Some(RouteClass::Login),
        guard: Guard::Open,
        body: Body::JsonOrForm,
        chaos_only: false,
        operation_id: "login",
        doc: Doc {
            tag: Tag::Auth,
            summary: "Log in and get tokens",
            description: "`username` may be the username or the email. Accepted as JSON or as \
                an OAuth2 password-grant form. Unknown user, wrong password and deactivated \
                account all answer 401 `AUTH001`. After `auth.max_failed_logins` consecutive \
                failures for one account (its username and email share one count; an unknown name \
                counts as typed), it gets 429 `AUTH006` for `auth.lockout_s`. With \
                `auth.email_verification = \"required\"`, the right password of an account whose \
                address is not verified gets 403 `AUTH007`. The right password of an account with \
                a second factor gets 403 `AUTH009` with an `mfa_token` (single use, 300 s) and \
                the `methods` that complete the login at `POST /api/v1/auth/login/mfa`.",
            request: Some(Shape::of::<wire::LoginRequest>()),
            param: None,
            query: &[],
            answers: &[Answer::json(
                200,
                "Logged in; a new session was created.",
                TOKENS,
            )],
            errors: &[Failure::Unauthorized, Failure::Forbidden],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/auth/login/mfa",
        handler: handler!(auth::login_mfa),
        rate: Some(RouteClass::Mfa),
        guard: Guard::Open,
        body: Body::Json,
        chaos_only: false,
        operation_id: "loginMfa",
        doc: Doc {
            tag: Tag::Auth,
            summary: "Complete a login with the second factor",
            description: "With the `mfa_token` of a login that answered 403 `AUTH009` and a \
                code from the authenticator app or a recovery code. Each code works once (a \
                replay in the same or a neighbouring 30 s step is refused); a wrong, replayed or \
                expired code, or an unusable `mfa_token`, answers 401 `AUTH010`. Five wrong \
                codes kill the `mfa_token`, and each counts as a failed login for the account \
                (429 `AUTH006` once it is locked). The tokens' `amr` is `[\"pwd\", \"mfa\"]`.",
            request: Some(Shape::of::<wire::LoginMfaRequest>()),
            param: None,
            query: &[],
            answers: &[Answer::json(
                200,
                "Logged in; a new session was created.",
                TOKENS,
            )],
            errors: &[Failure::Unauthorized],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/auth/reauthenticate",
        handler: handler!(auth::reauthenticate),
        rate: Some(RouteClass::Password),
        guard: Guard::User,
        body: Body::Json,
        chaos_only: false,
        operation_id: "reauthenticate",
        doc: Doc {
            tag: Tag::Auth,
            summary: "Check the password again to open the privileged window",
            description: "The session's `auth_time` becomes now: for `auth.reauth_window_s` \
                the privileged operations (email change, deactivation, TOTP enrolment, MFA \
                removal, new recovery codes) are allowed. While a second factor is on, `code` \
                is required (422 when missing; 401 `AUTH010` when wrong). A wrong password \
                answers 403 `AUTH005` and counts as a failed login for the account.",
            request: Some(Shape::of::<wire::ReauthenticateRequest>()),
            param: None,
            query: &[],
            answers: &[Answer::empty(
                204,
                "Re-authenticated; tokens refreshed from now on carry the new `auth_time`.",
            )],
            errors: &[Failure::Forbidden],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/auth/refresh",
        handler: handler!(auth::refresh),
        rate: Some(RouteClass::Refresh),
        guard: Guard::Open,
        body: Body::Json,
        chaos_only: false,
        operation_id: "refresh",
        doc: Doc {
            tag: Tag::Auth,
            summary: "Exchange a refresh token for new tokens",
            description: "Rotates the refresh token and slides the session's expiry (never past \
                `auth.session_max_lifetime_s`). Using a refresh token a second time revokes its \
                whole session (reuse detection) and answers 401 `AUTH004`.",
            request: Some(Shape::of::<wire::RefreshRequest>()),
            param: None,
            query: &[],
            answers: &[Answer::json(
                200,
                "New tokens; the old refresh token is spent.",
                TOKENS,
            )],
            errors: &[Failure::Unauthorized],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/auth/logout",
        handler: handler!(auth::logout),
        rate: Some(RouteClass::Default),
        guard: Guard::User,
        body: Body::None,
        chaos_only: false,
        operation_id: "logout",
        doc: Doc {
            tag: Tag::Auth,
            summary: "Revoke the current session",
            description: "Access tokens of the session stop working immediately (401 `AUTH004`).",
            request: None,
            param: None,
            query: &[],
            answers: &[Answer::empty(
                204,
                "The session of this access token is revoked at once.",
            )],
            errors: &[],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/auth/logout-all",
        handler: handler!(auth::logout_all),
        rate: Some(RouteClass::Default),
        guard: Guard::User,
        body: Body::None,
        chaos_only: false,
        operation_id: "logoutAll",
        doc: Doc {
            tag: Tag::Auth,
            summary: "Revoke every session of the user",
            description: "",
            request: None,
            param: None,
            query: &[],
            answers: &[Answer::empty(
                204,
                "Every session of the user is revoked at once.",
            )],
            errors: &[],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/auth/verify-email/request",
        handler: handler!(recovery::request_verification),
        rate: Some(RouteClass::Email),
        guard: Guard::User,
        body: Body::None,
        chaos_only: false,
        operation_id: "requestEmailVerification",
        doc: Doc {
            tag: Tag::Auth,
            summary: "Send a new email verification link",
            description: "To the pending address if an email change waits, else to the current \
                one. Nothing is sent when there is nothing to verify, when \
                `auth.email_verification` is `off`, or when the address had its hourly share \
                (`email.per_recipient_per_hour`); the answer is the same. A new link voids the \
                older ones.",
            request: None,
            param: None,
            query: &[],
            answers: &[Answer::empty(
                202,
                "Taken; a link is on its way if there is anything to verify.",
            )],
            errors: &[],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/auth/verify-email",
        handler: handler!(recovery::verify_email),
        rate: Some(RouteClass::Default),
        guard: Guard::Open,
        body: Body::Json,
        chaos_only: false,
        operation_id: "verifyEmail",
        doc: Doc {
            tag: Tag::Auth,
            summary: "Confirm an address with the token of its link",
            description: "The address the link was sent to becomes verified; a pending address \
                becomes the account's email. A token is single use; unknown, expired or used \
                answers 400 `AUTH008`.",
            request: Some(Shape::of::<wire::VerifyEmailRequest>()),
            param: None,
            query: &[],
            answers: &[Answer::empty(204, "The address is verified.")],
            errors: &[Failure::BadRequest],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/auth/password-reset/request",
        handler: handler!(recovery::request_reset),
        rate: Some(RouteClass::Email),
        guard: Guard::Open,
        body: Body::Json,
        chaos_only: false,
        operation_id: "requestPasswordReset",
        doc: Doc {
            tag: Tag::Auth,
            summary: "Send a password-reset link",
            description: "Answers 202 with the same (empty) body at once, for known and unknown \
                addresses alike: the lookup and the queueing happen after the answer. A link \
                goes to known, active accounts only, at most `email.per_recipient_per_hour` \
                per address and hour. A syntactically invalid address is 422 `VAL001`.",
            request: Some(Shape::of::<wire::ResetRequest>()),
            param: None,
            query: &[],
            answers: &[Answer::empty(
                202,
                "Taken; a link is on its way if the address has an account.",
            )],
            errors: &[],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/auth/password-reset/confirm",
        handler: handler!(recovery::confirm_reset),
        rate: Some(RouteClass::Password),
        guard: Guard::Open,
        body: Body::Json,
        chaos_only: false,
        operation_id: "confirmPasswordReset",
        doc: Doc {
            tag: Tag::Auth,
            summary: "Set a new password with the token of a reset link",
            description: "The password policy is the registration's (422 `VAL001`, field \
                `new_password`; the token stays usable). Every session of the user is revoked, \
                every reset link of the user is used up, and a notice goes to the address. \
                Unknown, expired or used tokens answer 400 `AUTH008`.",
            request: Some(Shape::of::<wire::ResetConfirmRequest>()),
            param: None,
            query: &[],
            answers: &[Answer::empty(
                204,
                "The password is changed; every session is revoked.",
            )],
            errors: &[Failure::BadRequest],
        },
    },
    Route {
        method: Method::GET,
        template: "/api/v1/users/me",
        handler: handler!(users::me),
        rate: Some(RouteClass::Default),
        guard: Guard::User,
        body: Body::None,
        chaos_only: false,
        operation_id: "getMe",
        doc: Doc {
            tag: Tag::Users,
            summary: "Get the caller's account",
            description: "",
            request: None,
            param: None,
            query: &[],
            answers: &[Answer::json(200, "The caller's account.", USER)],
            errors: &[],
        },
    },
    Route {
        method: Method::PUT,
        template: "/api/v1/users/me",
        handler: handler!(users::update),
        rate: Some(RouteClass::Default),
        guard: Guard::User,
        body: Body::Json,
        chaos_only: false,
        operation_id: "updateMe",
        doc: Doc {
            tag: Tag::Users,
            summary: "Change the caller's email and/or username",
            description: "Fields left out are not changed. A new email is announced to the old \
                address. With `auth.email_verification` `off` it applies at once; otherwise it \
                becomes `pending_email`, a verification link goes to it, and `email` changes \
                when the link is followed. A new email is privileged: the session's last \
                password check must be within `auth.reauth_window_s`, else 403 `AUTH012` \
                (renew it at `POST /api/v1/auth/reauthenticate`).",
            request: Some(Shape::of::<wire::UpdateProfileRequest>()),
            param: None,
            query: &[],
            answers: &[Answer::json(200, "The updated account.", USER)],
            errors: &[Failure::Conflict, Failure::Forbidden],
        },
    },
    Route {
        method: Method::DELETE,
        template: "/api/v1/users/me",
        handler: handler!(users::deactivate),
        rate: Some(RouteClass::Default),
        guard: Guard::User,
        body: Body::None,
        chaos_only: false,
        operation_id: "deleteMe",
        doc: Doc {
            tag: Tag::Users,
            summary: "Deactivate the caller's account",
            description: privileged!(),
            request: None,
            param: None,
            query: &[],
            answers: &[Answer::empty(
                204,
                "Soft delete: `is_active` becomes false, every session is revoked and later \
                 logins fail with `AUTH001`.",
            )],
            errors: &[Failure::Forbidden],
        },
    },
    Route {
        method: Method::PATCH,
        template: "/api/v1/users/me/password",
        handler: handler!(users::change_password),
        rate: Some(RouteClass::Password),
        guard: Guard::User,
        body: Body::Json,
        chaos_only: false,
        operation_id: "changePassword",
        doc: Doc {
            tag: Tag::Users,
            summary: "Change the caller's password",
            description: "A wrong `current_password` answers 403 `AUTH005`. A notice goes to \
                the account's address.",
            request: Some(Shape::of::<wire::ChangePasswordRequest>()),
            param: None,
            query: &[],
            answers: &[Answer::empty(
                204,
                "Password changed; every other session of the user is revoked.",
            )],
            errors: &[Failure::Forbidden],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/users/me/mfa/totp",
        handler: handler!(users::enrol_totp),
        rate: Some(RouteClass::Default),
        guard: Guard::User,
        body: Body::None,
        chaos_only: false,
        operation_id: "enrolTotp",
        doc: Doc {
            tag: Tag::Users,
            summary: "Start TOTP enrolment",
            description: concat!(
                "A new key (160 bits) for an authenticator app; it is not used until a code \
                 from it confirms it (`POST /api/v1/users/me/mfa/totp/confirm`). Asking again \
                 replaces a pending key. 409 `MFA001` while a second factor is on. ",
                privileged!()
            ),
            request: None,
            param: None,
            query: &[],
            answers: &[Answer::json(
                200,
                "The pending key, for the app.",
                Shape::of::<wire::TotpEnrolmentBody<'static>>(),
            )],
            errors: &[Failure::Forbidden, Failure::Conflict],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/users/me/mfa/totp/confirm",
        handler: handler!(users::confirm_totp),
        rate: Some(RouteClass::Default),
        guard: Guard::User,
        body: Body::Json,
        chaos_only: false,
        operation_id: "confirmTotp",
        doc: Doc {
            tag: Tag::Users,
            summary: "Confirm TOTP enrolment with a code from the app",
            description: "The second factor is on from now: logins need a code. A wrong code \
                answers 422 (field `code`) and counts as a failed login for the account; 409 \
                `MFA001` when a second factor is on already or no enrolment is pending. Not \
                privileged.",
            request: Some(Shape::of::<wire::CodeRequest>()),
            param: None,
            query: &[],
            answers: &[Answer::json(
                200,
                "Ten recovery codes, shown this once.",
                RECOVERY_CODES,
            )],
            errors: &[Failure::Conflict],
        },
    },
    Route {
        method: Method::DELETE,
        template: "/api/v1/users/me/mfa",
        handler: handler!(users::disable_mfa),
        rate: Some(RouteClass::Default),
        guard: Guard::User,
        body: Body::Json,
        chaos_only: false,
        operation_id: "disableMfa",
        doc: Doc {
            tag: Tag::Users,
            summary: "Turn the second factor off",
            description: concat!(
                "With an app code or a recovery code; a wrong one answers 422 (field `code`) \
                 and counts as a failed login for the account. The key and the recovery codes \
                 are deleted, and a notice goes to the account's address. 409 `MFA001` when no \
                 second factor is on. ",
                privileged!()
            ),
            request: Some(Shape::of::<wire::CodeRequest>()),
            param: None,
            query: &[],
            answers: &[Answer::empty(204, "The second factor is off.")],
            errors: &[Failure::Forbidden, Failure::Conflict],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/users/me/mfa/recovery-codes",
        handler: handler!(users::recovery_codes),
        rate: Some(RouteClass::Default),
        guard: Guard::User,
        body: Body::Json,
        chaos_only: false,
        operation_id: "regenerateRecoveryCodes",
        doc: Doc {
            tag: Tag::Users,
            summary: "Replace the recovery codes",
            description: concat!(
                "With an app code or a recovery code; a wrong one answers 422 (field `code`) \
                 and counts as a failed login for the account. The old codes stop working. 409 \
                 `MFA001` when no second factor is on. ",
                privileged!()
            ),
            request: Some(Shape::of::<wire::CodeRequest>()),
            param: None,
            query: &[],
            answers: &[Answer::json(
                200,
                "Ten new recovery codes, shown this once.",
                RECOVERY_CODES,
            )],
            errors: &[Failure::Forbidden, Failure::Conflict],
        },
    },
    Route {
        method: Method::GET,
        template: "/api/v1/users/me/sessions",
        handler: handler!(users::sessions),
        rate: Some(RouteClass::Default),
        guard: Guard::User,
        body: Body::None,
        chaos_only: false,
        operation_id: "listSessions",
        doc: Doc {
            tag: Tag::Users,
            summary: "List the caller's sessions",
            description: "",
            request: None,
            param: None,
            query: &[],
            answers: &[Answer::json(
                200,
                "The caller's live sessions.",
                Shape::of::<wire::SessionList<'static>>(),
            )],
            errors: &[],
        },
    },
    Route {
        method: Method::DELETE,
        template: "/api/v1/users/me/sessions/{id}",
        handler: handler!(users::delete_session),
        rate: Some(RouteClass::Default),
        guard: Guard::User,
        body: Body::None,
        chaos_only: false,
        operation_id: "revokeSession",
        doc: Doc {
            tag: Tag::Users,
            summary: "Revoke one of the caller's sessions",
            description: "404 `NOT001` for a session that does not exist or is not the caller's.",
            request: None,
            param: Some(Param {
                description: "A session id, as listed by `GET /api/v1/users/me/sessions`.",
                schema: Shape::inline::<String>(),
            }),
            query: &[],
            answers: &[Answer::empty(204, "The session is revoked at once.")],
            errors: &[],
        },
    },
    Route {
        method: Method::GET,
        template: "/api/v1/monitoring/health",
        handler: handler!(monitoring::health),
        rate: None,
        guard: Guard::Open,
        body: Body::None,
        chaos_only: false,
        operation_id: "health",
        doc: Doc {
            tag: Tag::Monitoring,
            summary: "Service health",
            description: "Always open: never needs the monitoring token.",
            request: None,
            param: None,
            query: &[],
            answers: &[
                Answer::json(
                    200,
                    "`healthy`, or `degraded` while a circuit breaker is not closed.",
                    Shape::of::<wire::Health>(),
                ),
                Answer::json(
                    503,
                    "`unhealthy`: an actor is down.",
                    Shape::of::<wire::Health>(),
                ),
            ],
            errors: &[],
        },
    },
    Route {
        method: Method::GET,
        template: "/api/v1/monitoring/circuit-breakers",
        handler: handler!(monitoring::circuit_breakers),
        rate: None,
        guard: Guard::Monitoring,
        body: Body::None,
        chaos_only: false,
        operation_id: "circuitBreakers",
        doc: Doc {
            tag: Tag::Monitoring,
            summary: "Circuit breaker states",
            description: "",
            request: None,
            param: None,
            query: &[],
            answers: &[Answer::json(
                200,
                "Every circuit breaker's state.",
                Shape::of::<wire::CircuitBreakers>(),
            )],
            errors: &[],
        },
    },
    Route {
        method: Method::GET,
        template: "/api/v1/monitoring/metrics",
        handler: handler!(monitoring::summary),
        rate: None,
        guard: Guard::Monitoring,
        body: Body::None,
        chaos_only: false,
        operation_id: "metricsSummary",
        doc: Doc {
            tag: Tag::Monitoring,
            summary: "Metrics summary as JSON",
            description: "",
            request: None,
            param: None,
            query: &[],
            answers: &[Answer::json(
                200,
                "Counters and latency percentiles.",
                Shape::of::<wire::MetricsSummary>(),
            )],
            errors: &[],
        },
    },
    Route {
        method: Method::GET,
        template: "/api/v1/monitoring/actors",
        handler: handler!(monitoring::actors),
        rate: None,
        guard: Guard::Monitoring,
        body: Body::None,
        chaos_only: false,
        operation_id: "actors",
        doc: Doc {
            tag: Tag::Monitoring,
            summary: "Actor statuses",
            description: "",
            request: None,
            param: None,
            query: &[],
            answers: &[Answer::json(
                200,
                "Every supervised actor's status.",
                Shape::of::<wire::Actors>(),
            )],
            errors: &[],
        },
    },
    Route {
        method: Method::POST,
        template: KILL_ROUTE,
        handler: handler!(monitoring::kill),
        rate: None,
        guard: Guard::Monitoring,
        body: Body::None,
        chaos_only: true,
        operation_id: "killActor",
        doc: Doc {
            tag: Tag::Monitoring,
            summary: "Make an actor fail (chaos testing)",
            description: "",
            request: None,
            param: Some(Param {
                description: "The actor to make fail.",
                schema: Shape::inline::<wire::ActorName>(),
            }),
            query: &[],
            answers: &[Answer::empty(
                202,
                "The actor failed; the supervisor restarts it.",
            )],
            errors: &[],
        },
    },
    Route {
        method: Method::GET,
        template: "/metrics",
        handler: handler!(monitoring::prometheus),
        rate: None,
        guard: Guard::Monitoring,
        body: Body::None,
        chaos_only: false,
        operation_id: "prometheusMetrics",
        doc: Doc {
            tag: Tag::Monitoring,
            summary: "Prometheus metrics",
            description: "Series: `gatehouse_http_requests_total{method,route,status}`, \
                `gatehouse_http_request_duration_seconds` (histogram), \
                `gatehouse_logins_total{result}`, `gatehouse_registrations_total`, \
                `gatehouse_rate_limited_total{route}`, \
                `gatehouse_circuit_breaker_state{breaker}` (0 closed, 1 half_open, 2 open), \
                `gatehouse_actor_restarts_total{actor}`. Route labels are path templates.",
            request: None,
            param: None,
            query: &[],
            answers: &[Answer::text(
                200,
                "Prometheus text exposition format 0.0.4.",
                Shape::inline::<PrometheusText>(),
            )],
            errors: &[],
        },
    },
    Route {
        method: Method::GET,
        template: "/api/v1/openapi.json",
        handler: handler!(monitoring::openapi),
        rate: None,
        guard: Guard::Open,
        body: Body::None,
        chaos_only: false,
        operation_id: "openapi",
        doc: Doc {
            tag: Tag::Monitoring,
            summary: "This OpenAPI document",
            description: "Always open.",
            request: None,
            param: None,
            query: &[],
            answers: &[Answer::json(
                200,
                "The OpenAPI 3.1 document of the whole API, as this configuration serves it.",
                Shape::inline::<OpenApiDocument>(),
            )],
            errors: &[],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/admin/introspect",
        handler: handler!(admin::introspect),
        rate: Some(RouteClass::Default),
        guard: Guard::Admin(Scope::Introspect),
        body: Body::Form,
        chaos_only: false,
        operation_id: "introspect",
        doc: Doc {
            tag: Tag::Admin,
            summary: "Introspect an access token (RFC 7662)",
            description: "For resource servers that must know about a revocation now rather \
                than at `exp`: the session is read from the database, so a token of a session \
                revoked on any instance is inactive at once. Anything not currently valid \
                answers `{\"active\": false}`.",
            request: Some(Shape::of::<wire::IntrospectRequest>()),
            param: None,
            query: &[],
            answers: &[Answer::json(
                200,
                "Whether the token is valid now, and its claims when it is.",
                Shape::of::<wire::IntrospectionBody<'static>>(),
            )],
            errors: &[Failure::Forbidden],
        },
    },
    Route {
        method: Method::GET,
        template: "/api/v1/admin/users",
        handler: handler!(admin::users),
        rate: Some(RouteClass::Default),
        guard: Guard::Admin(Scope::UsersRead),
        body: Body::None,
        chaos_only: false,
        operation_id: "searchUsers",
        doc: Doc {
            tag: Tag::Admin,
            summary: "Find users",
            description: "Users whose email or username starts with `query` (ignoring case; every \
                user when it is empty), in a stable order, a page at a time: pass \
                `next_cursor` as `cursor` for the next page (null on the last). A user \
                registered meanwhile may or may not appear; no user is listed twice or \
                skipped.",
            request: None,
            param: None,
            query: &USER_QUERY,
            answers: &[Answer::json(
                200,
                "A page of users.",
                Shape::of::<wire::AdminUserPageBody<'static>>(),
            )],
            errors: &[
                Failure::Forbidden,
                Failure::BadRequest,
                Failure::ValidationFailed,
            ],
        },
    },
    Route {
        method: Method::GET,
        template: "/api/v1/admin/users/{id}",
        handler: handler!(admin::user),
        rate: Some(RouteClass::Default),
        guard: Guard::Admin(Scope::UsersRead),
        body: Body::None,
        chaos_only: false,
        operation_id: "getUser",
        doc: Doc {
            tag: Tag::Admin,
            summary: "Look at a user",
            description: "The user, active or not, with roles, lock state, last login and the \
                number of active sessions.",
            request: None,
            param: Some(USER_ID),
            query: &[],
            answers: &[Answer::json(200, "The user.", ADMIN_USER)],
            errors: &[Failure::Forbidden],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/admin/users/{id}/deactivate",
        handler: handler!(admin::deactivate),
        rate: Some(RouteClass::Default),
        guard: Guard::Admin(Scope::UsersWrite),
        body: Body::None,
        chaos_only: false,
        operation_id: "deactivateUser",
        doc: Doc {
            tag: Tag::Admin,
            summary: "Deactivate a user",
            description: "A soft delete: the account can no longer log in and every session is \
                revoked, on every instance, at once.",
            request: None,
            param: Some(USER_ID),
            query: &[],
            answers: &[Answer::empty(204, "The user is deactivated.")],
            errors: &[Failure::Forbidden],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/admin/users/{id}/reactivate",
        handler: handler!(admin::reactivate),
        rate: Some(RouteClass::Default),
        guard: Guard::Admin(Scope::UsersWrite),
        body: Body::None,
        chaos_only: false,
        operation_id: "reactivateUser",
        doc: Doc {
            tag: Tag::Admin,
            summary: "Reactivate a user",
            description: "The account can log in again (its old sessions stay revoked).",
            request: None,
            param: Some(USER_ID),
            query: &[],
            answers: &[Answer::empty(204, "The user is active.")],
            errors: &[Failure::Forbidden],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/admin/users/{id}/logout",
        handler: handler!(admin::logout),
        rate: Some(RouteClass::Default),
        guard: Guard::Admin(Scope::UsersWrite),
        body: Body::None,
        chaos_only: false,
        operation_id: "logoutUser",
        doc: Doc {
            tag: Tag::Admin,
            summary: "Log a user out everywhere",
            description: "Every session of the user is revoked, on every instance, at once (a \
                stolen laptop).",
            request: None,
            param: Some(USER_ID),
            query: &[],
            answers: &[Answer::empty(204, "Every session is revoked.")],
            errors: &[Failure::Forbidden],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/admin/users/{id}/unlock",
        handler: handler!(admin::unlock),
        rate: Some(RouteClass::Default),
        guard: Guard::Admin(Scope::UsersWrite),
        body: Body::None,
        chaos_only: false,
        operation_id: "unlockUser",
        doc: Doc {
            tag: Tag::Admin,
            summary: "Lift a login lock",
            description: "Clears the account throttle of the user (in Redis too when limits are \
                shared): logins are taken again at once.",
            request: None,
            param: Some(USER_ID),
            query: &[],
            answers: &[Answer::empty(204, "The account is unlocked.")],
            errors: &[Failure::Forbidden],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/admin/users/{id}/password-reset",
        handler: handler!(admin::password_reset),
        rate: Some(RouteClass::Default),
        guard: Guard::Admin(Scope::UsersWrite),
        body: Body::None,
        chaos_only: false,
        operation_id: "sendUserPasswordReset",
        doc: Doc {
            tag: Tag::Admin,
            summary: "Send a reset link",
            description: "Sends the user a password-reset link, as `POST /api/v1/auth/password-reset` \
                does (older links stop working). A deactivated account gets none.",
            request: None,
            param: Some(USER_ID),
            query: &[],
            answers: &[Answer::empty(202, "The link is on its way.")],
            errors: &[Failure::Forbidden],
        },
    },
    Route {
        method: Method::PUT,
        template: "/api/v1/admin/users/{id}/roles",
        handler: handler!(admin::set_roles),
        rate: Some(RouteClass::Default),
        guard: Guard::Admin(Scope::UsersWrite),
        body: Body::Json,
        chaos_only: false,
        operation_id: "setUserRoles",
        doc: Doc {
            tag: Tag::Admin,
            summary: "Set a user's roles",
            description: "Replaces the user's roles; tokens issued from then on carry them in the \
                `roles` claim (tokens already issued keep theirs until they expire).",
            request: Some(Shape::of::<wire::RolesRequest>()),
            param: Some(USER_ID),
            query: &[],
            answers: &[Answer::json(
                200,
                "The user, with the new roles.",
                ADMIN_USER,
            )],
            errors: &[Failure::Forbidden],
        },
    },
    Route {
        method: Method::DELETE,
        template: "/api/v1/admin/users/{id}/mfa",
        handler: handler!(admin::remove_mfa),
        rate: Some(RouteClass::Default),
        guard: Guard::Admin(Scope::UsersWrite),
        body: Body::None,
        chaos_only: false,
        operation_id: "removeUserMfa",
        doc: Doc {
            tag: Tag::Admin,
            summary: "Turn a user's second factor off",
            description: "For a user who lost their authenticator and their recovery codes: the \
                TOTP secret, the recovery codes and open login challenges go, and the \
                \"second factor turned off\" notice goes to the account's address. Nothing \
                happens when it is off already.",
            request: None,
            param: Some(USER_ID),
            query: &[],
            answers: &[Answer::empty(204, "The second factor is off.")],
            errors: &[Failure::Forbidden],
        },
    },
    Route {
        method: Method::DELETE,
        template: "/api/v1/admin/users/{id}",
        handler: handler!(admin::erase),
        rate: Some(RouteClass::Default),
        guard: Guard::Admin(Scope::UsersWrite),
        body: Body::None,
        chaos_only: false,
        operation_id: "eraseUser",
        doc: Doc {
            tag: Tag::Admin,
            summary: "Erase a user",
            description: "For a user who asked to be forgotten: the user, their sessions, links, \
                recovery codes, challenges and every message to their addresses are \
                deleted, and their tokens are refused on every instance from the next \
                request on. Of the stored events about them only the id, the event and \
                its time stay.",
            request: None,
            param: Some(USER_ID),
            query: &[],
            answers: &[Answer::empty(204, "The user is erased.")],
            errors: &[Failure::Forbidden],
        },
    },
    Route {
        method: Method::GET,
        template: "/api/v1/admin/audit",
        handler: handler!(admin::audit),
        rate: Some(RouteClass::Default),
        guard: Guard::Admin(Scope::AuditRead),
        body: Body::None,
        chaos_only: false,
        operation_id: "readAudit",
        doc: Doc {
            tag: Tag::Admin,
            summary: "Read the audit log",
            description: "The stored security events (every event of the log's list, and each \
                admin action as `admin.<action>` with the key's id and name), newest first, \
                a page at a time: pass `next_cursor` as `cursor` for older ones (null on \
                the last). An event caused by a change is stored in the change's \
                transaction; one without a change (a refused login, a throttled name) \
                within a moment of its log line. Kept for `database.audit_retention_days`.",
            request: None,
            param: None,
            query: &AUDIT_QUERY,
            answers: &[Answer::json(
                200,
                "A page of events.",
                Shape::of::<wire::AuditPageBody<'static>>(),
            )],
            errors: &[
                Failure::Forbidden,
                Failure::BadRequest,
                Failure::ValidationFailed,
            ],
        },
    },
    Route {
        method: Method::GET,
        template: "/api/v1/admin/keys",
        handler: handler!(admin::keys),
        rate: Some(RouteClass::Default),
        guard: Guard::Admin(Scope::KeysWrite),
        body: Body::None,
        chaos_only: false,
        operation_id: "listSigningKeys",
        doc: Doc {
            tag: Tag::Admin,
            summary: "List the signing keys",
            description: "As `gatehouse keys list`: every key of the ring (none with HS256), \
                never key material.",
            request: None,
            param: None,
            query: &[],
            answers: &[Answer::json(
                200,
                "The keys of the ring.",
                Shape::of::<wire::SigningKeyList<'static>>(),
            )],
            errors: &[Failure::Forbidden],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/admin/keys/rotate",
        handler: handler!(admin::rotate_keys),
        rate: Some(RouteClass::Default),
        guard: Guard::Admin(Scope::KeysWrite),
        body: Body::OptionalJson,
        chaos_only: false,
        operation_id: "rotateSigningKeys",
        doc: Doc {
            tag: Tag::Admin,
            summary: "Rotate the signing keys",
            description: "As `gatehouse keys rotate [--now]`: publishes a new next key (it \
                signs ten minutes later), or with `{\"now\": true}` makes a key sign at once. \
                Every instance follows within a second. With HS256 there is no ring: 404 \
                `NOT001`.",
            request: Some(Shape::of::<wire::RotateKeysRequest>()),
            param: None,
            query: &[],
            answers: &[Answer::json(
                200,
                "The key the rotation brought forward.",
                Shape::of::<wire::SigningKeyBody<'static>>(),
            )],
            errors: &[Failure::Forbidden, Failure::NotFound],
        },
    },
    Route {
        method: Method::POST,
        template: "/api/v1/admin/keys/{kid}/revoke",
        handler: handler!(admin::revoke_key),
        rate: Some(RouteClass::Default),
        guard: Guard::Admin(Scope::KeysWrite),
        body: Body::None,
        chaos_only: false,
        operation_id: "revokeSigningKey",
        doc: Doc {
            tag: Tag::Admin,
            summary: "Revoke a signing key",
            description: "As `gatehouse keys revoke KID`: the key leaves the ring (an active \
                one is replaced first) and every token it signed is refused, on every \
                instance, within a second.",
            request: None,
            param: Some(Param {
                description: "The key's `kid`, as listed.",
                schema: Shape::inline::<String>(),
            }),
            query: &[],
            answers: &[Answer::empty(204, "The key is revoked.")],
            errors: &[Failure::Forbidden],
        },
    },
    Route {
        method: Method::GET,
        template: "/.well-known/jwks.json",
        handler: handler!(discovery::jwks),
        rate: None,
        guard: Guard::Open,
        body: Body::None,
        chaos_only: false,
        operation_id: "jwks",
        doc: Doc {
            tag: Tag::Discovery,
            summary: "The public keys access tokens are signed with",
            description: "Every key that is next, active or retired; `Cache-Control: public, \
                max-age=300`. A key is published at least 600 s before it signs and stays \
                published until every token it signed has expired, so a verifier that caches \
                this for its max-age never meets an unknown `kid`. With HS256: `{\"keys\": []}`.",
            request: None,
            param: None,
            query: &[],
            answers: &[Answer::json(200, "The key set.", Shape::of::<wire::Jwks>())],
            errors: &[],
        },
    },
    Route {
        method: Method::GET,
        template: "/.well-known/oauth-authorization-server",
        handler: handler!(discovery::metadata),
        rate: None,
        guard: Guard::Open,
        body: Body::None,
        chaos_only: false,
        operation_id: "authorizationServerMetadata",
        doc: Doc {
            tag: Tag::Discovery,
            summary: "RFC 8414 authorization server metadata",
            description: "Built from `server.public_url` and `auth.issuer`.",
            request: None,
            param: None,
            query: &[],
            answers: &[Answer::json(
                200,
                "The metadata.",
                Shape::of::<wire::AuthorizationServer>(),
            )],
            errors: &[],
        },
    },
];

/// The pages email links open: HTML, so not part of the API's document.
/// They draw from the `default` allowance; the stylesheet from none.
pub static PAGES: &[Route] = &[
    Route {
        method: Method::GET,
        template: "/verify-email",
        handler: handler!(pages::verify_form),
        rate: Some(RouteClass::Default),
        guard: Guard::Open,
        body: Body::None,
        chaos_only: false,
        operation_id: "verifyEmailPage",
        doc: Doc {
            tag: Tag::Auth,
            summary: "Shows the button that confirms an address",
            description: "",
            request: None,
            param: None,
            query: &[],
            answers: &[],
            errors: &[],
        },
    },
    Route {
        method: Method::POST,
        template: "/verify-email",
        handler: handler!(pages::verify_submit),
        rate: Some(RouteClass::Default),
        guard: Guard::Open,
        body: Body::Form,
        chaos_only: false,
        operation_id: "verifyEmailSubmit",
        doc: Doc {
            tag: Tag::Auth,
            summary: "Confirms an address",
            description: "",
            request: None,
            param: None,
            query: &[],
            answers: &[],
            errors: &[],
        },
    },
    Route {
        method: Method::GET,
        template: "/reset-password",
        handler: handler!(pages::reset_form),
        rate: Some(RouteClass::Default),
        guard: Guard::Open,
        body: Body::None,
        chaos_only: false,
        operation_id: "resetPasswordPage",
        doc: Doc {
            tag: Tag::Auth,
            summary: "Shows the new-password form",
            description: "",
            request: None,
            param: None,
            query: &[],
            answers: &[],
            errors: &[],
        },
    },
    Route {
        method: Method::POST,
        template: "/reset-password",
        handler: handler!(pages::reset_submit),
        rate: Some(RouteClass::Default),
        guard: Guard::Open,
        body: Body::Form,
        chaos_only: false,
        operation_id: "resetPasswordSubmit",
        doc: Doc {
            tag: Tag::Auth,
            summary: "Sets the new password",
            description: "",
            request: None,
            param: None,
            query: &[],
            answers: &[],
            errors: &[],
        },
    },
    Route {
        method: Method::GET,
        template: "/assets/pages.css",
        handler: handler!(pages::stylesheet),
        rate: None,
        guard: Guard::Open,
        body: Body::None,
        chaos_only: false,
        operation_id: "pagesStylesheet",
        doc: Doc {
            tag: Tag::Auth,
            summary: "The pages' stylesheet",
            description: "",
            request: None,
            param: None,
            query: &[],
            answers: &[],
            errors: &[],
        },
    },
];

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http::router::{Matched, Router};

    #[test]
    fn routes_methods_and_unknown_paths() {
        let r = Router::new(ROUTES, false).unwrap();
        assert!(matches!(
            r.route(&Method::POST, "/api/v1/auth/login"),
            Matched::Found { route, .. } if route.operation_id == "login"
        ));
        match r.route(&Method::GET, "/api/v1/auth/login") {
            Matched::MethodNotAllowed { allow, .. } => assert_eq!(allow, "POST"),
            _ => panic!("expected 405"),
        }
        match r.route(&Method::POST, "/api/v1/users/me") {
            Matched::MethodNotAllowed { allow, .. } => {
                assert_eq!(allow, "GET, HEAD, PUT, DELETE")
            }
            _ => panic!("expected 405"),
        }
        assert!(matches!(
            r.route(&Method::HEAD, "/api/v1/users/me"),
            Matched::Found { route, .. } if route.operation_id == "getMe"
        ));
        assert!(matches!(
            r.route(&Method::GET, "/api/v1/nope"),
            Matched::NotFound
        ));
        assert!(matches!(
            r.route(&Method::GET, "/api/v1/users/me/"),
            Matched::NotFound
        ));
        assert!(matches!(
            r.route(&Method::POST, "/api/v1/monitoring/actors/metrics/kill"),
            Matched::NotFound
        ));
        let chaos = Router::new(ROUTES, true).unwrap();
        assert!(matches!(
            chaos.route(&Method::POST, "/api/v1/monitoring/actors/metrics/kill"),
            Matched::Found { param: Some(name), .. } if name == "metrics"
        ));
    }

    #[test]
    fn operation_ids_are_unique() {
        let mut ids: Vec<_> = ROUTES.iter().map(|r| r.operation_id).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), ROUTES.len());
    }
}
