//! What a route is (one row of the table in [`crate::routes`]: method,
//! template, handler, rate class, guard, body) and how a request finds its
//! row: (method, path) → row, with 404, and 405 with `Allow`. `HEAD` is
//! answered wherever `GET` is.

use std::future::Future;
use std::pin::Pin;

use gatehouse_actors::rate_limiter::RouteClass;
use gatehouse_actors::services::admin::Scope;
use hyper::Method;

use super::{AppState, Ctx, HttpResponse, ReadRequest};
use crate::error::ApiError;

/// What a handler returns: the response, or the failure the pipeline maps.
pub type Reply<'a> = Pin<Box<dyn Future<Output = Result<HttpResponse, ApiError>> + Send + 'a>>;

/// An endpoint's code: the request (body already read) and what the
/// pipeline learnt about it.
pub type Handler = for<'a> fn(&'a AppState, ReadRequest, Ctx) -> Reply<'a>;

/// Who may call a route, checked by the pipeline before the handler runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Guard {
    /// Anyone.
    Open,
    /// A bearer access token of a live session; the handler gets its principal.
    User,
    /// The monitoring token, when one is configured.
    Monitoring,
    /// An admin key with this scope; the handler gets the key.
    Admin(Scope),
}

/// The request body a route reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    None,
    Json,
    /// JSON, or no body at all (no `Content-Type`, nothing sent).
    OptionalJson,
    /// JSON, or an `application/x-www-form-urlencoded` form.
    JsonOrForm,
    /// A form post (`application/x-www-form-urlencoded`): the pages, introspection.
    Form,
}

impl Body {
    /// The media types accepted, if a body is read at all.
    pub fn accepted(self) -> Option<&'static [&'static str]> {
        use super::body::{FORM, JSON};
        match self {
            Self::None => None,
            Self::Json | Self::OptionalJson => Some(&[JSON]),
            Self::JsonOrForm => Some(&[JSON, FORM]),
            Self::Form => Some(&[FORM]),
        }
    }
}

/// One row of the route table.
pub struct Route {
    pub method: Method,
    /// The path template; metrics and logs label requests with it.
    pub template: &'static str,
    pub handler: Handler,
    /// The rate-limit allowance it draws from, if any.
    pub rate: Option<RouteClass>,
    pub guard: Guard,
    pub body: Body,
    /// Exists only while `monitoring.chaos` is on.
    pub chaos_only: bool,
    /// The OpenAPI operation id.
    pub operation_id: &'static str,
    /// What the OpenAPI document says of it beyond what the row implies.
    pub doc: crate::openapi::Doc,
}

/// The label used for requests that matched no route.
pub const UNMATCHED: &str = "unmatched";

pub enum Matched<'r> {
    Found {
        route: &'static Route,
        /// The `{id}` or `{name}` segment, for routes that have one.
        param: Option<String>,
    },
    MethodNotAllowed {
        template: &'static str,
        /// The `Allow` header value: this path's methods.
        allow: &'r str,
    },
    NotFound,
}

/// The routes of one path template.
struct PathRoutes {
    template: &'static str,
    routes: Vec<&'static Route>,
    allow: String,
}

pub struct Router {
    paths: matchit::Router<usize>,
    templates: Vec<PathRoutes>,
}

impl Router {
    /// `chaos` keeps the chaos-only routes; without it those paths do not exist.
    pub fn new(
        table: impl IntoIterator<Item = &'static Route>,
        chaos: bool,
    ) -> Result<Self, matchit::InsertError> {
        let mut paths = matchit::Router::new();
        let mut templates: Vec<PathRoutes> = Vec::new();
        for route in table.into_iter().filter(|r| chaos || !r.chaos_only) {
            match templates.iter_mut().find(|p| p.template == route.template) {
                Some(existing) => existing.routes.push(route),
                None => {
                    paths.insert(route.template, templates.len())?;
                    templates.push(PathRoutes {
                        template: route.template,
                        routes: vec![route],
                        allow: String::new(),
                    });
                }
            }
        }
        for path in &mut templates {
            let mut methods: Vec<&str> = Vec::new();
            for route in &path.routes {
                methods.push(route.method.as_str());
                if route.method == Method::GET {
                    methods.push(Method::HEAD.as_str());
                }
            }
            path.allow = methods.join(", ");
        }
        Ok(Self { paths, templates })
    }

    pub fn route(&self, method: &Method, path: &str) -> Matched<'_> {
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        let Ok(found) = self.paths.at(path) else {
            return Matched::NotFound;
        };
        let Some(routes) = self.templates.get(*found.value) else {
            return Matched::NotFound;
        };
        match routes.routes.iter().find(|r| r.method == method) {
            Some(route) => Matched::Found {
                route,
                param: found.params.iter().next().map(|(_, v)| v.to_owned()),
            },
            None => Matched::MethodNotAllowed {
                template: routes.template,
                allow: &routes.allow,
            },
        }
    }

    /// Every (template, methods) the router serves, for checking documents against it.
    pub fn served(&self) -> impl Iterator<Item = (&'static str, Vec<&Method>)> + '_ {
        self.templates
            .iter()
            .map(|p| (p.template, p.routes.iter().map(|r| &r.method).collect()))
    }
}
